//! One shard: its executor, its state, and the task that applies deltas.

use crate::deadline::{Deadlines, DEADLINE_TICK};
use crate::link::ShardEnd;
use crate::messages::{Delta, Report, WorkerId, WorkerRole};
use crate::metrics::ShardMetrics;
use crate::policy::Random;
use crate::policy::{Policy, PolicyKind};
use crate::pool::Pool;
use crate::server::AdminWaiters;
use crate::state::WorkerSet;
use crossbeam_channel::Sender;
use futures_lite::AsyncReadExt;
use glommio::sync::Gate;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::os::unix::io::FromRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// io_uring registered-buffer memory per executor. glommio defaults to 10 MiB for
/// file I/O; a proxy does only socket I/O, and every byte of it counts against
/// RLIMIT_MEMLOCK.
pub const SHARD_IO_MEMORY: usize = 512 * 1024;

/// Longest a shard runs tasks without polling io_uring for completions. A shard
/// has one task queue, so nothing else preempts a long run of ready tasks
/// (glommio patch 8); glommio's default is 100 ms. The timer costs nothing while
/// it has not fired (patch 6).
pub const SHARD_PREEMPT_TIMER: Duration = Duration::from_millis(10);

/// How often a shard closes pooled connections that idled too long, in deadline ticks.
const POOL_SWEEP_TICKS: u32 = 20;

/// How often a shard reports its in-flight counts (when they changed), in ticks:
/// 100 ms keeps every shard's load view fresh enough for power_of_two.
const LOAD_REPORT_TICKS: u32 = 2;

/// Settings every shard reads; fixed at start.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub listen: SocketAddr,
    pub max_payload_bytes: u64,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Time a worker has to send its answer head once the request is out.
    pub head_timeout: Duration,
    /// Longest silence from a worker between reads of an answer body.
    pub stream_idle_timeout: Duration,
    /// Time allowed to receive a whole request head once its first byte arrived.
    pub header_read_timeout: Duration,
    /// Time an idle client keep-alive connection is kept open.
    pub keepalive_timeout: Duration,
    pub retry: crate::proxy::retry::RetryConfig,
    pub breaker: crate::breaker::BreakerConfig,
    /// This shard's share of `--max-concurrent-requests` and `--queue-size`.
    pub admission_slots: usize,
    pub admission_queue: usize,
    pub queue_timeout: Duration,
    pub policy: PolicyKind,
    /// P/D mode (`--vllm-pd-disaggregation`): generation requests take a prefill and a
    /// decode worker, each chosen by its pool's policy.
    pub pd: Option<PdConfig>,
    pub policy_options: crate::policy::PolicyOptions,
    /// Sent to workers as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// Headers a request id is taken from, in order (`--request-id-headers`).
    pub request_id_headers: Vec<String>,
    /// Longest wait for the control core to answer an admin call.
    pub admin_timeout: Duration,
}

/// `--prefill-policy` and `--decode-policy` (each defaults to `--policy`).
#[derive(Clone, Debug)]
pub struct PdConfig {
    pub prefill_policy: PolicyKind,
    pub decode_policy: PolicyKind,
}

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
    /// Every client connection holds a pass; draining waits for the gate to empty.
    pub connections: Gate,
    pub metrics: RefCell<ShardMetrics>,
    /// Per-shard randomness (request ids), no syscalls.
    pub rng: RefCell<Random>,
    /// Admin calls waiting for the control core's answer.
    pub admin: AdminWaiters,
    /// The last in-flight counts reported (to report only changes).
    pub last_loads: RefCell<Vec<(WorkerId, u32)>>,
    /// cache_aware inserts not yet reported: sent as one batch per deadline tick, so
    /// a request never costs a channel wake-up or a doorbell on the other shards.
    pub pending_inserts: RefCell<Vec<(WorkerId, std::sync::Arc<str>)>>,
    pub admission: crate::admission::Admission,
}

impl Shard {
    pub fn apply(&self, delta: &Delta) {
        match delta {
            Delta::AdminReply { token, reply } => return self.admin.fulfil(*token, reply.clone()),
            Delta::CacheInserts(batch) => {
                let workers = self.workers.borrow();
                for (worker, text) in batch.iter() {
                    if let Some(w) = workers.get(*worker) {
                        self.policy(w.spec.role)
                            .borrow_mut()
                            .remote_insert(*worker, text);
                    }
                }
                return;
            }
            Delta::CacheEvict { max } => {
                for p in &self.policies {
                    p.borrow_mut().evict(*max);
                }
                return;
            }
            Delta::Remove(id) => self.pool.borrow_mut().forget_worker(*id),
            Delta::Drain => {
                self.draining.set(true);
                self.deadlines.drain(); // wakes connections idling between requests
            }
            _ => {}
        }
        self.workers.borrow_mut().apply(delta);
        if matches!(delta, Delta::Upsert(_) | Delta::Remove(_)) {
            let mut workers = self.workers.borrow_mut();
            for role in WorkerRole::ALL {
                workers.set_view(role);
                self.policy(role).borrow_mut().on_workers_changed(&workers);
            }
            workers.set_view(WorkerRole::Regular);
        }
    }
}

