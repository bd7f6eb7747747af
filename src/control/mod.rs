//! The control core: one thread outside the shards that owns every slow or shared
//! concern: the worker registry, health checks, the admin API, metrics aggregation and
//! draining. It runs a current-thread tokio runtime (kube-rs and friends need tokio;
//! no shard ever does) and talks to the shards only through `shards::link` (deltas
//! out) and the report channel (reports in).

pub mod admin;
mod breaker_loop;
pub mod breakers;
mod cache_sync;
mod checks;
mod config;
mod exposition;
pub mod health;
mod http;
pub mod k8s_discovery;
pub mod kv_events;
mod loads;
pub mod metrics;
mod metrics_endpoint;
mod models;
mod mooncake;
mod pd_metrics;
pub mod registry;
pub mod reload;
pub mod scrape;
mod sole_sender;
mod state;
mod status;
mod summary_window;
mod worker_calls;
pub mod zmq_discovery;

pub use config::{Command, ControlConfig, StartUp, Started};
pub use state::ControlState;

use crossbeam_channel::Receiver;
use registry::Registry;
use shards::link::ControlEnd;
use shards::messages::{Delta, Report, WorkerRole};
use shards::policy::PolicyKind;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

enum Event {
    Report(Report),
    Command(Command),
}

pub struct ControlCore {
    pub links: Vec<ControlEnd>,
    pub reports: Receiver<Report>,
    pub commands: Receiver<Command>,
    pub config: ControlConfig,
}

impl ControlCore {
    /// Runs until shutdown completes. `started` gets the start-up result once the
    /// shards may serve (a worker is healthy, or none is configured).
    pub fn run(self, started: crossbeam_channel::Sender<StartUp>) -> bool {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = started.send(StartUp::Failed(format!(
                    "cannot start the control runtime: {e}"
                )));
                return false;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, self.main(started))
    }

    async fn main(self, started: crossbeam_channel::Sender<StartUp>) -> bool {
        let ControlCore {
            links,
            reports,
            commands,
            config,
        } = self;
        let mut events = bridge(reports, commands);
        let mut config = config;
        let bound = match bind(&config).await {
            Ok(bound) => {
                if let Ok(addr) = bound.metrics.local_addr() {
                    config.prometheus = addr; // the chosen port for --prometheus-port 0
                }
                bound
            }
            Err(e) => {
                let _ = started.send(StartUp::Failed(e));
                return false;
            }
        };
        let state = match initial_state(links, &config) {
            Ok(s) => Rc::new(RefCell::new(s)),
            Err(e) => {
                let _ = started.send(StartUp::Failed(e));
                return false;
            }
        };
        let _ = started.send(StartUp::Bound);
        mooncake::spawn_queries(&state, &config.mooncake_bootstrap);
        match wait_serving_reports(&state, &mut events, &config).await {
            Ok(ready) => {
                shards_caught_up(&state, &mut events, config.shards).await;
                let _ = started.send(StartUp::Ready(ready));
            }
            Err(e) => {
                let _ = started.send(StartUp::Failed(e));
                return false;
            }
        }
        spawn_loops(&state, &config, bound);
        while let Some(event) = events.recv().await {
            match event {
                Event::Report(r) => on_report(&state, r),
                Event::Command(Command::Shutdown { grace }) => {
                    return drain(&state, &mut events, grace).await;
                }
                Event::Command(Command::Reload) => {
                    let state = state.clone();
                    let config = config.clone();
                    tokio::task::spawn_local(
                        async move { reload::on_sighup(&state, &config).await },
                    );
                }
            }
        }
        true
    }
}

/// The start-up wait, while admin calls and other reports are served: an operator can
/// list the workers or fix a mistyped URL through the admin API meanwhile.
async fn wait_serving_reports(
    state: &Rc<RefCell<ControlState>>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    config: &ControlConfig,
) -> Result<Started, String> {
    let wait = checks::startup_wait(state, config);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            ready = &mut wait => return ready,
            event = events.recv() => match event {
                Some(Event::Report(r)) => on_report(state, r),
                // The main thread sends commands only once the router serves.
                Some(Event::Command(_)) => {}
                None => return Err("the control core lost its event channels".into()),
            },
        }
    }
}

