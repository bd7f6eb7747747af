//! The P/D families of `/metrics`: requests and legs counted by the shards, and
//! 0.1.17's gauges of what is in flight per prefill and decode worker.

use super::exposition::{by_route, count_of, family, histograms, Sample};
use super::kv_events::metrics::prepare_times;
use super::registry::Registry;
use prometheus::proto::{MetricFamily, MetricType};
use shards::messages::{WorkerId, WorkerRole};
use shards::metrics::ShardMetrics;
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
    kv_stage: Option<WorkerRole>,
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
    if kv_stage == Some(WorkerRole::Prefill) {
        families.push(prepare_times(
            "vllm_router_pd_kv_prepare_seconds",
            "Time to a P/D request's prompt tokens for pricing its prefill, by source (as vllm_router_kv_prepare_seconds).",
            &total.kv_prepare,
        ));
    }
    families
}
