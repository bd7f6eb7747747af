//! The control core's HTTP client: one GET to a worker over a fresh HTTP/1.1
//! connection (hyper on the control core's tokio), for health probes and `/metrics`
//! scrapes. Names were resolved by the registry; this connects to an address.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{AUTHORIZATION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// What the router calls itself in the requests it makes.
const AGENT: &str = "vllm-router";

/// One GET request.
pub struct Get<'a> {
    pub addr: SocketAddr,
    /// `host:port` for the Host header.
    pub authority: &'a str,
    pub path: &'a str,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<&'a str>,
}

/// Sends the request; returns the status and, when `max_body` is given, the body (an
/// answer over `max_body` bytes is an error). Interim 1xx answers are skipped.
pub async fn get(req: &Get<'_>, max_body: Option<usize>) -> Result<(u16, Bytes), String> {
    call(req, hyper::Method::GET, max_body).await
}

/// The same request with another method and no body (`POST /reset_prefix_cache`).
pub async fn call(
    req: &Get<'_>,
    method: hyper::Method,
    max_body: Option<usize>,
) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(req.addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // The connection task ends with the exchange (its sender is dropped).
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let mut builder = Request::builder()
        .method(method)
        .uri(req.path)
        .header(HOST, req.authority)
        .header(USER_AGENT, AGENT);
    if let Some(key) = req.api_key {
        builder = builder.header(AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| closed_or(e.to_string()))?;
    let status = answer.status().as_u16();
    let Some(max) = max_body else {
        return Ok((status, Bytes::new()));
    };
    let body = Limited::new(answer.into_body(), max)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// hyper says "connection closed before message completed" where the probe used to
/// say the worker closed before answering; keep the shorter wording users know.
fn closed_or(e: String) -> String {
    if e.contains("connection closed before message completed") {
        "closed before answering".to_string()
    } else {
        e
    }
}