impl Shard {
    pub fn policy(&self, role: WorkerRole) -> &RefCell<Box<dyn Policy>> {
        &self.policies[role as usize]
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

    /// Reports the cache_aware inserts gathered since the last tick, as one batch.
    pub fn send_inserts(&self) {
        let inserts = std::mem::take(&mut *self.pending_inserts.borrow_mut());
        if !inserts.is_empty() {
            let _ = self.reports.send(Report::CacheInserts {
                shard: self.index,
                inserts,
            });
        }
    }

    /// Reports in-flight counts per worker if they changed since the last report.
    pub fn send_loads(&self) {
        let loads: Vec<(WorkerId, u32)> = self
            .workers
            .borrow()
            .all()
            .iter()
            .map(|w| (w.spec.id, w.in_flight))
            .collect();
        if *self.last_loads.borrow() == loads {
            return;
        }
        self.last_loads.replace(loads.clone());
        let _ = self.reports.send(Report::Loads {
            shard: self.index,
            loads,
        });
    }

    /// Sends a copy of the counters, with the per-worker numbers of this moment.
    pub fn send_metrics(&self) {
        let mut m = self.metrics.borrow().clone();
        for w in self.workers.borrow().all() {
            m.processed.insert(w.spec.id, w.processed);
            m.in_flight.insert(w.spec.id, w.in_flight);
            m.decisions.insert(w.spec.id, w.decisions);
            m.outcomes.insert(w.spec.id, w.outcomes);
        }
        for p in &self.policies {
            let policy = p.borrow();
            m.tree_sizes.extend(policy.tree_sizes());
            let (hits, misses) = policy.cache_counts();
            m.cache_hits += hits;
            m.cache_misses += misses;
        }
        let _ = self.reports.send(Report::Metrics {
            shard: self.index,
            metrics: Box::new(m),
        });
    }
}

fn seed_from_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Starts shard `index` on its own thread, pinned to `cpu` when given. Returns once
/// the listener is bound, or with the reason it could not be.
pub fn spawn_shard(
    index: usize,
    cpu: Option<usize>,
    config: Arc<ShardConfig>,
    link: ShardEnd,
    reports: Sender<Report>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let placement = match cpu {
        Some(c) => Placement::Fixed(c),
        None => Placement::Unbound,
    };
    let builder = LocalExecutorBuilder::new(placement)
        .name(&format!("shard-{index}"))
        .io_memory(SHARD_IO_MEMORY)
        .preempt_timer(SHARD_PREEMPT_TIMER);
    let thread = std::thread::Builder::new()
        .name(format!("shard-{index}"))
        .spawn(move || {
            let ex = match builder.make() {
                Ok(ex) => ex,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start shard executor: {e}")));
                    return;
                }
            };
            ex.run(run_shard(index, config, link, reports, ready_tx));
        })
        .map_err(|e| format!("cannot start shard thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(format!("shard {index} exited during start-up"))
        }
    }
}

async fn run_shard(
    index: usize,
    config: Arc<ShardConfig>,
    link: ShardEnd,
    reports: Sender<Report>,
    ready: crossbeam_channel::Sender<Result<(), String>>,
) {
    let listener = match glommio::net::TcpListener::bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot listen on {}: {e}", config.listen)));
            return;
        }
    };
    let admission =
        crate::admission::Admission::new(config.admission_slots, config.admission_queue);
    let shard = Rc::new(Shard {
        index,
        policies: WorkerRole::ALL.map(|role| {
            let kind = match (&config.pd, role) {
                (Some(pd), WorkerRole::Prefill) => pd.prefill_policy,
                (Some(pd), WorkerRole::Decode) => pd.decode_policy,
                _ => config.policy,
            };
            RefCell::new(kind.build(
                index as u64 + 1 + role as u64 * 1000,
                &config.policy_options,
            ))
        }),
        config,
        workers: RefCell::new(WorkerSet::default()),
        pool: RefCell::new(Pool::default()),
        reports,
        draining: Cell::new(false),
        deadlines: Deadlines::default(),
        connections: Gate::new(),
        metrics: RefCell::new(ShardMetrics::default()),
        rng: RefCell::new(Random::new(0x5eed ^ (index as u64) ^ seed_from_time())),
        admin: AdminWaiters::default(),
        last_loads: RefCell::new(Vec::new()),
        pending_inserts: RefCell::new(Vec::new()),
        admission,
    });
    // Deltas queued before the shard started (the initial worker set) apply first.
    while let Ok(d) = link.rx.try_recv() {
        shard.apply(&d);
    }
    let _ = ready.send(Ok(()));

    let sweeper = glommio::spawn_local({
        let shard = shard.clone();
        async move {
            let mut ticks = 0u32;
            loop {
                glommio::timer::sleep(DEADLINE_TICK).await;
                let now = Instant::now();
                shard.deadlines.sweep(now);
                shard.send_inserts();
                ticks += 1;
                if ticks.is_multiple_of(LOAD_REPORT_TICKS) {
                    shard.send_loads();
                }
                if ticks.is_multiple_of(POOL_SWEEP_TICKS) {
                    shard.pool.borrow_mut().sweep(now);
                    shard.send_metrics();
                }
            }
        }
    });
    let acceptor = glommio::spawn_local(crate::server::accept_loop(shard.clone(), listener));

    // The delta loop: wait for the doorbell, drain the channel, until drained.
    // SAFETY: the fd comes from a std socket we own and hand over whole.
    let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(link.bell.into_raw_fd()) };
    let mut scratch = [0u8; 64];
    loop {
        let rung = bell.read(&mut scratch).await;
        let mut drain = matches!(rung, Ok(0) | Err(_)); // control core gone: drain
        while let Ok(d) = link.rx.try_recv() {
            drain |= matches!(d, Delta::Drain);
            shard.apply(&d);
        }
        if drain {
            shard.apply(&Delta::Drain);
            break;
        }
    }
    drop(acceptor); // closes the listener: the kernel stops giving us connections
    let _ = shard.connections.close().await;
    drop(sweeper);
    shard.send_metrics();
    let _ = shard.reports.send(Report::Drained { shard: index });
}
