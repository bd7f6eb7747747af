//! One shard's state, shared by its tasks, and how deltas and reports change it.

use crate::admin_waiters::AdminWaiters;
use crate::admission::Admission;
use crate::config::ShardConfig;
use crate::deadline::Deadlines;
use crate::messages::{Delta, Report, RoutedText};
use crate::metrics::ShardMetrics;
use crate::policy::{Policy, Random};
use crate::pool::Pool;
use crate::state::WorkerSet;
use crate::worker::{WorkerId, WorkerInFlight, WorkerRole};
use crossbeam_channel::Sender;
use glommio::sync::Gate;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

/// How long a shard gathers cache_aware inserts before telling the other shards: the
/// next turn of a conversation may arrive on another shard 10-20 ms later, and must
/// find the turn before it in that shard's tree. One batch per 2 ms bounds the
/// channel messages and doorbells at 500 a second per shard under any load.
pub const INSERT_FLUSH_DELAY: Duration = Duration::from_millis(2);

/// A shard's state, shared by its tasks through `Rc` (single thread, no locks).
/// `RefCell` borrows are never held across an `.await`.
pub struct Shard {
    pub index: usize,
    pub config: Arc<ShardConfig>,
    pub workers: RefCell<WorkerSet>,
    /// One policy instance per pool (`WorkerRole` as index).
    pub policies: [RefCell<Box<dyn Policy>>; 3],
    pub pool: RefCell<Pool>,
    pub reports: Sender<Report>,
    pub draining: Cell<bool>,
    /// Every timeout of the shard's connections and requests (see `deadline`).
    pub deadlines: Deadlines,
    /// Every client connection with a task holds a pass; draining waits for the gate
    /// to empty.
    pub connections: Gate,
    /// Client connections idle long enough to have left their tasks (`dormant`).
    pub dormant: crate::dormant::Dormant,
    pub metrics: RefCell<ShardMetrics>,
    /// Per-shard randomness (request ids), no syscalls.
    pub rng: RefCell<Random>,
    /// Admin calls waiting for the control core's answer.
    pub admin: AdminWaiters,
    /// The last `Report::Loads` (to report only changes).
    pub last_loads: RefCell<LoadsReported>,
    /// cache_aware inserts not yet reported: sent as one batch [`INSERT_FLUSH_DELAY`]
    /// after the first, so a request never costs a channel wake-up or a doorbell on
    /// the other shards of its own.
    pub pending_inserts: RefCell<Vec<RoutedText>>,
    /// kv_aware's provisional copies for the other shards, sent with the inserts.
    pub pending_provisional: RefCell<Vec<crate::kv_blocks::ProvisionalBlocks>>,
    /// Rung when `pending_inserts` or `pending_provisional` stops being empty: the
    /// flusher wakes.
    pub insert_bell: glommio::channels::local_channel::LocalSender<()>,
    pub admission: Admission,
    /// `--enable-igw`: the regular pool's policy per model.
    pub model_pools: RefCell<crate::model_pools::ModelPools>,
    /// A prefill worker without Mooncake bootstrap info was logged (once per shard).
    pub warned_mooncake: Cell<bool>,
    /// `--rate-limit-tokens-per-second`, this shard's share.
    pub rate: Option<crate::rate_limit::TokenBucket>,
    /// Request bodies buffered on this shard, together.
    pub bodies: crate::body_budget::BodyBudget,
    /// kv_aware: prompt tokens of recent requests (`proxy::tokenize`).
    pub tokens: RefCell<crate::token_cache::TokenCache>,
    /// `--tokenizer-path`: this shard's own copy of the model's tokenizer.
    pub chat_tokenizer: Option<RefCell<crate::chat_tokens::ShardTokenizer>>,
    /// What the start-up wait is waiting for, while it lasts (`Delta::StartupWait`).
    pub starting: RefCell<Option<Arc<str>>>,
}

/// What the last `Report::Loads` said: in flight, and decisions so far, per worker.
pub type LoadsReported = (Vec<WorkerInFlight>, Vec<(WorkerId, u64)>);

