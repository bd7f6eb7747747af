//! The admin API on the main port. A shard owns no worker list of record, so it hands
//! the call to the control core (`Report::Admin`) and waits, without blocking, for the
//! answer to come back as a delta (`Delta::AdminReply`).

use super::Client;
use crate::codec::body::BodyDecoder;
use crate::codec::framing::BodyFraming;
use crate::errors::write_answer;
use crate::messages::{AdminReply, AdminRequest, Report};
use crate::shard::Shard;
use futures_lite::future::or;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Largest admin request body (a JSON object naming one worker).
const MAX_ADMIN_BODY_BYTES: u64 = 64 * 1024;

/// The admin paths of the published router.
pub fn is_admin_path(path: &[u8]) -> bool {
    matches!(
        path,
        b"/add_worker" | b"/remove_worker" | b"/list_workers" | b"/workers"
    ) || path.starts_with(b"/workers/")
}

/// One waiting call: its answer once it came, and the task to wake.
type AdminSlot = (Option<AdminReply>, Option<Waker>);

/// Admin calls of one shard waiting for their answers.
#[derive(Default)]
pub struct AdminWaiters {
    next: Cell<u64>,
    slots: RefCell<HashMap<u64, AdminSlot>>,
}

impl AdminWaiters {
    fn register(&self) -> u64 {
        let token = self.next.get() + 1;
        self.next.set(token);
        self.slots.borrow_mut().insert(token, (None, None));
        token
    }

    /// Called by the delta loop when the answer arrives.
    pub fn fulfil(&self, token: u64, reply: AdminReply) {
        let waker = match self.slots.borrow_mut().get_mut(&token) {
            Some(slot) => {
                slot.0 = Some(reply);
                slot.1.take()
            }
            None => None, // the caller gave up
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    async fn wait(&self, token: u64) -> AdminReply {
        poll_fn(|cx| {
            let mut slots = self.slots.borrow_mut();
            let slot = slots.get_mut(&token).expect("registered");
            match slot.0.take() {
                Some(reply) => {
                    slots.remove(&token);
                    Poll::Ready(reply)
                }
                None => {
                    slot.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn forget(&self, token: u64) {
        self.slots.borrow_mut().remove(&token);
    }
}

/// Reads the (small) body, asks the control core, writes its answer.
pub async fn answer(shard: &Shard, c: &mut Client) -> bool {
    if let BodyFraming::Length(n) = c.head.framing {
        if n > MAX_ADMIN_BODY_BYTES {
            return c
                .send_error(413, "admin request body too large", false)
                .await;
        }
    }
    let mut deadline = shard.deadlines.start(shard.config.admin_timeout, false);
    let mut body = Vec::new();
    let mut decoder = BodyDecoder::new(c.head.framing);
    loop {
        let progress = match decoder.feed(c.rbuf.filled(), |d| body.extend_from_slice(d)) {
            Ok(p) => p,
            Err(e) => return c.send_error(400, e.0, false).await,
        };
        c.rbuf.consume(progress.consumed);
        if progress.done || decoder.is_done() {
            break;
        }
        if body.len() as u64 > MAX_ADMIN_BODY_BYTES {
            return c
                .send_error(413, "admin request body too large", false)
                .await;
        }
        let read = async { Some(c.rbuf.read_from(&mut c.stream, 64 * 1024).await) };
        let expired = async {
            (&mut deadline).await;
            None
        };
        match or(read, expired).await {
            Some(Ok(n)) if n > 0 => {}
            Some(_) => return false,
            None => {
                return c
                    .send_error(408, "timed out reading the request body", false)
                    .await
            }
        }
    }
    let request = AdminRequest {
        method: String::from_utf8_lossy(c.head.method()).into_owned(),
        path: String::from_utf8_lossy(c.head.path()).into_owned(),
        query: String::from_utf8_lossy(c.head.query().unwrap_or_default()).into_owned(),
        body,
    };
    let token = shard.admin.register();
    let sent = shard.reports.send(Report::Admin {
        shard: shard.index,
        token,
        request,
    });
    if sent.is_err() {
        shard.admin.forget(token);
        return c
            .send_error(503, "the control core is not running", true)
            .await;
    }
    let reply = or(async { Some(shard.admin.wait(token).await) }, async {
        (&mut deadline).await;
        None
    })
    .await;
    let Some(reply) = reply else {
        shard.admin.forget(token);
        return c
            .send_error(504, "the control core did not answer in time", true)
            .await;
    };
    c.outcome.status = reply.status;
    c.out.clear();
    let minor = c.head.minor_version;
    let body = reply.body.as_bytes();
    write_answer(
        &mut c.out,
        minor,
        reply.status,
        reply.content_type,
        body,
        !c.head.keep_alive,
    );
    c.flush_out().await.is_ok() && c.head.keep_alive
}
