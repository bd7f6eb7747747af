//! kv_aware's part of the command line, checked with 0.1.17's start-up messages
//! (`../shared/REFERENCE-0.1.17.md` §0): where the KV events come from, and about
//! which pool (the regular one, or the prefill pool in P/D mode).

use crate::cli::Cli;
use crate::control::kv_events::sources::parse_flag;
use crate::control::kv_events::KvEventsConfig;
use shards::messages::WorkerRole;
use shards::policy::PolicyKind;
use std::collections::HashMap;

/// `--pd-kv-events` sources have no block-size flag: 0.1.17 fixes it.
const PD_BLOCK_SIZE: u32 = 16;

/// The ingestion settings when the policy that routes by blocks (the regular pool's,
/// or in P/D mode the prefill pool's) is kv_aware; errors as 0.1.17 words them.
pub fn kv_events(
    cli: &Cli,
    policy: PolicyKind,
    worker_urls: &[String],
    prefill_urls: &[String],
) -> Result<Option<KvEventsConfig>, String> {
    let p = &cli.published;
    if !p.kv_event_source.is_empty() && p.kv_event_model.is_none() {
        return Err("static KV event sources require worker URLs and model identity".into());
    }
    if !p.kv_event_source.is_empty() && policy != PolicyKind::KvAware {
        return Err("--kv-event-source requires the kv_aware policy".into());
    }
    if cli.vllm_pd_disaggregation || !p.pd_kv_events.is_empty() {
        return pd_kv_events(cli, policy, prefill_urls);
    }
    let mut static_sources = HashMap::new();
    for arg in &p.kv_event_source {
        let (url, endpoints) = parse_flag(arg)?;
        if !worker_urls.iter().any(|w| w.trim_end_matches('/') == url) {
            return Err(format!(
                "static KV event source worker '{url}' is not in --worker-urls"
            ));
        }
        static_sources.insert(url, endpoints);
    }
    let mut replay_sources = HashMap::new();
    for arg in &p.kv_event_replay_source {
        let (url, endpoints) = parse_flag(arg)?;
        if !static_sources.contains_key(&url) {
            return Err("--kv-event-replay-source requires a matching --kv-event-source".into());
        }
        replay_sources.insert(url, endpoints);
    }
    if policy != PolicyKind::KvAware {
        return Ok(None);
    }
    Ok(Some(KvEventsConfig {
        static_sources,
        replay_sources,
        block_size: p.kv_event_block_size.max(1),
        api_key: cli.api_key.clone(),
        role: WorkerRole::Regular,
    }))
}

/// P/D mode: the prefill workers' events, when the prefill policy is kv_aware.
fn pd_kv_events(
    cli: &Cli,
    policy: PolicyKind,
    prefill_urls: &[String],
) -> Result<Option<KvEventsConfig>, String> {
    let p = &cli.published;
    if !p.kv_event_source.is_empty() {
        return Err("static --kv-event-source is only supported in regular mode".into());
    }
    if !cli.vllm_pd_disaggregation {
        return Err("pd_kv_event_sources requires vllm_prefill_decode mode".into());
    }
    let prefill_policy = cli
        .prefill_policy
        .as_deref()
        .and_then(PolicyKind::parse)
        .unwrap_or(policy);
    if prefill_policy != PolicyKind::KvAware {
        if !p.pd_kv_events.is_empty() {
            return Err(
                "pd_kv_event_sources requires a kv_aware prefill policy (other \
                        policies never start KV event subscribers)"
                    .into(),
            );
        }
        return Ok(None);
    }
    let mut static_sources = HashMap::new();
    for arg in &p.pd_kv_events {
        let (url, endpoints) = parse_flag(arg)?;
        if !prefill_urls.iter().any(|w| w.trim_end_matches('/') == url) {
            return Err(format!(
                "--pd-kv-events worker '{url}' is not a --prefill worker"
            ));
        }
        static_sources.insert(url, endpoints);
    }
    Ok(Some(KvEventsConfig {
        static_sources,
        replay_sources: HashMap::new(),
        block_size: PD_BLOCK_SIZE,
        api_key: cli.api_key.clone(),
        role: WorkerRole::Prefill,
    }))
}
