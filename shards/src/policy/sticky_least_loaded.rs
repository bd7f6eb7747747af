//! sticky_least_loaded (0.1.17): a session stays on its worker; a new session goes to
//! the worker with the fewest active sessions (ties: the highest rendezvous weight of
//! the session on the worker's URL, the same on every shard and replica).
//!
//! - The session is the value of the first non-empty header among `x-session-id`,
//!   `x-user-id`, `x-tenant-id`, `x-correlation-id`, `x-request-id`, `x-trace-id`
//!   (one namespace: `x-user-id: b` finds the session `x-session-id: b` made).
//! - A session idle longer than the TTL (7200 s, or `VLLM_ROUTER_SLL_SESSION_EXPIRATION_IN_S`)
//!   is not honoured and is swept at most once a minute; one whose worker left the
//!   routable set moves (its count moves with it). `POST /finish_session` ends one.
//! - A request without a session goes to the worker with the fewest sessions, ties by
//!   the rendezvous weight of its text; nothing is recorded.
//!
//! Shards share the sessions they open (the inserts channel cache_aware uses) and the
//! ones finished, so every shard counts the same sessions, as of 2 ms ago: two shards
//! opening one session inside that window can choose two workers (then the later
//! report wins on every shard). The table is bounded ([`super::sessions`]): a client
//! that sends a new `x-request-id` every time opens a session per request.

use super::placement::Rendezvous;
use super::sessions::SessionTable;
use super::text::{request_text, BodyFields};
use super::{Policy, PolicyKind, RouteInput, SESSION_HEADERS};
use crate::state::{PoolView, Worker};
use crate::worker::WorkerId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

/// Idle time after which a session is forgotten, as 0.1.17's default.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(7200);

/// Active sessions per worker id, kept as sessions are bound and released.
#[derive(Default)]
struct Counts(HashMap<WorkerId, u32>);

impl Counts {
    fn get(&self, w: WorkerId) -> u32 {
        self.0.get(&w).copied().unwrap_or(0)
    }

    fn released(&mut self) -> impl FnMut(WorkerId) + '_ {
        |w| {
            if let Some(n) = self.0.get_mut(&w) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

pub struct StickyLeastLoaded {
    sessions: SessionTable,
    active: Counts,
    placement: Rendezvous,
    text: String,
    /// A session this shard just opened, for the others.
    pending: Option<(WorkerId, Arc<str>)>,
}

impl StickyLeastLoaded {
    pub fn new(ttl: Duration) -> Self {
        StickyLeastLoaded {
            sessions: SessionTable::new(ttl),
            active: Counts::default(),
            placement: Rendezvous::default(),
            text: String::new(),
            pending: None,
        }
    }

    fn record(&mut self, key: u64, worker: WorkerId, now: Instant) {
        self.sessions
            .record(key, worker, now, &mut self.active.released());
        *self.active.0.entry(worker).or_default() += 1;
    }

    /// The routable worker with the fewest sessions, ties by rendezvous weight.
    fn least_loaded<'a>(&self, workers: &PoolView<'a>, key: u64) -> Option<&'a Worker> {
        workers.routable().min_by_key(|w| {
            (
                self.active.get(w.spec.id),
                std::cmp::Reverse(self.placement.score(key, w.spec.id)),
            )
        })
    }
}

impl Policy for StickyLeastLoaded {
    fn kind(&self) -> PolicyKind {
        PolicyKind::StickyLeastLoaded
    }

    fn needs_body(&self) -> bool {
        true // a request without a session is placed by its text
    }

    fn on_workers_changed(&mut self, workers: &PoolView<'_>) {
        self.placement.on_workers_changed(workers);
        self.sessions
            .retain_workers(|w| workers.get(w).is_some(), &mut self.active.released());
    }

