//! The P/D families of `/metrics`: requests and legs counted by the shards, and
//! 0.1.17's gauges of what is in flight per prefill and decode worker.

use super::exposition::{by_route, count_of, family, histograms, summary, Sample};
use super::registry::Registry;
use super::summary_window::SummarySums;
use prometheus::proto::{MetricFamily, MetricType};
use shards::messages::{WorkerId, WorkerRole};
use shards::metrics::{ShardMetrics, PD_PREFILL_FALLBACKS, ROUTES};
use std::collections::{BTreeMap, HashMap};

pub fn pd_families(total: &ShardMetrics, registry: &Registry) -> Vec<MetricFamily> {
    let pd_workers = |counts: &HashMap<WorkerId, u64>| {
        registry
            .workers
            .iter()
            .filter_map(|w| {
                let n = count_of(counts, &w.spec.id);
                (n > 0).then(|| (vec![("worker", w.spec.url.clone())], n as f64))
            })
            .collect::<Vec<_>>()
    };
    let mut families = Vec::new();
    families.push(family(
        "vllm_router_pd_requests_total",
        "Prefill/decode requests, by route.",
        MetricType::COUNTER,
        by_route(&total.pd_requests),
    ));
    families.push(family(
        "vllm_router_pd_prefill_requests_total",
        "Prefill legs sent to each worker (retries included).",
        MetricType::COUNTER,
        pd_workers(&total.pd_prefill),
    ));
    families.push(family(
        "vllm_router_pd_decode_requests_total",
        "Decode legs sent to each worker.",
        MetricType::COUNTER,
        pd_workers(&total.pd_decode),
    ));
    let pd_errors: BTreeMap<_, _> = total.pd_errors.iter().collect();
    families.push(family(
        "vllm_router_pd_errors_total",
        "Prefill/decode failures, by kind.",
        MetricType::COUNTER,
        pd_errors
            .into_iter()
            .map(|(k, v)| (vec![("error_type", k.to_string())], *v as f64))
            .collect(),
    ));
    let durations = (0..ROUTES.len())
        .filter(|&r| total.pd_duration[r].count > 0)
        .map(|r| (ROUTES[r], &total.pd_duration[r]));
    families.push(histograms(
        "vllm_router_pd_request_duration_seconds",
        "P/D requests by route, request head to end of answer (streams: to the last event).",
        durations,
    ));
    let decisions = (PD_PREFILL_FALLBACKS.iter().zip(total.pd_prefill_decisions))
        .filter(|(_, n)| *n > 0)
        .map(|(f, n)| (vec![("fallback", f.to_string())], n as f64));
    families.push(family(
        "vllm_router_pd_prefill_decisions_total",
        "P/D requests whose prefill worker kv_aware chose: priced (fallback none) or by load for want of the prompt's tokens (missing_tokens).",
        MetricType::COUNTER,
        decisions.collect(),
    ));
    if total.pd_prefill_decisions.iter().any(|n| *n > 0) {
        families.push(family(
            "vllm_router_pd_credited_prefix_tokens_total",
            "Prompt tokens of P/D requests the prefill worker kv_aware chose held already (credited by its cost).",
            MetricType::COUNTER,
            vec![(Vec::new(), total.pd_credited_tokens as f64)],
        ));
    }
    for (name, help, h) in [
        (
            "vllm_router_pd_prefill_duration_seconds",
            "Time of each prefill leg (one attempt), request sent to answer read.",
            &total.pd_prefill_duration,
        ),
        (
            "vllm_router_pd_decode_duration_seconds",
            "Time of each decode leg, retries included, to the end of the answer.",
            &total.pd_decode_duration,
        ),
    ] {
        if h.count > 0 {
            let mut f = histograms(name, help, std::iter::once(("all", h)));
            for m in f.mut_metric().iter_mut() {
                m.set_label(Vec::new());
            }
            families.push(f);
        }
    }
    families
}

