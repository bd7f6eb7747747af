//! kv_aware's families for `/metrics`: what ingestion counted per worker, and how the
//! shards' decisions went (0.1.17's metric names).

use super::stats::{KvStats, KvWorkerStats};
use crate::control::exposition::{family, histograms, labels, ratio_histogram, Sample};
use prometheus::proto::{MetricFamily, MetricType};
use shards::messages::WorkerRole;
use shards::metrics::{Histogram, RatioHistogram};

/// The shards' times to a request's tokens, by source (`tokenizer`: on the router,
/// `tokenize`: a worker's), as histogram `name`.
pub fn prepare_times(name: &str, help: &str, prepare: &[Histogram; 2]) -> MetricFamily {
    let sources = ["tokenizer", "tokenize"];
    let mut times = histograms(name, help, sources.into_iter().zip(prepare));
    for (m, source) in times.mut_metric().iter_mut().zip(sources) {
        m.set_label(labels(vec![("source", source.to_string())]));
    }
    times
}

/// Decisions by stage and outcome and lookups by result, from the shards' counts per
/// pool (credited, not credited, without tokens, by session), and where the tokens
/// came from. `stage`'s rows are always there; another pool's once it has counts (the
/// decode pool's sessions in P/D mode).
pub fn decision_families(
    stage: WorkerRole,
    lookups: [[u64; 4]; 3],
    inputs: [u64; 4],
    prepare: &[Histogram; 2],
    matched: &RatioHistogram,
) -> Vec<MetricFamily> {
    let mut families = Vec::new();
    families.push(ratio_histogram(
        "vllm_router_kv_matched_prefix_ratio",
        "kv_aware: the fraction of each priced prompt's tokens its chosen worker had cached (credited as the cost model credits them).",
        matched,
    ));
    families.push(prepare_times(
        "vllm_router_kv_prepare_seconds",
        "Time to a request's prompt tokens for kv_aware, by source: tokenizer (on the router, --tokenizer-path) or tokenize (a worker's /tokenize); cached ones not counted.",
        prepare,
    ));
    families.push(family(
        "vllm_router_kv_routing_inputs_total",
        "Where kv_aware got a request's prompt tokens: tokenizer (the model's tokenizer on the router, --tokenizer-path), tokenize (one worker's /tokenize), cache (the shard had them), preparation_rejected (no worker could say; routed by load).",
        MetricType::COUNTER,
        [
            ("tokenizer", inputs[3]),
            ("tokenize", inputs[0]),
            ("cache", inputs[1]),
            ("preparation_rejected", inputs[2]),
        ]
            .into_iter()
            .map(|(r, n)| {
                let labels = vec![("transport", "http".to_string()), ("result", r.to_string())];
                (labels, n as f64)
            })
            .collect(),
    ));
    let mut decisions = Vec::new();
    for role in WorkerRole::ALL {
        let [hit, miss, missing, sticky] = lookups[role as usize];
        if role != stage && hit + miss + missing + sticky == 0 {
            continue;
        }
        let outcomes = [
            ("prefix_cost", hit + miss),
            ("missing_tokens", missing),
            ("sticky_hit", sticky),
        ];
        for (o, n) in outcomes {
            let labels = vec![
                ("policy", "kv_aware".to_string()),
                ("stage", role.name().to_string()),
                ("outcome", o.to_string()),
            ];
            decisions.push((labels, n as f64));
        }
    }
    families.push(family(
        "vllm_router_prefix_routing_decisions_total",
        "kv_aware decisions by pool and outcome (0.1.17's names): prefix_cost when the prompt's tokens were known, missing_tokens when it went by load alone, sticky_hit when its session was bound to a worker.",
        MetricType::COUNTER,
        decisions,
    ));
    let [hit, miss, missing, sticky] =
        [0, 1, 2, 3].map(|i| lookups.iter().map(|l| l[i]).sum::<u64>());
    families.push(family(
        "vllm_router_kv_placement_lookups_total",
        "KV-aware placement lookups: hit (a worker holds a prefix of the prompt), miss, or why none was made: missing_tokens, sticky_hit (the session's worker).",
        MetricType::COUNTER,
        [("hit", hit), ("miss", miss), ("missing_tokens", missing), ("sticky_hit", sticky)]
            .into_iter()
            .map(|(r, n)| (vec![("result", r.to_string())], n as f64))
            .collect(),
    ));
    families
}

/// KV event ingestion per worker (kv_aware): nothing when no source was subscribed.
pub fn ingestion_families(kv: &KvStats) -> Vec<MetricFamily> {
    if kv.workers.is_empty() {
        return Vec::new();
    }
    let per = |f: &dyn Fn(&KvWorkerStats) -> u64| -> Vec<Sample<'static>> {
        (kv.workers.iter())
            .map(|(w, s)| (vec![("worker", w.clone())], f(s) as f64))
            .collect()
    };
    let mut families = Vec::new();
    for (name, help, kind, samples) in [
        (
            "vllm_router_kv_events_received_total",
            "KV event messages received from the worker's publishers (live and replayed).",
            MetricType::COUNTER,
            per(&|s| s.received),
        ),
        (
            "vllm_router_kv_events_applied_total",
            "KV events applied to the block index.",
            MetricType::COUNTER,
            per(&|s| s.applied),
        ),
        (
            "vllm_router_kv_sequence_gaps_total",
            "Sequence gaps in a worker's KV event stream.",
            MetricType::COUNTER,
            per(&|s| s.gaps),
        ),
        (
            "vllm_router_kv_replays_total",
            "Replays asked of a worker's replay endpoint after a gap.",
            MetricType::COUNTER,
            per(&|s| s.replays),
        ),
        (
            "vllm_router_kv_publisher_restarts_total",
            "KV event publishers seen starting over (the worker's blocks were dropped).",
            MetricType::COUNTER,
            per(&|s| s.restarts),
        ),
        (
            "vllm_router_kv_index_blocks",
            "Blocks of the worker in the KV block index.",
            MetricType::GAUGE,
            per(&|s| s.blocks),
        ),
    ] {
        families.push(family(name, help, kind, samples));
    }
    let dropped = (kv.workers.iter())
        .flat_map(|(w, s)| {
            (s.dropped.iter()).map(move |(why, n)| {
                (
                    vec![("worker", w.clone()), ("reason", why.to_string())],
                    *n as f64,
                )
            })
        })
        .collect();
    families.push(family(
        "vllm_router_kv_events_dropped_total",
        "KV event messages or blocks not applied, per worker and reason.",
        MetricType::COUNTER,
        dropped,
    ));
    families
}
