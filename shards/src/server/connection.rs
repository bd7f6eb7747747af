//! One client connection: read a head, hand the request to the pipeline, repeat while
//! the connection may be kept alive. Requests are handled one after another, so
//! pipelined requests are answered in order.

use super::{admin, auth, endpoints, session};
use crate::client::{Client, Outcome};
use crate::codec::limits::MAX_REQUEST_HEAD_BYTES;
use crate::codec::request::{HeadError, RequestHead};
use crate::codec::Status;
use crate::cors;
use crate::deadline::Deadline;
use crate::dormant::DORMANT_AFTER;
use crate::errors::write_error;
use crate::io::ReadBuf;
use crate::recycled::Recycled;
use crate::shard::Shard;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Instant;

enum HeadRead {
    Ready,
    /// Clean end: the client closed, went idle too long, or the shard is draining.
    Closed,
    Refused(HeadError),
    TimedOut,
    /// Idle for [`DORMANT_AFTER`]: the socket goes to the shard's dormant set.
    Dormant,
}

/// Serves one client connection, idle since `idle_since` (accepted, or woken from
/// dormancy), until it closes or goes dormant; `_pass` keeps the shard's drain
/// waiting for it.
pub async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    _pass: glommio::sync::Pass,
    idle_since: Instant,
) {
    let mut c = Client {
        stream,
        rbuf: ReadBuf::default(),
        head: RequestHead::default(),
        out: Vec::new(),
        body: Vec::new(),
        request_id: Vec::new(),
        outcome: Outcome::default(),
        started: idle_since,
        idle_since,
        cors: Vec::new(),
        tokens: None,
        prefill_charge: None,
        parked: true,
    };
    loop {
        match read_head(&shard, &mut c).await {
            HeadRead::Ready => {}
            HeadRead::Closed => break,
            HeadRead::Dormant => {
                let Client {
                    stream, idle_since, ..
                } = c;
                // SAFETY: the stream gave its descriptor up whole and polls nothing.
                let socket = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
                shard.dormant.keep(socket, idle_since);
                return;
            }
            HeadRead::TimedOut => {
                write_error(
                    &mut c.out,
                    1,
                    408,
                    "timed out reading the request head",
                    true,
                );
                let _ = c.flush_out().await;
                break;
            }
            HeadRead::Refused(e) => {
                // The rest of the stream cannot be trusted: answer and close.
                write_error(&mut c.out, 1, e.status(), e.message(), true);
                let _ = c.flush_out().await;
                break;
            }
        }
        // On the heap: answering a request is most of a connection's future (about
        // 3 KiB); a connection waiting for its next request then holds only this
        // loop's state (docs/benchmarks.md, idle connections).
        let keep = Recycled::new(answer(&shard, &mut c)).await;
        c.idle_since = record(&shard, &c);
        if !keep || shard.draining.get() {
            break;
        }
        c.park();
    }
    let _ = c.stream.close().await;
}

/// Answers one request whose head is in `c.head`: on the shard (health, metrics,
/// admin, CORS preflight, refusals) or through a worker. Returns whether the
/// connection may carry another request.
async fn answer(shard: &Rc<Shard>, c: &mut Client) -> bool {
    c.started = Instant::now();
    c.outcome = Outcome::default();
    c.tokens = None;
    c.prefill_charge = None;
    match &shard.config.cors {
        Some(cfg) => cors::answer_headers(cfg, &c.head, &mut c.cors),
        None => c.cors.clear(),
    }
    let preflight = shard.config.cors.is_some() && cors::is_preflight(&c.head);
    if preflight {
        preflight_answer(shard, c).await
    } else if let Some(status) = endpoints::local_answer(shard, c) {
        c.outcome.status = status;
        c.outcome.first_byte = Some(Instant::now());
        c.flush_out().await.is_ok() && !c.head.has_body() && c.head.keep_alive
    } else if let Some(why) = auth::refusal(
        &shard.config.access,
        &c.head,
        admin::is_admin_path(c.head.path()),
    ) {
        auth::refuse(c, why).await
    } else if admin::is_admin_path(c.head.path()) {
        admin::answer(shard, c).await
    } else if c.head.path() == b"/finish_session" {
        session::finish(shard, c).await
    } else if crate::proxy::is_wrong_method(c.head.method(), c.head.path()) {
        let keep = !c.head.has_body() && c.head.keep_alive;
        let msg = format!(
            "{} is not allowed on {}; use POST",
            String::from_utf8_lossy(c.head.method()),
            String::from_utf8_lossy(c.head.path())
        );
        c.send_error_with(405, &msg, keep, &[(b"allow", b"POST")])
            .await
    } else {
        crate::proxy::pipeline::handle(shard, c).await
    }
}