impl Shard {
    /// Applies one delta from the control core: every kind is dispatched here.
    pub fn apply(&self, delta: &Delta) {
        match delta {
            Delta::AdminReply { token, reply } => self.admin.fulfil(*token, reply.clone()),
            Delta::CacheInserts(batch) => {
                self.metrics.borrow_mut().shared_inserts += batch.len() as u64;
                for r in batch.iter() {
                    self.for_policies_of(r.worker, |p| p.remote_insert(r.worker, &r.text, r.at));
                }
            }
            Delta::KvProvisional(batch) => {
                self.metrics.borrow_mut().shared_provisional += batch.len() as u64;
                for (worker, names) in batch.iter() {
                    self.for_policies_of(*worker, |p| p.remote_provisional(*worker, names));
                }
            }
            Delta::SessionFinished(session) => {
                self.finish_session(session);
            }
            Delta::CacheEvict { max } => {
                for p in &self.policies {
                    p.borrow_mut().evict(*max);
                }
            }
            Delta::Loads(loads) => self.workers.borrow_mut().set_remote_loads(loads),
            Delta::SoleSender(sole) => {
                for p in &self.policies {
                    p.borrow_mut().set_sole_sender(*sole);
                }
                self.model_pools.borrow_mut().set_sole_sender(*sole);
            }
            Delta::Health { id, healthy } => self.workers.borrow_mut().set_health(*id, *healthy),
            Delta::Breaker {
                id,
                state,
                failures,
            } => self
                .workers
                .borrow_mut()
                .set_breaker(*id, *state, *failures),
            Delta::Upsert(spec) => {
                self.workers.borrow_mut().upsert(spec);
                self.workers_changed();
            }
            Delta::Remove(id) => {
                self.pool.borrow_mut().forget_worker(*id);
                self.workers.borrow_mut().remove(*id);
                for p in &self.policies {
                    p.borrow_mut().forget_worker(*id);
                }
                self.model_pools.borrow_mut().forget_worker(*id);
                self.workers_changed();
            }
            Delta::KvBlocks(delta) => {
                let workers = self.workers.borrow();
                match workers.get(delta.worker).map(|w| w.spec.role) {
                    // `--enable-igw`: the regular pool routes by each model's policy.
                    Some(WorkerRole::Regular) if self.config.igw => {
                        self.model_pools.borrow_mut().kv_blocks(&workers, delta)
                    }
                    Some(role) => self.policy(role).borrow_mut().kv_blocks(delta),
                    None => {}
                }
            }
            Delta::StartupWait(why) => {
                self.starting.replace(why.clone());
                if why.is_none() {
                    let _ = self
                        .reports
                        .send(Report::StartupWaitOver { shard: self.index });
                }
            }
            Delta::Drain => {
                self.draining.set(true);
                self.deadlines.drain(); // wakes connections idling between requests
                self.dormant.close_all();
            }
        }
    }

    /// Ends a session in every pool's policy. Whether one knew it.
    pub fn finish_session(&self, session: &str) -> bool {
        let mut known = false;
        for p in &self.policies {
            known |= p.borrow_mut().finish_session(session);
        }
        known | self.model_pools.borrow_mut().finish_session(session)
    }

    /// Workers came or went: every pool's policy rebuilds what it keys by worker.
    fn workers_changed(&self) {
        let workers = self.workers.borrow();
        if self.config.igw {
            let kind = (self.config.policy, &self.config.policy_options);
            (self.model_pools.borrow_mut()).on_workers_changed(&workers, kind, self.index);
        }
        for role in WorkerRole::ALL {
            self.policy(role)
                .borrow_mut()
                .on_workers_changed(&workers.view(role, &[]));
        }
    }
}

impl Shard {
    pub fn policy(&self, role: WorkerRole) -> &RefCell<Box<dyn Policy>> {
        &self.policies[role as usize]
    }

    /// Runs `f` on every policy that routes to `worker`: its pool's, and with
    /// `--enable-igw` each of its models'. How another shard's decision is learnt.
    fn for_policies_of(&self, worker: WorkerId, mut f: impl FnMut(&mut dyn Policy)) {
        let workers = self.workers.borrow();
        if let Some(w) = workers.get(worker) {
            f(self.policy(w.spec.role).borrow_mut().as_mut());
        }
        if self.config.igw {
            self.model_pools
                .borrow_mut()
                .for_worker(&workers, worker, f);
        }
    }

    /// The pool non-P/D requests use: the regular one, or the decode pool in P/D mode
    /// (decode workers are whole vLLM servers: `/v1/models`, transparent paths).
    pub fn main_role(&self) -> WorkerRole {
        if self.config.pd.is_some() {
            WorkerRole::Decode
        } else {
            WorkerRole::Regular
        }
    }

    /// Can the shard serve: a routable worker in the main pool, and in P/D mode a
    /// prefill worker too.
    pub fn ready(&self) -> bool {
        let workers = self.workers.borrow();
        workers.routable_in(self.main_role()) > 0
            && (self.config.pd.is_none() || workers.routable_in(WorkerRole::Prefill) > 0)
    }

    /// The URL users know a worker by, for messages (`#id` once it was removed).
    pub fn worker_url(&self, worker: WorkerId) -> String {
        self.workers
            .borrow()
            .get(worker)
            .map_or_else(|| format!("#{worker}"), |w| w.spec.url.clone())
    }

