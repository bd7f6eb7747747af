//! A client connection as every part of the request path sees it: the socket, its
//! buffers, the parsed head and what the current request produced.

use crate::codec::request::RequestHead;
use crate::errors::write_error_body;
use crate::io::ReadBuf;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::time::Instant;

/// Everything a connection reuses from one request to the next.
pub struct Client {
    pub stream: TcpStream,
    pub rbuf: ReadBuf,
    pub head: RequestHead,
    /// Output staging: heads coalesced with the first body bytes.
    pub out: Vec<u8>,
    /// Buffered request body (routing mode 2).
    pub body: Vec<u8>,
    /// This request's id (see `proxy::request_id`), reused.
    pub request_id: Vec<u8>,
    /// What the current request produced, for metrics and the debug access log.
    pub outcome: Outcome,
    /// When the current request's head was complete (its clock for metrics and the
    /// request timeout: one clock read serves both).
    pub started: Instant,
    /// When the connection last became idle (accepted, or an answer ended): the
    /// keep-alive timeout counts from here.
    pub idle_since: Instant,
    /// kv_aware: the current request's prompt tokens, when a worker told them.
    pub tokens: Option<std::rc::Rc<[u32]>>,
    /// kv_aware: the worker last chosen for the request and the prompt tokens it must
    /// prefill, counted against it until its answer starts (`proxy::exchange`).
    pub prefill_charge: Option<(crate::worker::WorkerId, u32)>,
    /// CORS headers every answer to the current request carries (`server::cors`).
    pub cors: Vec<(&'static [u8], Vec<u8>)>,
}

/// The observable result of one request.
#[derive(Default)]
pub struct Outcome {
    pub status: u16,
    pub error: Option<&'static str>,
    /// When the first body byte (or a bodiless head) reached the client.
    pub first_byte: Option<Instant>,
}

impl Client {
    /// Writes and clears `out`. An error means the client is gone.
    pub async fn flush_out(&mut self) -> std::io::Result<()> {
        let r = self.stream.write_all(&self.out).await;
        self.out.clear();
        r
    }

    /// Writes an error answer. Returns false: after an error the connection closes
    /// unless `keep` says the request was fully read.
    pub async fn send_error(&mut self, status: u16, message: &str, keep: bool) -> bool {
        self.send_error_with(status, message, keep, &[]).await
    }

    /// [`Client::send_error`] with extra headers.
    pub async fn send_error_with(
        &mut self,
        status: u16,
        message: &str,
        keep: bool,
        headers: &[(&[u8], &[u8])],
    ) -> bool {
        let error = serde_json::json!({
            "message": message,
            "type": crate::errors::error_type(status),
            "code": status,
        });
        self.send_error_body(status, error, keep, headers).await
    }

    /// An error with OpenAI's string `code` and `param` (`model_not_found`, `model`).
    pub async fn send_error_coded(
        &mut self,
        status: u16,
        message: &str,
        code: &str,
        param: Option<&str>,
        keep: bool,
    ) -> bool {
        let error = serde_json::json!({
            "message": message,
            "type": crate::errors::error_type(status),
            "param": param,
            "code": code,
        });
        self.send_error_body(status, error, keep, &[]).await
    }

    async fn send_error_body(
        &mut self,
        status: u16,
        error: serde_json::Value,
        keep: bool,
        headers: &[(&[u8], &[u8])],
    ) -> bool {
        let keep = keep && self.head.keep_alive;
        self.outcome.status = status;
        self.outcome.error = Some(crate::errors::metric_error_type(status));
        self.outcome.first_byte.get_or_insert_with(Instant::now);
        self.out.clear(); // may hold a request staged for a worker
        let mut all: Vec<(&[u8], &[u8])> = headers.to_vec();
        all.extend(self.cors.iter().map(|(n, v)| (*n, v.as_slice())));
        write_error_body(
            &mut self.out,
            self.head.minor_version,
            status,
            error,
            !keep,
            &all,
        );
        self.flush_out().await.is_ok() && keep
    }
}
