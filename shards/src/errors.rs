//! Answers the router writes itself, shaped like OpenAI's errors so SDKs surface them:
//! `{"error": {"message": ..., "type": ..., "code": <status>}}`.

use crate::codec::encode;

/// The `type` field for a status, following OpenAI's and vLLM's vocabulary.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 404 | 405 | 413 | 414 | 431 => "invalid_request_error",
        401 => "authentication_error",
        408 | 504 => "timeout_error",
        429 => "rate_limit_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        _ => "internal_error",
    }
}

/// The `error_type` label of `request_errors_total` for an answer the router made.
pub fn metric_error_type(status: u16) -> &'static str {
    match status {
        400 | 414 | 431 => "bad_request",
        401 => "unauthorized",
        404 => "model_not_found",
        408 => "request_timeout",
        413 => "payload_too_large",
        429 => "queue_full",
        502 => "upstream_error",
        503 => "no_worker",
        504 => "upstream_timeout",
        _ => "internal",
    }
}

/// Writes a whole error response into `out`. `close` adds `Connection: close`.
pub fn write_error(out: &mut Vec<u8>, minor: u8, status: u16, message: &str, close: bool) {
    write_error_with(out, minor, status, message, close, &[]);
}

/// [`write_error`] with extra headers (`WWW-Authenticate` on a 401, say).
pub fn write_error_with(
    out: &mut Vec<u8>,
    minor: u8,
    status: u16,
    message: &str,
    close: bool,
    headers: &[(&[u8], &[u8])],
) {
    let error = serde_json::json!({
        "message": message,
        "type": error_type(status),
        "code": status,
    });
    write_error_body(out, minor, status, error, close, headers);
}

/// Writes `{"error": error}` as a whole answer.
pub fn write_error_body(
    out: &mut Vec<u8>,
    minor: u8,
    status: u16,
    error: serde_json::Value,
    close: bool,
    headers: &[(&[u8], &[u8])],
) {
    let body = serde_json::json!({ "error": error }).to_string();
    encode::status_line(out, minor, status, b"");
    encode::header(out, b"content-type", b"application/json");
    for (name, value) in headers {
        encode::header(out, name, value);
    }
    encode::content_length(out, body.len() as u64);
    if close {
        encode::header(out, b"connection", b"close");
    }
    encode::end_head(out);
    out.extend_from_slice(body.as_bytes());
}

/// An SSE error event as vLLM ends a failed stream: `data: {"error": ...}` then
/// `data: [DONE]`.
pub fn sse_error_event(status: u16, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "error": {
            "object": "error",
            "message": message,
            "type": error_type(status),
            "code": status,
        }
    });
    format!("data: {body}\n\ndata: [DONE]\n\n").into_bytes()
}

/// Writes a small answer produced by the router (health, admin).
pub fn write_answer(
    out: &mut Vec<u8>,
    minor: u8,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) {
    encode::status_line(out, minor, status, b"");
    encode::header(out, b"content-type", content_type.as_bytes());
    encode::content_length(out, body.len() as u64);
    if close {
        encode::header(out, b"connection", b"close");
    }
    encode::end_head(out);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let mut out = Vec::new();
        write_error(&mut out, 1, 503, "no worker available", true);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("connection: close"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], 503);
        assert_eq!(v["error"]["type"], "service_unavailable");
        assert_eq!(v["error"]["message"], "no worker available");
    }
}