/// Answers a CORS preflight on the shard: 200, no body (as 0.1.17).
async fn preflight_answer(shard: &Shard, c: &mut Client) -> bool {
    let Some(cfg) = &shard.config.cors else {
        return false;
    };
    let headers = cors::preflight_headers(cfg, &c.head);
    let keep = c.head.keep_alive && !c.head.has_body();
    crate::codec::encode::status_line(&mut c.out, c.head.minor_version, 200, b"");
    for (name, value) in &headers {
        crate::codec::encode::header(&mut c.out, name, value);
    }
    crate::codec::encode::content_length(&mut c.out, 0);
    if !keep {
        crate::codec::encode::header(&mut c.out, b"connection", b"close");
    }
    crate::codec::encode::end_head(&mut c.out);
    c.outcome.status = 200;
    c.outcome.first_byte = Some(Instant::now());
    c.flush_out().await.is_ok() && keep
}

/// Adds the finished request to the shard's metrics; one debug line per request.
/// Returns the time it ended.
fn record(shard: &Shard, c: &Client) -> Instant {
    let started = c.started;
    let now = Instant::now();
    let duration = now.duration_since(started);
    let route = crate::metrics::route_index(c.head.path());
    shard
        .metrics
        .borrow_mut()
        .record(&crate::metrics::RequestRecord {
            route,
            method: c.head.method(),
            status: c.outcome.status,
            error: c.outcome.error,
            duration,
            ttfb: c.outcome.first_byte.map(|t| t.duration_since(started)),
        });
    crate::debug!(
        "{} {} -> {} in {:?} id={}",
        String::from_utf8_lossy(c.head.method()),
        String::from_utf8_lossy(c.head.target()),
        c.outcome.status,
        duration,
        String::from_utf8_lossy(&c.request_id)
    );
    now
}

/// Reads until a whole head is buffered and parsed into `c.head`. The idle wait for
/// the first byte is bounded by the keep-alive timeout (and ends when the shard
/// drains), or, when that is longer, by [`DORMANT_AFTER`]; the rest of the head by
/// the header-read timeout (slowloris).
async fn read_head(shard: &Shard, c: &mut Client) -> HeadRead {
    let cfg = &shard.config;
    let goes_dormant = DORMANT_AFTER < cfg.keepalive_timeout;
    let mut deadline: Option<Deadline<'_>> = None;
    loop {
        if !c.rbuf.is_empty() {
            c.unpark();
            match c.head.parse(c.rbuf.filled()) {
                Ok(Status::Complete(n)) => {
                    c.rbuf.consume(n);
                    return HeadRead::Ready;
                }
                Ok(Status::Partial) => {}
                Err(e) => return HeadRead::Refused(e),
            }
        } else if shard.draining.get() {
            return HeadRead::Closed;
        }
        let idle = c.rbuf.is_empty();
        let timer = deadline.get_or_insert_with(|| {
            if idle {
                let wait = cfg.keepalive_timeout.min(DORMANT_AFTER);
                shard.deadlines.start_at(c.idle_since, wait, true)
            } else {
                shard.deadlines.start(cfg.header_read_timeout, false)
            }
        });
        let read = c.rbuf.read_from(&mut c.stream, MAX_REQUEST_HEAD_BYTES + 1);
        match timer.bound(read).await {
            Some(Ok(0)) | Some(Err(_)) => return HeadRead::Closed,
            Some(Ok(_)) => {}
            // An idle wait that ran out is a clean end (or dormancy); a head that
            // stalled is not.
            None if idle && goes_dormant && !shard.draining.get() => return HeadRead::Dormant,
            None if idle => return HeadRead::Closed,
            None => return HeadRead::TimedOut,
        }
        if idle {
            // First bytes of a new head: the slowloris clock starts now.
            deadline = None;
        }
    }
}
