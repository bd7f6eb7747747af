//! Sessions bound to workers with an idle TTL: sticky_least_loaded's sessions and
//! kv_aware's session affinity. A session idle longer than the TTL is not honoured and
//! is swept at most once a minute. The table is bounded ([`MAX_SESSIONS`]): a client
//! that sends a new id every time opens a session per request. Whoever keeps counts
//! per worker hears of every session released through `on_release`.

use crate::worker::WorkerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Expired sessions are swept at most this often (during a decision).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Sessions one shard remembers; past it the least recently used go first. A million
/// is about 64 MiB, and covers a session per request at 100 requests a second for
/// two hours.
pub const MAX_SESSIONS: usize = 1 << 20;

pub struct Session {
    pub worker: WorkerId,
    pub used: Instant,
    /// When the other shards were last told (kv_aware re-tells a live session).
    pub told: Instant,
}

pub struct SessionTable {
    sessions: HashMap<u64, Session>,
    ttl: Duration,
    swept: Instant,
}

impl SessionTable {
    pub fn new(ttl: Duration) -> Self {
        SessionTable {
            sessions: HashMap::new(),
            ttl,
            swept: Instant::now(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// The session, when it was used within the TTL, untouched.
    pub fn peek(&self, key: u64, now: Instant) -> Option<&Session> {
        self.sessions
            .get(&key)
            .filter(|s| now.duration_since(s.used) < self.ttl)
    }

    /// The session, when it was used within the TTL; sweeps when one is due.
    pub fn fresh(
        &mut self,
        key: u64,
        now: Instant,
        on_release: &mut impl FnMut(WorkerId),
    ) -> Option<&mut Session> {
        if now.duration_since(self.swept) >= SWEEP_EVERY {
            self.sweep(now, false, on_release);
        }
        let ttl = self.ttl;
        self.sessions
            .get_mut(&key)
            .filter(|s| now.duration_since(s.used) < ttl)
    }

    pub fn release(&mut self, key: u64, on_release: &mut impl FnMut(WorkerId)) -> bool {
        match self.sessions.remove(&key) {
            Some(s) => {
                on_release(s.worker);
                true
            }
            None => false,
        }
    }

    /// Binds `key` to `worker` (replacing what it was bound to).
    pub fn record(
        &mut self,
        key: u64,
        worker: WorkerId,
        now: Instant,
        on_release: &mut impl FnMut(WorkerId),
    ) {
        self.release(key, on_release);
        if self.sessions.len() >= MAX_SESSIONS {
            self.sweep(now, true, on_release);
        }
        let s = Session {
            worker,
            used: now,
            told: now,
        };
        self.sessions.insert(key, s);
    }

    /// Releases the sessions of workers `keep` rejects (they left the pool).
    pub fn retain_workers(
        &mut self,
        keep: impl Fn(WorkerId) -> bool,
        on_release: &mut impl FnMut(WorkerId),
    ) {
        self.sessions.retain(|_, s| {
            let kept = keep(s.worker);
            if !kept {
                on_release(s.worker);
            }
            kept
        });
    }

    /// Drops expired sessions; `full`: also the oldest tenth, to make room.
    fn sweep(&mut self, now: Instant, full: bool, on_release: &mut impl FnMut(WorkerId)) {
        self.swept = now;
        let mut cutoff = now.checked_sub(self.ttl);
        if full {
            let mut ages: Vec<Instant> = self.sessions.values().map(|s| s.used).collect();
            let tenth = ages.len() / 10;
            ages.select_nth_unstable(tenth);
            cutoff = cutoff.max(Some(ages[tenth]));
        }
        let Some(cutoff) = cutoff else { return };
        self.sessions.retain(|_, s| {
            let kept = s.used > cutoff;
            if !kept {
                on_release(s.worker);
            }
            kept
        });
    }
}
