//! Classifying a request path into the kinds of endpoint the router knows.

/// The OpenAI/vLLM generation endpoints of the published router, routed by the policy
/// with the same path upstream.
pub const GENERATION_PATHS: &[&[u8]] = &[
    b"/v1/chat/completions",
    b"/v1/completions",
    b"/v1/embeddings",
    b"/v1/responses",
    b"/v1/rerank",
    b"/rerank",
    b"/generate",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A generation endpoint: the body is buffered (mode 2), so that policies can read
    /// it and a failed attempt can be replayed.
    Generation,
    /// Anything else: forwarded transparently with the body streamed (mode 1).
    Passthrough,
}

pub fn classify(method: &[u8], path: &[u8]) -> RouteKind {
    if method == b"POST" && GENERATION_PATHS.contains(&path) {
        RouteKind::Generation
    } else {
        RouteKind::Passthrough
    }
}

/// A generation path asked with another method than POST. 0.1.17 answers 405 for
/// its POST routes (`../shared/REFERENCE-0.1.17.md` §8) rather than forwarding them:
/// a worker would only say the same, after a round trip and a policy decision.
pub fn is_wrong_method(method: &[u8], path: &[u8]) -> bool {
    method != b"POST" && GENERATION_PATHS.contains(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_needs_post() {
        assert_eq!(
            classify(b"POST", b"/v1/chat/completions"),
            RouteKind::Generation
        );
        assert_eq!(
            classify(b"GET", b"/v1/chat/completions"),
            RouteKind::Passthrough
        );
        assert_eq!(
            classify(b"POST", b"/v1/chat/completions/x"),
            RouteKind::Passthrough
        );
    }

    #[test]
    fn only_post_is_right_on_a_generation_path() {
        assert!(is_wrong_method(b"GET", b"/v1/completions"));
        assert!(is_wrong_method(b"DELETE", b"/generate"));
        assert!(!is_wrong_method(b"POST", b"/v1/completions"));
        // Other paths are forwarded whatever their method.
        assert!(!is_wrong_method(b"GET", b"/v1/responses/resp_1"));
        assert!(!is_wrong_method(b"GET", b"/version"));
    }
}