/// Longest wait for the shards to apply the end of the start-up wait: they apply
/// deltas within microseconds; this only bounds a shard that never started.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// Waits until every shard has applied the worker set and the end of the start-up
/// wait, so that a request sent once the router says it serves finds the workers.
/// Other reports meanwhile are handled as usual.
async fn shards_caught_up(
    state: &Rc<RefCell<ControlState>>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    shard_count: usize,
) {
    let mut over = vec![false; shard_count];
    let limit = tokio::time::sleep(CATCH_UP_LIMIT);
    tokio::pin!(limit);
    while over.iter().any(|o| !o) {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Report(Report::StartupWaitOver { shard })) => {
                    if let Some(o) = over.get_mut(shard) {
                        *o = true;
                    }
                }
                Some(Event::Report(r)) => on_report(state, r),
                // Nothing asks to stop before the router has said it serves.
                Some(Event::Command(_)) => {}
                None => return,
            },
            _ = &mut limit => {
                shards::warn!("a shard did not confirm the worker set within {CATCH_UP_LIMIT:?}");
                return;
            }
        }
    }
}

/// Bridges the blocking crossbeam receivers into the runtime, one thread each.
fn bridge(
    reports: Receiver<Report>,
    commands: Receiver<Command>,
) -> mpsc::UnboundedReceiver<Event> {
    let (tx, events) = mpsc::unbounded_channel::<Event>();
    forward("control-reports", reports, tx.clone(), Event::Report);
    forward("control-commands", commands, tx, Event::Command);
    events
}

/// A thread that moves what `rx` receives into the runtime's channel, wrapped as an
/// `Event`, until either side closes.
fn forward<T: Send + 'static>(
    name: &str,
    rx: Receiver<T>,
    tx: mpsc::UnboundedSender<Event>,
    wrap: fn(T) -> Event,
) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for item in rx {
                if tx.send(wrap(item)).is_err() {
                    break;
                }
            }
        })
        .expect("spawn a control bridge thread");
}

/// The sockets the control core serves on, bound before anything else starts.
struct Bound {
    metrics: tokio::net::TcpListener,
    discovery: Option<zeromq::RouterSocket>,
}

async fn bind(config: &ControlConfig) -> Result<Bound, String> {
    let metrics = tokio::net::TcpListener::bind(config.prometheus)
        .await
        .map_err(|e| format!("cannot listen for metrics on {}: {e}", config.prometheus))?;
    let discovery = match &config.discovery_address {
        Some(address) => Some(zmq_discovery::bind(address).await?),
        None => None,
    };
    Ok(Bound { metrics, discovery })
}

/// The registry from the command line, every worker unhealthy until probed.
fn initial_state(
    links: Vec<shards::link::ControlEnd>,
    config: &ControlConfig,
) -> Result<ControlState, String> {
    let mut registry = Registry::new(config.dp_size);
    let pools = [
        (WorkerRole::Regular, &config.worker_urls),
        (WorkerRole::Prefill, &config.prefill_urls),
        (WorkerRole::Decode, &config.decode_urls),
    ];
    for (role, urls) in pools {
        for url in urls {
            registry.add_role(url, role)?;
        }
    }
    Ok(ControlState {
        listen: config.listen,
        metrics_addr: config.prometheus,
        shard_count: config.shards,
        links,
        registry,
        metrics: metrics::Aggregator::default(),
        probe: config.probe.clone(),
        policy: config.policy,
        kv_stage: config.kv_events.as_ref().map(|k| k.role),
        loads_dirty: false,
        scraped: std::collections::HashMap::new(),
        external: std::collections::HashMap::new(),
        breakers: breakers::Breakers::new(config.breaker.clone()),
        file_workers: config.file_urls.iter().cloned().collect(),
        discovery_updates: 0,
        discovery_added: 0,
        discovery_removed: 0,
        kv: Default::default(),
        sole: Default::default(),
        reloads: [0, 0],
    })
}