    fn pick(&mut self, workers: &PoolView<'_>, input: &RouteInput<'_>) -> Option<WorkerId> {
        let now = Instant::now();
        let Some(session) = input.head.first_of(&SESSION_HEADERS) else {
            self.text.clear();
            if let Some(body) = input.json {
                request_text(&BodyFields::of(body), &mut self.text);
            }
            let key = xxh3_64(self.text.as_bytes());
            return self.least_loaded(workers, key).map(|w| w.spec.id);
        };
        let key = xxh3_64(session);
        let fresh = self.sessions.fresh(key, now, &mut self.active.released());
        if let Some(s) = fresh.filter(|s| workers.routable_get(s.worker).is_some()) {
            s.used = now;
            return Some(s.worker);
        }
        self.sessions.release(key, &mut self.active.released());
        let worker = self.least_loaded(workers, key)?.spec.id;
        self.record(key, worker, now);
        let name = String::from_utf8_lossy(session);
        crate::debug!(
            "SLL: new session '{name}' -> worker #{worker} (active sessions on it: {})",
            self.active.get(worker)
        );
        self.pending = Some((worker, Arc::from(name.as_ref())));
        Some(worker)
    }

    fn take_insert(&mut self) -> Option<(WorkerId, Arc<str>)> {
        self.pending.take()
    }

    fn remote_insert(&mut self, worker: WorkerId, session: &str, at: Instant) {
        self.record(xxh3_64(session.as_bytes()), worker, at);
    }

    fn finish_session(&mut self, session: &str) -> bool {
        let key = xxh3_64(session.as_bytes());
        self.sessions.release(key, &mut self.active.released())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::request::RequestHead;
    use crate::codec::Status;
    use crate::state::WorkerSet;
    use crate::worker::WorkerRole;

    fn head(session: Option<&str>) -> RequestHead {
        let raw = match session {
            Some(s) => format!("POST /v1/completions HTTP/1.1\r\nx-session-id: {s}\r\n\r\n"),
            None => "POST /v1/completions HTTP/1.1\r\n\r\n".to_string(),
        };
        let mut h = RequestHead::default();
        assert!(matches!(h.parse(raw.as_bytes()), Ok(Status::Complete(_))));
        h
    }

    fn pick(p: &mut StickyLeastLoaded, set: &WorkerSet, session: Option<&str>) -> WorkerId {
        let h = head(session);
        let body = serde_json::json!({"prompt": "same text"});
        let input = RouteInput {
            head: &h,
            json: Some(&body),
            tokens: None,
        };
        p.pick(&set.view(WorkerRole::Regular, &[]), &input).unwrap()
    }

    #[test]
    fn sessions_spread_by_count_and_stay() {
        let set = crate::state::test_workers(3);
        let mut p = StickyLeastLoaded::new(DEFAULT_SESSION_TTL);
        p.on_workers_changed(&set.view(WorkerRole::Regular, &[]));
        let homes: Vec<WorkerId> = (0..6)
            .map(|i| pick(&mut p, &set, Some(&format!("s{i}"))))
            .collect();
        for w in 0..3 {
            assert_eq!(homes.iter().filter(|&&h| h == w).count(), 2, "{homes:?}");
        }
        for (i, home) in homes.iter().enumerate() {
            assert_eq!(pick(&mut p, &set, Some(&format!("s{i}"))), *home);
        }
        // Finishing a session frees its place: the next new one goes there.
        assert!(p.finish_session("s0"));
        assert!(!p.finish_session("s0"));
        assert_eq!(pick(&mut p, &set, Some("new")), homes[0]);
        // No session: the same text goes to the same worker, and nothing is kept.
        let a = pick(&mut p, &set, None);
        assert_eq!(pick(&mut p, &set, None), a);
        assert_eq!(p.sessions.len(), 6);
    }

    #[test]
    fn an_expired_session_moves_and_another_shard_learns_a_session() {
        let set = crate::state::test_workers(2);
        let mut p = StickyLeastLoaded::new(Duration::from_millis(0));
        p.on_workers_changed(&set.view(WorkerRole::Regular, &[]));
        let first = pick(&mut p, &set, Some("a"));
        let (worker, name) = p.take_insert().unwrap();
        assert_eq!((worker, &*name), (first, "a"));
        // TTL 0: expired at once, released and placed again (counts stay right).
        pick(&mut p, &set, Some("a"));
        assert_eq!(p.active.0.values().sum::<u32>(), 1);
        let mut other = StickyLeastLoaded::new(DEFAULT_SESSION_TTL);
        other.on_workers_changed(&set.view(WorkerRole::Regular, &[]));
        other.remote_insert(1, "b", Instant::now());
        assert_eq!(pick(&mut other, &set, Some("b")), 1);
    }
}
