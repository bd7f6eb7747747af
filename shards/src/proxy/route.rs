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
}