    /// Counts an attempt's outcome for the worker's breaker. A shard that sees the
    /// threshold crossed stops routing to the worker at once; the control core hears
    /// of every outcome that may change the breaker of record.
    pub fn record_outcome(&self, worker: WorkerId, success: bool) {
        let mut workers = self.workers.borrow_mut();
        let Some(w) = workers.get_mut(worker) else {
            return;
        };
        if success {
            w.outcomes.0 += 1;
        } else {
            w.outcomes.1 += 1;
        }
        let cfg = &self.config.breaker;
        if !cfg.enabled {
            return;
        }
        let admitted = w.breaker.admits();
        let report = w.breaker.record(success, cfg.failure_threshold);
        if w.breaker.admits() != admitted {
            workers.refresh_routable();
        }
        if report {
            let _ = self.reports.send(Report::Outcome {
                shard: self.index,
                id: worker,
                success,
            });
        }
    }

    /// Queues a cache_aware insert for the other shards.
    pub fn queue_insert(&self, (worker, text): (WorkerId, std::sync::Arc<str>)) {
        let at = std::time::Instant::now();
        self.queue_shared(&self.pending_inserts, RoutedText { worker, text, at });
    }

    /// Queues kv_aware's provisional copies for the other shards.
    pub fn queue_provisional(&self, noted: crate::kv_blocks::ProvisionalBlocks) {
        self.queue_shared(&self.pending_provisional, noted);
    }

    /// Adds to a batch [`Shard::send_shared`] reports, waking the flusher when the
    /// batch was empty.
    fn queue_shared<T>(&self, pending: &RefCell<Vec<T>>, item: T) {
        let mut pending = pending.borrow_mut();
        if pending.is_empty() {
            // Full means a flush is already due.
            let _ = self.insert_bell.try_send(());
        }
        pending.push(item);
    }

    /// Reports the cache_aware inserts and kv_aware provisional copies gathered so
    /// far, as one batch each.
    pub fn send_shared(&self) {
        let notes = std::mem::take(&mut *self.pending_provisional.borrow_mut());
        if !notes.is_empty() {
            let _ = self.reports.send(Report::KvProvisional {
                shard: self.index,
                notes,
            });
        }
        let inserts = std::mem::take(&mut *self.pending_inserts.borrow_mut());
        if !inserts.is_empty() {
            let _ = self.reports.send(Report::CacheInserts {
                shard: self.index,
                inserts,
            });
        }
    }

    /// Reports in-flight counts and decisions per worker if they changed since the
    /// last report.
    pub fn send_loads(&self) {
        let workers = self.workers.borrow();
        let loads: Vec<WorkerInFlight> = (workers.all().iter())
            .map(|w| WorkerInFlight {
                worker: w.spec.id,
                requests: w.in_flight,
                prefill_tokens: w.prefill_tokens,
            })
            .collect();
        let sent: Vec<(WorkerId, u64)> = (workers.all().iter())
            .map(|w| (w.spec.id, w.decisions))
            .collect();
        let mut last = self.last_loads.borrow_mut();
        if last.0 == loads && last.1 == sent {
            return;
        }
        *last = (loads.clone(), sent.clone());
        let _ = self.reports.send(Report::Loads {
            shard: self.index,
            loads,
            sent,
        });
    }

    /// Sends a copy of the counters, with the per-worker numbers of this moment.
    pub fn send_metrics(&self) {
        let mut m = self.metrics.borrow().clone();
        for w in self.workers.borrow().all() {
            m.processed.insert(w.spec.id, w.processed);
            m.in_flight.insert(w.spec.id, w.in_flight);
            m.outcomes.insert(w.spec.id, w.outcomes);
            if w.unpriced_prefills > 0 {
                m.pd_unpriced.insert(w.spec.id, w.unpriced_prefills);
            }
            if w.pending_decodes > 0 {
                m.pd_pending_decodes.insert(w.spec.id, w.pending_decodes);
            }
        }
        for (p, lookups) in self.policies.iter().zip(&mut m.kv_lookups) {
            let policy = p.borrow();
            m.tree_sizes.extend(policy.tree_sizes());
            let (hits, misses) = policy.cache_counts();
            m.cache_hits += hits;
            m.cache_misses += misses;
            *lookups = policy.kv_lookups();
            m.kv_matched.merge(&policy.kv_matched());
        }
        if self.config.igw {
            m.kv_matched.merge(&self.model_pools.borrow().kv_matched());
            let pools = self.model_pools.borrow().kv_lookups();
            let regular = &mut m.kv_lookups[WorkerRole::Regular as usize];
            for (a, b) in regular.iter_mut().zip(pools) {
                *a += b;
            }
        }
        let [asked, cached, failed] = self.tokens.borrow().counts;
        let here = self
            .chat_tokenizer
            .as_ref()
            .map_or(0, |t| t.borrow().counts[0]);
        m.kv_inputs = [asked, cached, failed, here];
        m.queued = self.admission.usage().1 as u64;
        m.buffered_body_bytes = self.bodies.used();
        m.dormant_connections = self.dormant.count() as u64;
        let _ = self.reports.send(Report::Metrics {
            shard: self.index,
            metrics: Box::new(m),
        });
    }
}
