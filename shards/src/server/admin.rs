//! The admin API on the main port. A shard owns no worker list of record, so it hands
//! the call to the control core (`Report::Admin`) and waits, without blocking, for the
//! answer to come back as a delta (`Delta::AdminReply`).

use crate::client::Client;
use crate::codec::framing::BodyFraming;
use crate::errors::write_answer;
use crate::messages::{AdminRequest, Report};
use crate::request_body::read_body;
use crate::shard::Shard;

/// Largest admin request body: a JSON object naming one worker is under 1 KiB; 64 KiB
/// leaves room for long URLs without letting a client park megabytes on a shard.
const MAX_ADMIN_BODY_BYTES: u64 = 64 * 1024;

/// The admin paths of the published router (those answered from the worker list, and
/// those that ask every worker), and `/router_info`.
pub fn is_admin_path(path: &[u8]) -> bool {
    matches!(
        path,
        b"/add_worker"
            | b"/remove_worker"
            | b"/list_workers"
            | b"/workers"
            | b"/router_info"
            | b"/get_loads"
            | b"/flush_cache"
    ) || path.starts_with(b"/workers/")
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
    let mut charge = shard.bodies.charge();
    let read = read_body(
        c,
        &mut body,
        MAX_ADMIN_BODY_BYTES,
        &mut deadline,
        &mut charge,
    );
    if let Err(e) = read.await {
        return e.answer(c, "admin request body too large").await;
    }
    // HEAD asks what GET would answer (0.1.17's GET routes answer it so), content dropped.
    let method = match c.head.method() {
        b"HEAD" => b"GET".as_slice(),
        m => m,
    };
    let request = AdminRequest {
        method: String::from_utf8_lossy(method).into_owned(),
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
    let reply = deadline.bound(shard.admin.wait(token)).await;
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
    c.drop_content_for_head();
    c.flush_out().await.is_ok() && c.head.keep_alive
}
