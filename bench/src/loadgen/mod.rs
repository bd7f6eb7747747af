//! `vllm-router-bench`: open-loop (or closed-loop) load against several targets at
//! once, with the time to first token, inter-token gaps and end-to-end latency of every
//! request recorded in HDR histograms.
//!
//! Open loop: request k is due at a fixed schedule (constant rate, or Poisson gaps),
//! whether or not earlier ones have finished, and its latency counts from that due time.
//! A stalled target therefore shows its stall in the numbers instead of hiding it by
//! sending less (no coordinated omission). Targets are interleaved: slot k goes to
//! target k mod n, so each sees the same rate and the same moments of machine noise.

pub mod client;
mod pacer;
pub mod report;
pub mod workload;

use client::{Connection, Timings};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use workload::{Request, Rng, Workload};

/// A target: a name for the table and where to send.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    pub host: String,
}

/// How load is offered.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// `rate` requests per second per target; Poisson gaps when `poisson`.
    Open { rate: f64, poisson: bool },
    /// `connections` per target, each sending the next request when the last ends.
    Closed { connections: usize },
}

/// Everything one target's requests produced, latencies in microseconds.
pub struct Stats {
    pub ttft: Histogram<u64>,
    pub itl: Histogram<u64>,
    pub e2e: Histogram<u64>,
    /// Per stamped event: worker send to client arrival (`x-mock-timestamps`).
    pub delivery: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    /// Answers with a non-2xx status.
    pub bad_status: u64,
    /// The first few distinct failures, to print: a run where everything failed
    /// should say why.
    pub first_errors: Vec<String>,
}

/// How many distinct failures a target keeps to print.
const FIRST_ERRORS: usize = 5;

impl Stats {
    fn new() -> Stats {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Stats {
            ttft: h(),
            itl: h(),
            e2e: h(),
            delivery: h(),
            ok: 0,
            errors: 0,
            bad_status: 0,
            first_errors: Vec::new(),
        }
    }

    /// A request that got no answer.
    fn fail(&mut self, why: String) {
        self.errors += 1;
        self.note(why);
    }

    fn note(&mut self, why: String) {
        if self.first_errors.len() < FIRST_ERRORS && !self.first_errors.contains(&why) {
            self.first_errors.push(why);
        }
    }

    fn record(&mut self, from: Instant, t: &Timings) {
        let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u64;
        if !(200..300).contains(&t.status) {
            self.bad_status += 1;
            self.note(format!("HTTP status {}", t.status));
            return;
        }
        let (Some(first), Some(end)) = (t.first_token, t.end) else {
            self.fail("the answer ended before a token arrived".into());
            return;
        };
        self.ok += 1;
        let _ = self.ttft.record(us(from, first).max(1));
        let _ = self.e2e.record(us(from, end).max(1));
        for w in t.events.windows(2) {
            let _ = self.itl.record(us(w[0], w[1]).max(1));
        }
        for d in &t.deliveries {
            let _ = self.delivery.record((*d).max(1));
        }
    }
}

/// A run's settings.
pub struct RunConfig {
    pub targets: Vec<Target>,
    pub load: Load,
    pub duration: Duration,
    pub warmup: Duration,
    pub seed: u64,
    /// Extra request headers (`--header`).
    pub headers: Vec<(String, String)>,
}

/// The results, in target order.
pub struct Results {
    pub stats: Vec<Stats>,
    pub elapsed: Duration,
}

type Pools = Rc<Vec<RefCell<Vec<Connection>>>>;

/// Runs the load on a current-thread runtime; the caller's thread does all the I/O.
pub fn run(cfg: &RunConfig, workload: Workload) -> std::io::Result<Results> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_async(cfg, workload))
}

