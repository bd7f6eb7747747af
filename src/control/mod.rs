//! The control core: one thread outside the shards that owns every slow or shared
//! concern: the worker registry, health checks, the admin API, metrics aggregation and
//! draining. It runs a current-thread tokio runtime (kube-rs and friends need tokio;
//! no shard ever does) and talks to the shards only through `shards::link` (deltas
//! out) and the report channel (reports in).

pub mod admin;
pub mod breakers;
pub mod health;
pub mod k8s_discovery;
pub mod metrics;
pub mod registry;
pub mod reload;
pub mod scrape;
pub mod zmq_discovery;

use crossbeam_channel::Receiver;
use health::ProbeConfig;
use registry::{Registry, WorkerEntry};
use shards::link::ControlEnd;
use shards::messages::{Delta, Report, WorkerId};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Asked of the control core by the main thread.
pub enum Command {
    /// Drain every shard, waiting up to `grace` for in-flight requests.
    Shutdown { grace: Duration },
    /// Re-read `--worker-urls-file` (SIGHUP).
    Reload,
}

/// Settings of the control core.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub worker_urls: Vec<String>,
    /// `--service-discovery`: pods watched through the Kubernetes API.
    pub k8s: Option<k8s_discovery::K8sConfig>,
    /// `--vllm-discovery-address`: vLLM NCCL instances announce themselves here.
    pub discovery_address: Option<String>,
    /// P/D pools (`--prefill`, `--decode`).
    pub prefill_urls: Vec<String>,
    pub decode_urls: Vec<String>,
    pub dp_size: u32,
    pub probe: ProbeConfig,
    pub health_interval: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub startup_timeout: Duration,
    pub startup_interval: Duration,
    pub prometheus: SocketAddr,
    pub policy: &'static str,
    /// cache_aware: evict every shard's tree down to `max_tree_size` this often.
    pub eviction_interval: Duration,
    pub max_tree_size: usize,
    pub breaker: shards::breaker::BreakerConfig,
    /// `--worker-urls-file`, and the URLs it held at start (already in `worker_urls`).
    pub worker_urls_file: Option<std::path::PathBuf>,
    pub file_urls: Vec<String>,
    /// systemd's notify socket, when started with `Type=notify`.
    pub notifier: Option<std::sync::Arc<crate::notify::Notifier>>,
}

/// What the control core found at start-up.
pub struct Started {
    /// (url, healthy, why not) per worker.
    pub workers: Vec<(String, bool, Option<String>)>,
}

/// Everything the control core's tasks share (one thread: `Rc<RefCell>`).
pub struct ControlState {
    pub links: Vec<ControlEnd>,
    pub registry: Registry,
    pub metrics: metrics::Aggregator,
    pub probe: ProbeConfig,
    /// The policy's name, for `policy_decisions_total`.
    pub policy: &'static str,
    /// A shard reported new in-flight counts since the last load broadcast.
    pub loads_dirty: bool,
    /// Per worker, what its own `/metrics` said at the last scrape.
    pub scraped: std::collections::HashMap<WorkerId, scrape::WorkerLoad>,
    pub breakers: breakers::Breakers,
    /// Base URLs the worker list file owns (see `reload`).
    pub file_workers: std::collections::BTreeSet<String>,
    /// Workers added or removed by discovery (`discovery_updates_total`), and each.
    pub discovery_updates: u64,
    pub discovery_added: u64,
    pub discovery_removed: u64,
}

impl ControlState {
    pub fn broadcast(&self, delta: Delta) {
        for link in &self.links {
            link.send(delta.clone());
        }
    }

    pub fn worker_json(&self, w: &WorkerEntry) -> serde_json::Value {
        serde_json::json!({
            "url": w.spec.url,
            "role": w.spec.role.name(),
            "address": w.spec.addr.to_string(),
            "healthy": w.health.healthy,
            "load": self.metrics.load(w.spec.id),
            "processed_requests": self.metrics.processed(w.spec.id),
            "dp_rank": w.spec.dp_rank,
            "kv_cache_usage": self.scraped.get(&w.spec.id).map(|l| l.kv_cache_usage),
            "external_load": self.external_load(w.spec.id),
            "circuit_breaker": {
                "state": self.breakers.state(w.spec.id).name(),
                "consecutive_failures": self.breakers.failures(w.spec.id),
            },
        })
    }

