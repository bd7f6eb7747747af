//! kv_aware's part of the command line, checked with 0.1.17's start-up messages
//! (`../shared/REFERENCE-0.1.17.md` §0): where the KV events come from.

use crate::cli::Cli;
use crate::control::kv_events::sources::parse_flag;
use crate::control::kv_events::KvEventsConfig;
use shards::policy::PolicyKind;
use std::collections::HashMap;

/// The ingestion settings when the policy is kv_aware; errors as 0.1.17 words them.
pub fn kv_events(
    cli: &Cli,
    policy: PolicyKind,
    worker_urls: &[String],
) -> Result<Option<KvEventsConfig>, String> {
    let p = &cli.published;
    if !p.kv_event_source.is_empty() && p.kv_event_model.is_none() {
        return Err("static KV event sources require worker URLs and model identity".into());
    }
    if !p.kv_event_source.is_empty() && policy != PolicyKind::KvAware {
        return Err("--kv-event-source requires the kv_aware policy".into());
    }
    if !p.kv_event_source.is_empty() && cli.vllm_pd_disaggregation {
        return Err("static --kv-event-source is only supported in regular mode".into());
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
    }))
}