/// Every periodic task, each beside its concern.
fn spawn_loops(state: &Rc<RefCell<ControlState>>, config: &ControlConfig, bound: Bound) {
    use tokio::task::spawn_local;
    spawn_local(checks::health_loop(state.clone(), config.clone()));
    spawn_local(loads::load_loop(state.clone()));
    if let Some(k8s) = config.k8s.clone() {
        spawn_local(k8s_discovery::run(state.clone(), k8s));
    }
    if let Some(socket) = bound.discovery {
        spawn_local(zmq_discovery::run(state.clone(), socket));
    }
    if config.breaker.enabled {
        spawn_local(breaker_loop::breaker_loop(state.clone()));
    }
    let load_aware = matches!(
        config.policy,
        PolicyKind::PowerOfTwo | PolicyKind::CacheAware | PolicyKind::KvAware
    );
    if load_aware || config.kv_events.is_some() {
        spawn_local(loads::scrape_loop(state.clone(), config.probe.timeout));
    }
    if let Some(kv) = config.kv_events.clone() {
        spawn_local(kv_events::run(state.clone(), kv));
    }
    if config.policy == PolicyKind::CacheAware {
        let (every, max) = (config.eviction_interval, config.max_tree_size);
        spawn_local(cache_sync::eviction_loop(state.clone(), every, max));
    }
    spawn_local(metrics_endpoint::serve_metrics(
        state.clone(),
        bound.metrics,
    ));
    if let Some(n) = config.notifier.clone() {
        spawn_local(status::notify_loop(state.clone(), n));
    }
    if config.igw {
        spawn_local(models::refresh_loop(state.clone()));
    }
}

fn on_report(state: &Rc<RefCell<ControlState>>, report: Report) {
    match report {
        Report::CacheInserts { shard, inserts } => {
            cache_sync::forward_inserts(&state.borrow(), shard, inserts)
        }
        Report::KvProvisional { shard, notes } => {
            cache_sync::forward_provisional(&state.borrow(), shard, notes)
        }
        Report::Loads { shard, loads, sent } => {
            let mut s = state.borrow_mut();
            s.metrics.update_loads(shard, loads, sent);
            s.loads_dirty = true;
        }
        Report::Metrics { shard, metrics } => state.borrow_mut().metrics.update(shard, metrics),
        Report::Admin {
            shard,
            token,
            request,
        } => {
            let state = state.clone();
            tokio::task::spawn_local(async move {
                let reply = admin::handle(state.clone(), request).await;
                if let Some(link) = state.borrow().links.get(shard) {
                    link.send(Delta::AdminReply { token, reply });
                }
            });
        }
        Report::WorkerUnreachable { id, .. } => checks::on_unreachable(state, id),
        Report::Outcome { id, success, .. } => {
            let mut s = state.borrow_mut();
            let before = s.breakers.state(id);
            if let Some(delta) = s.breakers.record(id, success, Instant::now()) {
                let after = s.breakers.state(id);
                if after != before {
                    let url = s.url_of(id);
                    match after {
                        shards::breaker::BreakerState::Open => {
                            shards::warn!("circuit breaker of {url} opened: no traffic for now")
                        }
                        _ => shards::info!("circuit breaker of {url} is {}", after.name()),
                    }
                }
                s.broadcast(delta);
            }
        }
        Report::Drained { shard } => shards::debug!("shard {shard} drained"),
        Report::StartupWaitOver { shard } => shards::debug!("shard {shard} serves"),
        Report::SessionFinished { shard, session } => {
            let s = state.borrow();
            for (i, link) in s.links.iter().enumerate() {
                if i != shard {
                    link.send(Delta::SessionFinished(session.clone()));
                }
            }
        }
    }
}

async fn drain(
    state: &Rc<RefCell<ControlState>>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    grace: Duration,
) -> bool {
    let shards = {
        let s = state.borrow();
        s.broadcast(Delta::Drain);
        s.links.len()
    };
    let deadline = tokio::time::Instant::now() + grace;
    let mut left = shards;
    while left > 0 {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Report(Report::Drained { .. }))) => left -= 1,
            Ok(Some(Event::Report(other))) => on_report(state, other),
            Ok(Some(Event::Command(_))) => {}
            Ok(None) => break,
            Err(_) => {
                shards::warn!("{left} shard(s) still busy after the grace period; exiting");
                return false;
            }
        }
    }
    true
}
