//! Prometheus exposition: the shards' counters summed, plus what the control core
//! knows (health, load). Served as text format 0.0.4 on
//! `--prometheus-host:--prometheus-port/metrics`.

use super::breakers::Breakers;
use super::exposition::{by_route, count_of, family, histograms, Sample};
use super::pd_metrics::{pd_families, pd_gauges, pd_summaries};
use super::registry::Registry;
use super::registry::WorkerEntry;
use super::summary_window::{SummarySums, SummaryWindow};
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use shards::messages::{WorkerId, WorkerInFlight};
use shards::metrics::{ShardMetrics, METHODS, ROUTES};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// The last copy of each shard's counters and in-flight counts.
#[derive(Default)]
pub struct Aggregator {
    shards: HashMap<usize, Box<ShardMetrics>>,
    /// Per shard, what is in flight per worker (fresher than `shards`: 100 ms).
    loads: HashMap<usize, Vec<WorkerInFlight>>,
    /// Per shard, the requests its policy sent each worker so far (also 100 ms): the
    /// one source of `policy_decisions_total` and of the sole-sender check.
    sent: HashMap<usize, Vec<(WorkerId, u64)>>,
    /// Copies of the summaries' sums, for their recent quantiles.
    window: SummaryWindow,
}

impl Aggregator {
    pub fn update(&mut self, shard: usize, m: Box<ShardMetrics>) {
        // A shard's first counters stand in for its load until it reports one.
        self.loads.entry(shard).or_insert_with(|| {
            let in_flight = m.in_flight.iter();
            in_flight
                .map(|(k, v)| WorkerInFlight {
                    worker: *k,
                    requests: *v,
                    prefill_tokens: 0,
                })
                .collect()
        });
        self.shards.insert(shard, m);
        let now = Instant::now();
        if self.window.due(now) {
            let sums = SummarySums::of(self.shards.values().map(|m| &**m));
            self.window.keep(now, sums);
        }
    }

    /// A shard's `Report::Loads`.
    pub fn update_loads(
        &mut self,
        shard: usize,
        loads: Vec<WorkerInFlight>,
        sent: Vec<(WorkerId, u64)>,
    ) {
        self.sent.insert(shard, sent);
        self.loads.insert(shard, loads);
    }

    /// Requests in flight to each worker, summed over shards.
    pub fn load(&self, id: WorkerId) -> u64 {
        self.sum_of(id, |l| l.requests)
    }

    /// Prompt tokens each worker has yet to start on for this router, summed over shards.
    pub fn prefill_tokens(&self, id: WorkerId) -> u64 {
        self.sum_of(id, |l| l.prefill_tokens)
    }

    fn sum_of(&self, id: WorkerId, f: impl Fn(&WorkerInFlight) -> u32) -> u64 {
        let of_worker = self.loads.values().flatten().filter(|l| l.worker == id);
        of_worker.map(|l| u64::from(f(l))).sum()
    }

    /// Per worker, what every shard but `shard` has in flight.
    pub fn loads_excluding(&self, shard: usize) -> Vec<WorkerInFlight> {
        let mut sum: BTreeMap<WorkerId, WorkerInFlight> = BTreeMap::new();
        for (s, loads) in &self.loads {
            if *s != shard {
                for l in loads {
                    let e = sum.entry(l.worker).or_insert(WorkerInFlight {
                        worker: l.worker,
                        ..Default::default()
                    });
                    e.requests += l.requests;
                    e.prefill_tokens = e.prefill_tokens.saturating_add(l.prefill_tokens);
                }
            }
        }
        let busy = |l: &WorkerInFlight| l.requests > 0 || l.prefill_tokens > 0;
        sum.into_values().filter(busy).collect()
    }

    /// Requests the policy sent to `id`, summed over shards (as of their last load
    /// reports, at most 100 ms old).
    pub fn decisions(&self, id: WorkerId) -> u64 {
        let of_worker = self.sent.values().flatten().filter(|(w, _)| *w == id);
        of_worker.map(|(_, n)| n).sum()
    }