    /// Requests a worker has that did not come from this router (other routers,
    /// direct clients), from its last scrape.
    fn external_load(&self, id: WorkerId) -> u32 {
        let Some(s) = self.scraped.get(&id) else {
            return 0;
        };
        let ours = self.metrics.load(id) as f64;
        (s.running + s.waiting - ours).max(0.0) as u32
    }

    /// Sends each shard the load it does not see itself: the other shards' in-flight
    /// counts plus each worker's external load.
    fn broadcast_loads(&mut self) {
        self.loads_dirty = false;
        let external: Vec<(WorkerId, u32)> = self
            .registry
            .workers
            .iter()
            .map(|w| (w.spec.id, self.external_load(w.spec.id)))
            .filter(|(_, n)| *n > 0)
            .collect();
        for (i, link) in self.links.iter().enumerate() {
            let mut view = self.metrics.loads_excluding(i);
            for (id, n) in &external {
                match view.iter_mut().find(|(w, _)| w == id) {
                    Some(e) => e.1 += n,
                    None => view.push((*id, *n)),
                }
            }
            link.send(Delta::Loads(view));
        }
    }

    /// Sets the health of every rank of `base` and tells the shards.
    fn set_health(&mut self, base: &str, healthy: bool) {
        let mut ids: Vec<WorkerId> = Vec::new();
        for w in self.registry.of_base(base) {
            w.spec.healthy = healthy;
            ids.push(w.spec.id);
        }
        for id in ids {
            self.broadcast(Delta::Health { id, healthy });
        }
    }
}

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
    pub fn run(self, started: crossbeam_channel::Sender<Result<Started, String>>) -> bool {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = started.send(Err(format!("cannot start the control runtime: {e}")));
                return false;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, self.main(started))
    }

    async fn main(self, started: crossbeam_channel::Sender<Result<Started, String>>) -> bool {
        let ControlCore {
            links,
            reports,
            commands,
            config,
        } = self;
        // Bridge the blocking crossbeam receivers into the runtime.
        let (tx, mut events) = mpsc::unbounded_channel::<Event>();
        let tx2 = tx.clone();
        std::thread::Builder::new()
            .name("control-reports".into())
            .spawn(move || {
                for r in reports {
                    if tx.send(Event::Report(r)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn report bridge");
        std::thread::Builder::new()
            .name("control-commands".into())
            .spawn(move || {
                for c in commands {
                    if tx2.send(Event::Command(c)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn command bridge");

        let metrics_listener = match tokio::net::TcpListener::bind(config.prometheus).await {
            Ok(l) => l,
            Err(e) => {
                let _ = started.send(Err(format!(
                    "cannot listen for metrics on {}: {e}",
                    config.prometheus
                )));
                return false;
            }
        };
        let discovery = match &config.discovery_address {
            Some(address) => match zmq_discovery::bind(address).await {
                Ok(socket) => Some(socket),
                Err(e) => {
                    let _ = started.send(Err(e));
                    return false;
                }
            },
            None => None,
        };
        let mut registry = Registry::new(config.dp_size);
        let pools = [
            (shards::messages::WorkerRole::Regular, &config.worker_urls),
            (shards::messages::WorkerRole::Prefill, &config.prefill_urls),
            (shards::messages::WorkerRole::Decode, &config.decode_urls),
        ];
        for (role, urls) in pools {
            for url in urls {
                if let Err(e) = registry.add_role(url, role) {
                    let _ = started.send(Err(e));
                    return false;
                }
            }
        }
        let state = Rc::new(RefCell::new(ControlState {
            links,
            registry,
            metrics: metrics::Aggregator::default(),
            probe: config.probe.clone(),
            policy: config.policy,
            loads_dirty: false,
            scraped: std::collections::HashMap::new(),
            breakers: breakers::Breakers::new(config.breaker.clone()),
            file_workers: config.file_urls.iter().cloned().collect(),
            discovery_updates: 0,
            discovery_added: 0,
            discovery_removed: 0,
        }));

        match startup_wait(&state, &config).await {
            Ok(s) => {
                let _ = started.send(Ok(s));
            }
            Err(e) => {
                let _ = started.send(Err(e));
                return false;
            }
        }

        tokio::task::spawn_local(health_loop(state.clone(), config.clone()));
        tokio::task::spawn_local(load_loop(state.clone()));
        if let Some(k8s) = config.k8s.clone() {
            tokio::task::spawn_local(k8s_discovery::run(state.clone(), k8s));
        }
        if let Some(socket) = discovery {
            tokio::task::spawn_local(zmq_discovery::run(state.clone(), socket));
        }
        if config.breaker.enabled {
            tokio::task::spawn_local(breaker_loop(state.clone()));
        }
        if matches!(config.policy, "power_of_two" | "cache_aware") {
            tokio::task::spawn_local(scrape_loop(state.clone(), config.probe.timeout));
        }
        if config.policy == "cache_aware" {
            tokio::task::spawn_local(eviction_loop(
                state.clone(),
                config.eviction_interval,
                config.max_tree_size,
            ));
        }
        tokio::task::spawn_local(serve_metrics(state.clone(), metrics_listener));
        if let Some(n) = config.notifier.clone() {
            tokio::task::spawn_local(notify_loop(state.clone(), n));
        }

        while let Some(event) = events.recv().await {
            match event {
                Event::Report(r) => on_report(&state, r),
                Event::Command(Command::Shutdown { grace }) => {
                    return drain(&state, &mut events, grace).await;
                }
                Event::Command(Command::Reload) => {
                    let state = state.clone();
                    let config = config.clone();
                    tokio::task::spawn_local(async move { reload(&state, &config).await });
                }
            }
        }
        true
    }
}

/// Probes every worker until one is healthy (or none is configured), as
/// `--worker-startup-timeout-secs` and `--worker-startup-check-interval` say.
async fn startup_wait(
    state: &Rc<RefCell<ControlState>>,
    config: &ControlConfig,
) -> Result<Started, String> {
    let deadline = Instant::now() + config.startup_timeout;
    loop {
        let results = probe_all(state).await;
        let any = results.is_empty() || results.iter().any(|(_, r)| r.is_ok());
        {
            let mut s = state.borrow_mut();
            for (base, outcome) in &results {
                let healthy = outcome.is_ok();
                for w in s.registry.of_base(base) {
                    w.health = health::HealthTracker::new(healthy);
                    w.spec.healthy = healthy;
                }
            }
            if any {
                let specs: Vec<_> = s.registry.workers.iter().map(|w| w.spec.clone()).collect();
                for spec in specs {
                    s.broadcast(Delta::Upsert(spec));
                }
            }
        }
        if any {
            let workers = results
                .into_iter()
                .map(|(base, r)| (base, r.is_ok(), r.err()))
                .collect();
            return Ok(Started { workers });
        }
        if Instant::now() + config.startup_interval > deadline {
            let why: Vec<String> = results
                .into_iter()
                .map(|(b, r)| format!("{b}: {}", r.err().unwrap_or_default()))
                .collect();
            return Err(format!(
                "no worker became healthy within {}s ({})",
                config.startup_timeout.as_secs(),
                why.join("; ")
            ));
        }
        shards::info!(
            "waiting for a healthy worker; next check in {}s",
            config.startup_interval.as_secs()
        );
        tokio::time::sleep(config.startup_interval).await;
    }
}

/// Probes every base URL concurrently.
async fn probe_all(state: &Rc<RefCell<ControlState>>) -> Vec<(String, Result<(), String>)> {
    let (bases, cfg) = {
        let s = state.borrow();
        (s.registry.bases(), s.probe.clone())
    };
    let mut tasks = Vec::new();
    for (base, addr, authority) in bases {
        let cfg = cfg.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let r = health::probe(addr, &authority, &cfg).await;
            (base, r)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}

/// Periodic health checks with the failure and success thresholds.
async fn health_loop(state: Rc<RefCell<ControlState>>, config: ControlConfig) {
    let mut tick = tokio::time::interval(config.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the start-up round just ran
    loop {
        tick.tick().await;
        for (base, outcome) in probe_all(&state).await {
            let mut s = state.borrow_mut();
            let ok = outcome.is_ok();
            let mut change = None;
            for w in s.registry.of_base(&base) {
                if let Some(c) =
                    w.health
                        .record(ok, config.success_threshold, config.failure_threshold)
                {
                    change = Some(c);
                }
            }
            if let Some(healthy) = change {
                if healthy {
                    shards::info!("worker {base} is healthy again");
                } else {
                    shards::warn!(
                        "worker {base} is unhealthy: {}",
                        outcome.err().unwrap_or_default()
                    );
                }
                s.set_health(&base, healthy);
            }
        }
    }
}

/// How often the shards' load views are refreshed (when something changed). With the
/// shards' 100 ms reports, a view is at most ~150 ms old.
const LOAD_BROADCAST_INTERVAL: Duration = Duration::from_millis(50);

async fn load_loop(state: Rc<RefCell<ControlState>>) {
    let mut tick = tokio::time::interval(LOAD_BROADCAST_INTERVAL);
    loop {
        tick.tick().await;
        let mut s = state.borrow_mut();
        if s.loads_dirty {
            s.broadcast_loads();
        }
    }
}

/// SIGHUP: re-read the worker list file, telling systemd while it happens.
async fn reload(state: &Rc<RefCell<ControlState>>, config: &ControlConfig) {
    let Some(path) = &config.worker_urls_file else {
        shards::warn!("SIGHUP ignored: there is no --worker-urls-file to re-read");
        return;
    };
    if let Some(n) = &config.notifier {
        n.send("RELOADING=1");
    }
    match reload::apply(state, path).await {
        Ok((added, removed)) => shards::info!(
            "reloaded {}: {added} worker(s) added, {removed} removed",
            path.display()
        ),
        Err(e) => shards::error!("reload failed, workers unchanged: {e}"),
    }
    if let Some(n) = &config.notifier {
        n.send(&format!("READY=1\nSTATUS={}", status_line(&state.borrow())));
    }
}

/// The `STATUS=` line systemd shows.
pub fn status_line(s: &ControlState) -> String {
    format!(
        "serving; {} of {} worker(s) healthy",
        s.registry.healthy_count(),
        s.registry.workers.len()
    )
}

/// Watchdog pings (when systemd asked for them) and `STATUS=` updates. The pings come
/// from the control core's own loop, so a wedged control core stops them.
async fn notify_loop(state: Rc<RefCell<ControlState>>, n: std::sync::Arc<crate::notify::Notifier>) {
    let watchdog = crate::notify::watchdog_interval();
    let every = watchdog.map_or(STATUS_INTERVAL, |w| w.min(STATUS_INTERVAL));
    let mut tick = tokio::time::interval(every);
    let mut last = String::new();
    loop {
        tick.tick().await;
        let status = status_line(&state.borrow());
        let mut msg = String::new();
        if watchdog.is_some() {
            msg.push_str("WATCHDOG=1\n");
        }
        if status != last {
            msg.push_str(&format!("STATUS={status}\n"));
            last = status;
        }
        if !msg.is_empty() {
            n.send(msg.trim_end());
        }
    }
}

/// How often the `STATUS=` line is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Open breakers move to half-open when their time is up.
async fn breaker_loop(state: Rc<RefCell<ControlState>>) {
    let mut tick = tokio::time::interval(breakers::BREAKER_TICK);
    loop {
        tick.tick().await;
        let mut s = state.borrow_mut();
        for (id, delta) in s.breakers.tick(Instant::now()) {
            shards::info!(
                "circuit breaker of {} is half-open: probing",
                url_of(&s, id)
            );
            s.broadcast(delta);
        }
    }
}

fn url_of(s: &ControlState, id: WorkerId) -> String {
    s.registry
        .workers
        .iter()
        .find(|w| w.spec.id == id)
        .map_or_else(|| format!("#{id}"), |w| w.spec.url.clone())
}

/// How often workers' `/metrics` are scraped for load-aware policies.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

async fn scrape_loop(state: Rc<RefCell<ControlState>>, timeout: Duration) {
    let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
    loop {
        tick.tick().await;
        let targets: Vec<(WorkerId, SocketAddr, String, Option<u32>)> = state
            .borrow()
            .registry
            .workers
            .iter()
            .filter(|w| w.health.healthy)
            .map(|w| {
                (
                    w.spec.id,
                    w.spec.addr,
                    w.spec.authority.clone(),
                    w.spec.dp_rank,
                )
            })
            .collect();
        let mut tasks = Vec::new();
        for (id, addr, authority, rank) in targets {
            // DP ranks share one server (and one /metrics): count it on rank 0 only.
            if rank.unwrap_or(0) != 0 {
                continue;
            }
            tasks.push(tokio::task::spawn_local(async move {
                (id, scrape::scrape(addr, &authority, timeout).await)
            }));
        }
        for t in tasks {
            if let Ok((id, found)) = t.await {
                let mut s = state.borrow_mut();
                match found {
                    Some(load) => {
                        if s.scraped.insert(id, load) != Some(load) {
                            s.loads_dirty = true;
                        }
                    }
                    None => {
                        s.scraped.remove(&id);
                    }
                }
            }
        }
    }
}

/// Periodic LRU eviction of the shards' cache_aware trees, by delta.
async fn eviction_loop(state: Rc<RefCell<ControlState>>, every: Duration, max: usize) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        state.borrow().broadcast(Delta::CacheEvict { max });
    }
}

fn on_report(state: &Rc<RefCell<ControlState>>, report: Report) {
    match report {
        Report::CacheInserts { shard, inserts } => {
            let batch = std::sync::Arc::new(inserts);
            let s = state.borrow();
            for (i, link) in s.links.iter().enumerate() {
                if i != shard {
                    link.send(Delta::CacheInserts(batch.clone()));
                }
            }
        }
        Report::Loads { shard, loads } => {
            let mut s = state.borrow_mut();
            s.metrics.update_loads(shard, loads);
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
        Report::WorkerUnreachable { id, .. } => {
            // Seen in traffic: confirm with one probe now rather than at the next
            // interval; a refused connection takes the worker out at once.
            let target = {
                let s = state.borrow();
                s.registry
                    .workers
                    .iter()
                    .find(|w| w.spec.id == id && w.health.healthy)
                    .map(|w| {
                        (
                            w.base_url.clone(),
                            w.spec.addr,
                            w.spec.authority.clone(),
                            s.probe.clone(),
                        )
                    })
            };
            if let Some((base, addr, authority, cfg)) = target {
                let state = state.clone();
                tokio::task::spawn_local(async move {
                    if let Err(why) = health::probe(addr, &authority, &cfg).await {
                        let mut s = state.borrow_mut();
                        let mut was_healthy = false;
                        for w in s.registry.of_base(&base) {
                            was_healthy |= w.health.force_unhealthy();
                        }
                        if was_healthy {
                            shards::warn!("worker {base} is unreachable ({why}): out of rotation");
                            s.set_health(&base, false);
                        }
                    }
                });
            }
        }
        Report::Outcome { id, success, .. } => {
            let mut s = state.borrow_mut();
            let before = s.breakers.state(id);
            if let Some(delta) = s.breakers.record(id, success, Instant::now()) {
                let after = s.breakers.state(id);
                if after != before {
                    let url = url_of(&s, id);
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

/// A minimal HTTP/1.1 server for `GET /metrics` (Prometheus scrapes; nothing else).
async fn serve_metrics(state: Rc<RefCell<ControlState>>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::task::spawn_local(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            let head_end = loop {
                let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await
                else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                if buf.len() > 16 * 1024 {
                    return;
                }
            };
            let line = String::from_utf8_lossy(&buf[..head_end])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let (status, ctype, body) = if line.starts_with("GET /metrics") {
                let s = state.borrow();
                (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    s.metrics.render(
                        &s.registry,
                        s.policy,
                        &s.breakers,
                        [s.discovery_updates, s.discovery_added, s.discovery_removed],
                    ),
                )
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "only /metrics is served here\n".to_string(),
                )
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        });
    }
}
