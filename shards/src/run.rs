//! Starting a shard: its thread and executor, its listener, and the loops that run
//! beside the connections (the delta loop and the periodic sweeper).

use crate::admin_waiters::AdminWaiters;
use crate::chat_tokens::ChatTokenizer;
use crate::config::ShardConfig;
use crate::deadline::{Deadlines, DEADLINE_TICK};
use crate::link::ShardEnd;
use crate::messages::{Delta, Report};
use crate::metrics::ShardMetrics;
use crate::policy::Random;
use crate::pool::Pool;
use crate::shard::{Shard, INSERT_FLUSH_DELAY};
use crate::state::WorkerSet;
use crate::worker::WorkerRole;
use crossbeam_channel::Sender;
use futures_lite::AsyncReadExt;
use glommio::sync::Gate;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::{Cell, RefCell};
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
/// it has not fired (patch 6), and for one such slice after a wake-up it is not armed
/// at all: the clock bounds that run (patch 12).
pub const SHARD_PREEMPT_TIMER: Duration = Duration::from_millis(10);

/// How often a shard closes pooled and dormant client connections that idled too
/// long, in deadline ticks.
const POOL_SWEEP_TICKS: u32 = 20;

/// How often a shard reports its in-flight counts (when they changed), in ticks:
/// 100 ms keeps every shard's load view fresh enough for power_of_two.
const LOAD_REPORT_TICKS: u32 = 2;

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
    let dormant = match crate::dormant::Dormant::new() {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create the idle-connection set: {e}")));
            return;
        }
    };
    let admission =
        crate::admission::Admission::new(config.admission_slots, config.admission_queue);
    let (insert_bell, insert_rung) = glommio::channels::local_channel::new_bounded(1);
    let chat_tokenizer = (config.tokenizer.as_ref()).map(|t| {
        RefCell::new(crate::chat_tokens::ShardTokenizer::new(
            ChatTokenizer::clone(t),
        ))
    });
    let shard = Rc::new(Shard {
        index,
        insert_bell,
        policies: WorkerRole::ALL.map(|role| {
            let kind = match (&config.pd, role) {
                (Some(pd), WorkerRole::Prefill) => pd.prefill_policy,
                (Some(pd), WorkerRole::Decode) => pd.decode_policy,
                _ => config.policy,
            };
            RefCell::new(kind.build(
                index as u64 + 1 + role as u64 * 1000,
                &config.policy_options,
                role,
            ))
        }),
        bodies: crate::body_budget::BodyBudget::new(config.body_budget_bytes),
        warned_mooncake: Cell::new(false),
        model_pools: RefCell::new(Default::default()),
        rate: config
            .rate_per_second
            .map(|r| crate::rate_limit::TokenBucket::new(r, Instant::now())),
        config,
        workers: RefCell::new(WorkerSet::default()),
        pool: RefCell::new(Pool::default()),
        reports,
        draining: Cell::new(false),
        deadlines: Deadlines::default(),
        connections: Gate::new(),
        dormant,
        metrics: RefCell::new(ShardMetrics::default()),
        rng: RefCell::new(Random::new(0x5eed ^ (index as u64) ^ seed_from_time())),
        admin: AdminWaiters::default(),
        last_loads: RefCell::new((Vec::new(), Vec::new())),
        pending_inserts: RefCell::new(Vec::new()),
        pending_provisional: RefCell::new(Vec::new()),
        admission,
        starting: RefCell::new(None),
        tokens: RefCell::new(Default::default()),
        chat_tokenizer,
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
                ticks += 1;
                if ticks.is_multiple_of(LOAD_REPORT_TICKS) {
                    shard.send_loads();
                }
                if ticks.is_multiple_of(POOL_SWEEP_TICKS) {
                    if let Some(cutoff) = now.checked_sub(shard.config.keepalive_timeout) {
                        shard.dormant.close_idle_since(cutoff);
                    }
                    if let Some(took) = shard.dormant.trim_after_wave() {
                        crate::debug!("shard {index}: gave freed memory back in {took:?}");
                    }
                    shard.pool.borrow_mut().sweep(now);
                    shard.send_metrics();
                }
            }
        }
    });
    let insert_flusher = glommio::spawn_local({
        let shard = shard.clone();
        async move {
            while insert_rung.recv().await.is_some() {
                glommio::timer::sleep(INSERT_FLUSH_DELAY).await;
                shard.send_shared();
            }
        }
    });
    let acceptor = glommio::spawn_local(crate::server::accept_loop(shard.clone(), listener));
    let waker = glommio::spawn_local(crate::server::wake_dormant(shard.clone()));

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
    drop(waker);
    let _ = shard.connections.close().await;
    drop(sweeper);
    drop(insert_flusher);
    shard.send_metrics();
    let _ = shard.reports.send(Report::Drained { shard: index });
}