    pub fn processed(&self, id: WorkerId) -> u64 {
        self.shards
            .values()
            .map(|m| m.processed.get(&id).copied().unwrap_or(0))
            .sum()
    }

    /// The exposition text.
    pub fn render(&self, view: &ControlView<'_>) -> String {
        let mut total = ShardMetrics::default();
        for m in self.shards.values() {
            total.merge(m);
        }
        let mut families = request_families(&total);
        families.extend(worker_families(&total, self, view));
        let sums = SummarySums::of([&total]);
        let recent = self.window.recent(Instant::now(), &sums);
        families.extend(pd_families(&total, view.registry));
        families.extend(pd_summaries(&sums, &recent, view.kv_stage));
        let (load, prefill_tokens) = (|id| self.load(id), |id| self.prefill_tokens(id));
        families.extend(pd_gauges(&total, view.registry, &load, &prefill_tokens));
        families.extend(breaker_families(&total, view));
        families.extend(control_families(&total, view));
        families.extend(super::kv_events::metrics::ingestion_families(view.kv));
        families.retain(|f| !f.get_metric().is_empty());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding of well-formed families");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// What the control core knows beside the shards' counters.
pub struct ControlView<'a> {
    pub registry: &'a Registry,
    pub policy: &'a str,
    pub breakers: &'a Breakers,
    /// Discovery updates, workers added, workers removed.
    pub discovery: [u64; 3],
    /// Worker list file reloads: applied, refused.
    pub reloads: [u64; 2],
    /// KV event ingestion (kv_aware).
    pub kv: &'a super::kv_events::stats::KvStats,
    /// The pool kv_aware prices by blocks, if any.
    pub kv_stage: Option<shards::messages::WorkerRole>,
    /// Whether the workers' counters say this router sends all of their requests
    /// (None while they have said too little).
    pub sole_sender: Option<bool>,
}

/// One sample per registered worker.
fn per_worker(registry: &Registry, f: impl Fn(&WorkerEntry) -> f64) -> Vec<Sample<'static>> {
    registry
        .workers
        .iter()
        .map(|w| (vec![("worker", w.spec.url.clone())], f(w)))
        .collect()
}

fn request_families(total: &ShardMetrics) -> Vec<MetricFamily> {
    let mut families = Vec::new();
    families.push(family(
        "vllm_router_requests_total",
        "Requests received, by route.",
        MetricType::COUNTER,
        by_route(&total.requests),
    ));
    families.push(histograms(
        "vllm_router_request_duration_seconds",
        "Time from request head to the end of the answer, by route.",
        (0..ROUTES.len())
            .filter(|&r| total.duration[r].count > 0)
            .map(|r| (ROUTES[r], &total.duration[r])),
    ));
    families.push(histograms(
        "vllm_router_time_to_first_byte_seconds",
        "Time from request head to the first answer body byte sent to the client (time to first token for streams), by route.",
        (0..ROUTES.len()).filter(|&r| total.ttfb[r].count > 0).map(|r| (ROUTES[r], &total.ttfb[r])),
    ));
    let errors: BTreeMap<_, _> = total.errors.iter().collect();
    families.push(family(
        "vllm_router_request_errors_total",
        "Requests the router answered with an error or could not finish, by route and error type.",
        MetricType::COUNTER,
        errors
            .into_iter()
            .map(|((r, e), v)| {
                (
                    vec![
                        ("route", ROUTES[*r].to_string()),
                        ("error_type", e.to_string()),
                    ],
                    *v as f64,
                )
            })
            .collect(),
    ));
    let http: BTreeMap<_, _> = total.http.iter().collect();
    families.push(family(
        "vllm_router_http_requests_total",
        "Answers sent, by route, method and status code.",
        MetricType::COUNTER,
        http.into_iter()
            .map(|((r, m, s), v)| {
                (
                    vec![
                        ("route", ROUTES[*r].to_string()),
                        ("method", METHODS[*m].to_string()),
                        ("status_code", s.to_string()),
                    ],
                    *v as f64,
                )
            })
            .collect(),
    ));
    families.push(family(
        "vllm_router_retries_total",
        "Attempts after the first, by route.",
        MetricType::COUNTER,
        by_route(&total.retries),
    ));
    families.push(family(
        "vllm_router_retries_exhausted_total",
        "Requests whose every attempt failed, by route.",
        MetricType::COUNTER,
        by_route(&total.retries_exhausted),
    ));
    families
}