async fn run_async(cfg: &RunConfig, workload: Workload) -> std::io::Result<Results> {
    let n = cfg.targets.len();
    let stats: Rc<Vec<RefCell<Stats>>> =
        Rc::new((0..n).map(|_| RefCell::new(Stats::new())).collect());
    let pools: Pools = Rc::new((0..n).map(|_| RefCell::new(Vec::new())).collect());
    let workload = Rc::new(RefCell::new(workload));
    let rng = Rc::new(RefCell::new(Rng::new(cfg.seed)));
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let sent = Rc::new(std::cell::Cell::new(0u64));
    let headers: Rc<Vec<(String, String)>> = Rc::new(cfg.headers.clone());
    let progress = tokio::task::spawn_local(progress(start, end, stats.clone(), sent.clone()));
    let mut tasks = Vec::new();
    match cfg.load {
        Load::Open { rate, poisson } => {
            // Slot k for target k mod n; the combined rate is n x rate.
            let gap = 1.0 / (rate * n as f64);
            let pacer = pacer::Pacer::new()?;
            let mut due = start;
            let mut k = 0usize;
            while due < end {
                pacer.until(due).await?;
                let target = k % n;
                let request = workload.borrow_mut().next(&mut rng.borrow_mut());
                let ctx = (
                    cfg.targets[target].clone(),
                    pools.clone(),
                    stats.clone(),
                    headers.clone(),
                );
                let record = due >= measure_from;
                sent.set(sent.get() + 1);
                tasks.push(tokio::task::spawn_local(async move {
                    let (t, pools, stats, headers) = ctx;
                    let timings = send(&t, &pools[target], &headers, &request).await;
                    if record {
                        match timings {
                            Ok(tm) => stats[target].borrow_mut().record(due, &tm),
                            Err(why) => stats[target].borrow_mut().fail(why),
                        }
                    }
                }));
                let step = if poisson {
                    rng.borrow_mut().exp(gap)
                } else {
                    gap
                };
                due += Duration::from_secs_f64(step);
                k += 1;
            }
        }
        Load::Closed { connections } => {
            for (target, t) in cfg.targets.iter().enumerate() {
                for _ in 0..connections {
                    let ctx = (
                        t.clone(),
                        pools.clone(),
                        stats.clone(),
                        workload.clone(),
                        rng.clone(),
                        sent.clone(),
                        headers.clone(),
                    );
                    tasks.push(tokio::task::spawn_local(async move {
                        let (t, pools, stats, workload, rng, sent, headers) = ctx;
                        while Instant::now() < end {
                            let request = workload.borrow_mut().next(&mut rng.borrow_mut());
                            let from = Instant::now();
                            sent.set(sent.get() + 1);
                            let timings = send(&t, &pools[target], &headers, &request).await;
                            if from >= measure_from {
                                match timings {
                                    Ok(tm) => stats[target].borrow_mut().record(from, &tm),
                                    Err(why) => stats[target].borrow_mut().fail(why),
                                }
                            }
                        }
                    }));
                }
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let _ = progress.await; // dropped, with its handle on the stats
    eprintln!();
    let elapsed = Instant::now()
        .duration_since(measure_from)
        .min(cfg.duration.max(Duration::from_millis(1)));
    let stats = Rc::try_unwrap(stats)
        .map_err(|_| std::io::Error::other("tasks still running"))?
        .into_iter()
        .map(RefCell::into_inner)
        .collect();
    Ok(Results { stats, elapsed })
}

/// One request on a pooled (or new) connection; None when it failed.
async fn send(
    t: &Target,
    pool: &RefCell<Vec<Connection>>,
    headers: &[(String, String)],
    request: &Request,
) -> Result<Timings, String> {
    let pooled = pool.borrow_mut().pop();
    let mut conn = match pooled {
        Some(c) => c,
        None => Connection::open(t.addr)
            .await
            .map_err(|e| format!("connect to {}: {e}", t.addr))?,
    };
    let raw = client::post(&t.host, &request.path, headers, &request.body);
    let mut timings = Timings::default();
    match conn.exchange(&raw, &mut timings).await {
        Ok(keep) => {
            if keep {
                pool.borrow_mut().push(conn);
            }
            Ok(timings)
        }
        Err(e) => Err(format!("exchange with {}: {e}", t.addr)),
    }
}

/// A progress bar on stderr (a line every 5 s when stderr is not a terminal).
async fn progress(
    start: Instant,
    end: Instant,
    stats: Rc<Vec<RefCell<Stats>>>,
    sent: Rc<std::cell::Cell<u64>>,
) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    loop {
        tokio::time::sleep(every).await;
        let total = end.duration_since(start).as_secs_f64();
        let done = Instant::now()
            .duration_since(start)
            .as_secs_f64()
            .min(total);
        let frac = if total > 0.0 { done / total } else { 1.0 };
        let width = 30;
        let fill = (frac * width as f64) as usize;
        let (ok, err) = stats.iter().fold((0, 0), |(a, b), s| {
            let s = s.borrow();
            (a + s.ok, b + s.errors + s.bad_status)
        });
        let line = format!(
            "[{}{}] {:>3.0}% {:>5.1}s  sent {}  done {}  errors {}",
            "=".repeat(fill),
            " ".repeat(width - fill),
            frac * 100.0,
            done,
            sent.get(),
            ok,
            err
        );
        let mut e = std::io::stderr();
        if tty {
            let _ = write!(e, "\r{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }
}
