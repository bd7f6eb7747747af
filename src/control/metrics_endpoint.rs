//! `GET /metrics` on `--prometheus-host:--prometheus-port`: the exposition text.

use super::metrics::ControlView;
use super::state::ControlState;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

/// Longest a client may take to send a request head: Prometheus sends one at once;
/// a stalled client must not hold a task forever.
const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until the runtime stops; each connection on its own task.
pub async fn serve_metrics(state: Rc<RefCell<ControlState>>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::task::spawn_local(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = answer(&state, &req);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `GET /metrics` gets the exposition text; anything else 404.
fn answer(state: &Rc<RefCell<ControlState>>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        if req.method() == Method::GET && req.uri().path() == "/metrics" {
            let s = state.borrow();
            let text = s.metrics.render(&ControlView {
                registry: &s.registry,
                policy: s.policy.name(),
                kv_stage: s.kv_stage,
                breakers: &s.breakers,
                discovery: [s.discovery_updates, s.discovery_added, s.discovery_removed],
                reloads: s.reloads,
                kv: &s.kv,
                sole_sender: s.sole.state(),
            });
            (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        } else {
            let text = "only /metrics is served here\n".to_string();
            (StatusCode::NOT_FOUND, "text/plain", text)
        };
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    answer
}