fn worker_families(
    total: &ShardMetrics,
    loads: &Aggregator,
    view: &ControlView<'_>,
) -> Vec<MetricFamily> {
    let (registry, policy) = (view.registry, view.policy);
    let mut families = Vec::new();
    families.push(family(
        "vllm_router_processed_requests_total",
        "Requests sent to each worker that got an answer.",
        MetricType::COUNTER,
        per_worker(registry, |w| count_of(&total.processed, &w.spec.id) as f64),
    ));
    families.push(family(
        "vllm_router_policy_decisions_total",
        "Times the policy chose each worker.",
        MetricType::COUNTER,
        registry
            .workers
            .iter()
            .map(|w| {
                let labels = vec![
                    ("policy", policy.to_string()),
                    ("worker", w.spec.url.clone()),
                ];
                (labels, loads.decisions(w.spec.id) as f64)
            })
            .collect(),
    ));
    if policy == "sticky_least_loaded" {
        families.push(family(
            "vllm_router_sessions_shared_total",
            "sticky_least_loaded sessions one shard learned from the others (each shard counts what it applied).",
            MetricType::COUNTER,
            vec![(vec![], total.shared_inserts as f64)],
        ));
    }
    if let Some(stage) = view.kv_stage {
        families.extend(super::kv_events::metrics::decision_families(
            stage,
            total.kv_lookups,
            total.kv_inputs,
            &total.kv_prepare,
            &total.kv_matched,
        ));
        families.push(family(
            "vllm_router_kv_provisional_shared_total",
            "kv_aware provisional copies (a routed request's blocks, before the worker's events) one shard learned from the others (each shard counts what it applied).",
            MetricType::COUNTER,
            vec![(vec![], total.shared_provisional as f64)],
        ));
    }
    if policy == "cache_aware" {
        if let Some(sole) = view.sole_sender {
            families.push(family(
                "vllm_router_sole_sender",
                "1 while the workers' own request counters say this router sends all of their \
                 requests (no other replica does): cache_aware's prompt homes then follow its \
                 traffic. Absent until the workers have taken 32 requests in 10 s.",
                MetricType::GAUGE,
                vec![(vec![], f64::from(u8::from(sole)))],
            ));
        }
        families.push(family(
            "vllm_router_cache_hits_total",
            "cache_aware decisions that followed a cached prefix.",
            MetricType::COUNTER,
            vec![(vec![], total.cache_hits as f64)],
        ));
        families.push(family(
            "vllm_router_cache_misses_total",
            "cache_aware decisions that went to the least loaded worker.",
            MetricType::COUNTER,
            vec![(vec![], total.cache_misses as f64)],
        ));
        families.push(family(
            "vllm_router_cache_shared_inserts_total",
            "cache_aware decisions one shard learned from the others (each shard counts what it applied).",
            MetricType::COUNTER,
            vec![(vec![], total.shared_inserts as f64)],
        ));
        families.push(family(
            "vllm_router_tree_size",
            "Bytes of request text the routing tree holds per worker (largest shard).",
            MetricType::GAUGE,
            per_worker(registry, |w| {
                total.tree_sizes.get(&w.spec.id).copied().unwrap_or(0) as f64
            }),
        ));
    }
    families.push(family(
        "vllm_router_worker_load",
        "Requests in flight from this router to each worker, all shards.",
        MetricType::GAUGE,
        per_worker(registry, |w| loads.load(w.spec.id) as f64),
    ));
    families.push(family(
        "vllm_router_worker_health",
        "1 when the worker is healthy, else 0.",
        MetricType::GAUGE,
        per_worker(registry, |w| if w.health.healthy { 1.0 } else { 0.0 }),
    ));
    families
}