/// A gauge's value for one worker.
pub type PerWorker<'a> = dyn Fn(WorkerId) -> u64 + 'a;

/// 0.1.17's P/D gauges, per worker of the pool they are about (none outside P/D mode:
/// there are no prefill or decode workers then), with 0.1.17's `rank="aggregate"`
/// label: the worker's data-parallel ranks together.
pub fn pd_gauges(
    total: &ShardMetrics,
    registry: &Registry,
    load: &PerWorker,
    prefill_tokens: &PerWorker,
) -> Vec<MetricFamily> {
    let pool = |role: WorkerRole, value: &PerWorker| -> Vec<Sample> {
        (registry.workers.iter())
            .filter(|w| w.spec.role == role)
            .map(|w| {
                (
                    vec![
                        ("worker", w.spec.url.clone()),
                        ("rank", "aggregate".to_string()),
                    ],
                    value(w.spec.id) as f64,
                )
            })
            .collect()
    };
    let mut families = Vec::new();
    let gauges: [(&str, &str, WorkerRole, &PerWorker); 5] = [
        (
            "vllm_router_pd_active_prefill_tokens",
            "Prompt tokens of this router's prefill legs each prefill worker has not answered yet, as kv_aware priced them (what is cached not counted).",
            WorkerRole::Prefill,
            prefill_tokens,
        ),
        (
            "vllm_router_pd_unknown_prefill_requests",
            "Prefill legs in flight to each prefill worker, not answered yet, whose prompt tokens the router did not price (another prefill policy, or no tokens).",
            WorkerRole::Prefill,
            &|id| u64::from(total.pd_unpriced.get(&id).copied().unwrap_or(0)),
        ),
        (
            "vllm_router_pd_prefill_occupancy",
            "Prefill legs in flight to each prefill worker, not answered yet, priced or not.",
            WorkerRole::Prefill,
            load,
        ),
        (
            "vllm_router_pd_pending_decode_requests",
            "Requests whose decode leg will go to each decode worker, waiting for their prefill.",
            WorkerRole::Decode,
            &|id| u64::from(total.pd_pending_decodes.get(&id).copied().unwrap_or(0)),
        ),
        (
            "vllm_router_pd_active_decode_requests",
            "Decode legs in flight to each decode worker.",
            WorkerRole::Decode,
            load,
        ),
    ];
    for (name, help, role, value) in gauges {
        families.push(family(name, help, MetricType::GAUGE, pool(role, value)));
    }
    families
}

/// 0.1.17's P/D summaries: quantiles over the last 40-60 s (`recent`), count and sum
/// over the router's life (`all`). Each once it has an observation.
pub fn pd_summaries(
    all: &SummarySums,
    recent: &SummarySums,
    kv_stage: Option<WorkerRole>,
) -> Vec<MetricFamily> {
    let mut rows = vec![
        (
            "vllm_router_pd_decode_pending_seconds",
            "How long each decode leg waited for its request's prefill (decode worker chosen to decode leg sent).",
            &all.decode_pending,
            &recent.decode_pending,
        ),
        (
            "vllm_router_pd_new_prefill_tokens",
            "Prompt tokens the prefill worker kv_aware chose had to prefill, per P/D request it priced.",
            &all.new_prefill_tokens,
            &recent.new_prefill_tokens,
        ),
    ];
    if kv_stage == Some(WorkerRole::Prefill) {
        rows.push((
            "vllm_router_pd_kv_prepare_seconds",
            "Time to a P/D request's prompt tokens for pricing its prefill, on the router or by a worker's /tokenize (by source: vllm_router_kv_prepare_seconds).",
            &all.prepare,
            &recent.prepare,
        ));
    }
    (rows.into_iter())
        .filter(|(_, _, all, _)| all.count > 0)
        .map(|(name, help, all, recent)| summary(name, help, recent, all))
        .collect()
}
