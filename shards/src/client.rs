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
    pub prefill_charge: Option<(crate::worker::WorkerId, crate::policy::Priced)>,
    /// CORS headers every answer to the current request carries (`server::cors`).
    pub cors: Vec<(&'static [u8], Vec<u8>)>,
    /// Between requests: the request's memory is among the shard's spare kits.
    pub parked: bool,
}

/// Spare kits a shard keeps: one per request in flight at a busy moment; past it,
/// a parked connection's memory goes back to the allocator.
pub const MAX_KITS: usize = 256;

/// Largest answer staging or body buffer kept in a spare kit: a bigger one (a long
/// prompt) is freed rather than pinned.
pub const MAX_KIT_BYTES: usize = 64 * 1024;

/// The memory of one request, reused by the shard's next request on any connection.
struct Kit {
    head: RequestHead,
    out: Vec<u8>,
    body: Vec<u8>,
    request_id: Vec<u8>,
}

thread_local! {
    /// This shard's spare kits (a shard is one thread: no lock).
    static KITS: std::cell::RefCell<Vec<Kit>> = const { std::cell::RefCell::new(Vec::new()) };
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
    /// Between requests, with nothing buffered: the request's memory goes to the
    /// shard's spare kits, so a connection waiting for its next request holds none.
    pub fn park(&mut self) {
        if !self.rbuf.is_empty() {
            return; // a pipelined request is already here
        }
        self.rbuf.release();
        if self.parked {
            return;
        }
        self.parked = true;
        self.cors = Vec::new();
        let kit = Kit {
            head: std::mem::take(&mut self.head),
            out: std::mem::take(&mut self.out),
            body: std::mem::take(&mut self.body),
            request_id: std::mem::take(&mut self.request_id),
        };
        if kit.out.capacity() <= MAX_KIT_BYTES && kit.body.capacity() <= MAX_KIT_BYTES {
            KITS.with(|k| {
                let mut k = k.borrow_mut();
                if k.len() < MAX_KITS {
                    k.push(kit);
                }
            });
        }
    }

    /// Bytes of a request arrived: takes a spare kit (or starts with empty ones).
    pub fn unpark(&mut self) {
        if !self.parked {
            return;
        }
        self.parked = false;
        if let Some(kit) = KITS.with(|k| k.borrow_mut().pop()) {
            self.head = kit.head;
            self.out = kit.out;
            self.body = kit.body;
            self.request_id = kit.request_id;
        }
    }

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

    /// An answer to HEAD staged in `out` loses its content (RFC 9110 §9.3.2: the same
    /// head as GET would get, without the content), so that the next answer on the
    /// connection is read from its start.
    pub fn drop_content_for_head(&mut self) {
        if self.head.is_head() {
            if let Some(end) = self.out.windows(4).position(|w| w == b"\r\n\r\n") {
                self.out.truncate(end + 4);
            }
        }
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
        self.drop_content_for_head();
        self.flush_out().await.is_ok() && keep
    }
}