fn breaker_families(total: &ShardMetrics, view: &ControlView<'_>) -> Vec<MetricFamily> {
    let (registry, breakers) = (view.registry, view.breakers);
    let mut families = Vec::new();
    families.push(family(
        "vllm_router_cb_state",
        "Circuit breaker state per worker: 0 closed, 1 open, 2 half-open.",
        MetricType::GAUGE,
        per_worker(registry, |w| breakers.state(w.spec.id) as u8 as f64),
    ));
    let url = |id: WorkerId| registry.get(id).map(|w| w.spec.url.clone());
    families.push(family(
        "vllm_router_cb_state_transitions_total",
        "Circuit breaker state changes per worker.",
        MetricType::COUNTER,
        breakers
            .transitions()
            .filter_map(|((id, from, to), n)| {
                let labels = vec![
                    ("worker", url(*id)?),
                    ("from", from.to_string()),
                    ("to", to.to_string()),
                ];
                Some((labels, *n as f64))
            })
            .collect(),
    ));
    let mut outcomes = Vec::new();
    for w in &registry.workers {
        let (ok, failed) = total.outcomes.get(&w.spec.id).copied().unwrap_or((0, 0));
        for (outcome, n) in [("success", ok), ("failure", failed)] {
            let labels = vec![
                ("worker", w.spec.url.clone()),
                ("outcome", outcome.to_string()),
            ];
            outcomes.push((labels, n as f64));
        }
    }
    families.push(family(
        "vllm_router_cb_outcomes_total",
        "Attempts counted by the circuit breakers, per worker and outcome (docs/resilience.md).",
        MetricType::COUNTER,
        outcomes,
    ));
    families
}

fn control_families(total: &ShardMetrics, view: &ControlView<'_>) -> Vec<MetricFamily> {
    let mut families = Vec::new();
    for (name, help, n) in [
        (
            "vllm_router_discovery_updates_total",
            "Workers added or removed by discovery (Kubernetes or vLLM ZMQ).",
            view.discovery[0],
        ),
        (
            "vllm_router_discovery_workers_added_total",
            "Workers discovery added.",
            view.discovery[1],
        ),
        (
            "vllm_router_discovery_workers_removed_total",
            "Workers discovery removed (deleted, not ready, expired, IP changed).",
            view.discovery[2],
        ),
    ] {
        families.push(family(
            name,
            help,
            MetricType::COUNTER,
            vec![(vec![], n as f64)],
        ));
    }
    families.push(family(
        "vllm_router_active_workers",
        "Workers currently healthy.",
        MetricType::GAUGE,
        vec![(vec![], view.registry.healthy_count() as f64)],
    ));
    families.push(family(
        "vllm_router_config_reloads_total",
        "Worker list file reloads (SIGHUP), by result: applied, or refused as invalid.",
        MetricType::COUNTER,
        [("applied", view.reloads[0]), ("refused", view.reloads[1])]
            .into_iter()
            .map(|(result, n)| (vec![("result", result.to_string())], n as f64))
            .collect(),
    ));
    families.push(family(
        "vllm_router_queued_requests",
        "Requests waiting in the admission queue, all shards (sampled once a second).",
        MetricType::GAUGE,
        vec![(vec![], total.queued as f64)],
    ));
    families.push(family(
        "vllm_router_buffered_body_bytes",
        "Bytes of request bodies buffered, all shards (sampled once a second); each shard \
         may hold --body-buffer-budget-bytes.",
        MetricType::GAUGE,
        vec![(vec![], total.buffered_body_bytes as f64)],
    ));
    families.push(family(
        "vllm_router_idle_client_connections",
        "Client keep-alive connections idle for more than a second, held as a bare socket \
         without a task, all shards (sampled once a second).",
        MetricType::GAUGE,
        vec![(vec![], total.dormant_connections as f64)],
    ));
    families
}
