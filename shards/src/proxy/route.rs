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

/// The metric label for a path: known routes by name, everything else as "other" so a
/// client cannot blow up label cardinality.
pub fn route_label(path: &[u8]) -> &'static str {
    match path {
        b"/v1/chat/completions" => "/v1/chat/completions",
        b"/v1/completions" => "/v1/completions",
        b"/v1/embeddings" => "/v1/embeddings",
        b"/v1/responses" => "/v1/responses",
        b"/v1/rerank" => "/v1/rerank",
        b"/rerank" => "/rerank",
        b"/generate" => "/generate",
        b"/v1/models" => "/v1/models",
        _ => "other",
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
        assert_eq!(route_label(b"/anything"), "other");
    }
}
