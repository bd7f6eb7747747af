//! kv_aware's session affinity (`--kv-aware-session-affinity-ttl-secs`, 0.1.17 §1.6):
//! a request that names a session goes where the session's first request went, without
//! asking any worker for its tokens, while the worker is routable and the session was
//! used within the TTL (an idle TTL: each request renews it).
//!
//! A session is named by the first non-empty of the headers `x-session-id`,
//! `session-id`, `x-claude-code-session-id`, then the body's `session_id` and
//! `session_params.session_id` (one namespace). `x-user-id`, `x-request-id` and the
//! body's `user` are not sessions here (0.1.17).
//!
//! Shards tell each other the sessions they bind (the inserts channel), and again every
//! quarter TTL while one is in use, so a session used only on one shard stays alive on
//! the others too.

use super::sessions::SessionTable;
use super::RouteInput;
use crate::state::PoolView;
use crate::worker::WorkerId;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

/// Headers that name a kv_aware session, in priority order (0.1.17).
const IDENTITY_HEADERS: [&[u8]; 3] = [b"x-session-id", b"session-id", b"x-claude-code-session-id"];

/// The session a request names, if any.
fn identity<'a>(input: &RouteInput<'a>) -> Option<&'a [u8]> {
    if let Some(header) = input.head.first_of(&IDENTITY_HEADERS) {
        return Some(header);
    }
    let body = input.json?;
    let field = |v: Option<&'a serde_json::Value>| {
        v.and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::as_bytes)
    };
    field(body.get("session_id"))
        .or_else(|| field(body.get("session_params").and_then(|p| p.get("session_id"))))
}

pub struct Affinity {
    table: SessionTable,
    /// A session bound or renewed here, for the other shards.
    pending: Option<(WorkerId, Arc<str>)>,
}

impl Affinity {
    pub fn new(ttl: Duration) -> Self {
        Affinity {
            table: SessionTable::new(ttl),
            pending: None,
        }
    }

    /// Whether the request's session is bound to a routable worker (no tokens needed).
    pub fn is_bound(&self, workers: &PoolView<'_>, input: &RouteInput<'_>) -> bool {
        let Some(id) = identity(input) else {
            return false;
        };
        self.table
            .peek(xxh3_64(id), Instant::now())
            .is_some_and(|s| workers.routable_get(s.worker).is_some())
    }

    /// The worker the request's session is bound to, renewing the binding.
    pub fn bound(
        &mut self,
        workers: &PoolView<'_>,
        input: &RouteInput<'_>,
        now: Instant,
    ) -> Option<WorkerId> {
        let id = identity(input)?;
        let retell = self.table.ttl() / 4;
        let s = self.table.fresh(xxh3_64(id), now, &mut |_| {})?;
        workers.routable_get(s.worker)?;
        s.used = now;
        if now.duration_since(s.told) >= retell {
            s.told = now;
            self.pending = Some((s.worker, Arc::from(String::from_utf8_lossy(id).as_ref())));
        }
        Some(s.worker)
    }

    /// Binds the request's session, if it names one, to the worker chosen for it.
    pub fn bind(&mut self, input: &RouteInput<'_>, worker: WorkerId, now: Instant) {
        let Some(id) = identity(input) else { return };
        self.table.record(xxh3_64(id), worker, now, &mut |_| {});
        self.pending = Some((worker, Arc::from(String::from_utf8_lossy(id).as_ref())));
    }

    /// Another shard bound or renewed `session`.
    pub fn remote(&mut self, worker: WorkerId, session: &str) {
        let now = Instant::now();
        self.table
            .record(xxh3_64(session.as_bytes()), worker, now, &mut |_| {});
    }

    pub fn take_pending(&mut self) -> Option<(WorkerId, Arc<str>)> {
        self.pending.take()
    }

    /// Sessions of workers that left go.
    pub fn retain_workers(&mut self, workers: &PoolView<'_>) {
        self.table
            .retain_workers(|w| workers.get(w).is_some(), &mut |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::request::RequestHead;
    use crate::codec::Status;
    use crate::state::test_workers;
    use crate::worker::WorkerRole;

    fn head(raw: &str) -> RequestHead {
        let mut h = RequestHead::default();
        let raw = format!("POST /v1/chat/completions HTTP/1.1\r\n{raw}\r\n");
        assert!(matches!(h.parse(raw.as_bytes()), Ok(Status::Complete(_))));
        h
    }

    fn named(headers: &str, body: serde_json::Value) -> Option<String> {
        let h = head(headers);
        let input = RouteInput {
            head: &h,
            json: Some(&body),
            tokens: None,
        };
        identity(&input).map(|i| String::from_utf8_lossy(i).into_owned())
    }

    #[test]
    fn sessions_are_named_by_0_1_17_headers_then_body_fields() {
        let none = serde_json::json!({});
        assert_eq!(
            named("x-session-id: a\r\n", none.clone()).as_deref(),
            Some("a")
        );
        assert_eq!(
            named("Session-Id: b\r\n", none.clone()).as_deref(),
            Some("b")
        );
        assert_eq!(
            named("x-claude-code-session-id: c\r\n", none.clone()).as_deref(),
            Some("c")
        );
        assert_eq!(
            named("session-id: b\r\nx-session-id: a\r\n", none.clone()).as_deref(),
            Some("a"),
            "x-session-id first"
        );
        let body = serde_json::json!({"session_id": "d", "session_params": {"session_id": "e"}});
        assert_eq!(named("", body).as_deref(), Some("d"));
        let body = serde_json::json!({"session_params": {"session_id": "e"}});
        assert_eq!(named("", body).as_deref(), Some("e"));
        let body = serde_json::json!({"user": "u"});
        assert_eq!(named("x-user-id: u\r\nx-request-id: r\r\n", body), None);
        assert_eq!(named("x-session-id: \r\n", none), None, "empty is none");
    }

    #[test]
    fn a_binding_holds_while_used_within_the_ttl_and_its_worker_is_routable() {
        let mut set = test_workers(2);
        let mut a = Affinity::new(Duration::from_secs(10));
        let h = head("x-session-id: s\r\n");
        let input = RouteInput {
            head: &h,
            json: None,
            tokens: None,
        };
        let t0 = Instant::now();
        assert_eq!(
            a.bound(&set.view(WorkerRole::Regular, &[]), &input, t0),
            None
        );
        a.bind(&input, 1, t0);
        assert_eq!(a.take_pending().map(|p| p.0), Some(1));
        // Renewed at 6 s, so still bound at 15 s; told again after a quarter TTL.
        let regular = set.view(WorkerRole::Regular, &[]);
        assert_eq!(
            a.bound(&regular, &input, t0 + Duration::from_secs(6)),
            Some(1)
        );
        assert!(a.take_pending().is_some(), "retold after 2.5 s");
        assert_eq!(
            a.bound(&regular, &input, t0 + Duration::from_secs(15)),
            Some(1)
        );
        assert_eq!(
            a.bound(&regular, &input, t0 + Duration::from_secs(26)),
            None
        );
        // A worker that is not routable loses its sessions' requests.
        a.bind(&input, 1, t0);
        set.set_health(1, false);
        assert_eq!(
            a.bound(&set.view(WorkerRole::Regular, &[]), &input, t0),
            None
        );
    }
}
