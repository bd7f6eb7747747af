//! The command line turned into what each part runs with: the shards' `ShardConfig`
//! and the control core's `ControlConfig`, checked before anything starts.

use crate::cli::{self, Cli};
use crate::control::health::ProbeConfig;
use crate::control::{self, ControlConfig};
use shards::policy::PolicyKind;
use shards::ShardConfig;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// An admin call may include a health probe: it gets the probe's timeout plus this.
const ADMIN_MARGIN: Duration = Duration::from_secs(5);

/// Everything the command line configures.
pub struct Settings {
    pub shard: Arc<ShardConfig>,
    pub control: ControlConfig,
    /// The listen port when `--port 0` chose it: drop once the shards are bound.
    pub reserved: shards::Reserved,
}

impl Settings {
    /// Checks and translates the flags for `shard_count` shards.
    pub fn from_cli(cli: &Cli, shard_count: usize) -> Result<Settings, String> {
        // Port 0: one port for every shard, held until they are bound.
        let reserved = shards::reserve_port(resolve_listen(&cli.host, cli.port)?)?;
        let listen = reserved.addr;
        // The worker list file joins the command line's workers.
        let mut worker_urls = cli.worker_urls.clone();
        let file_urls = match &cli.worker_urls_file {
            Some(path) => control::reload::read_worker_file(path)?,
            None => Vec::new(),
        };
        for url in &file_urls {
            if !worker_urls.iter().any(|u| u.trim_end_matches('/') == url) {
                worker_urls.push(url.clone());
            }
        }
        // P/D pools.
        let prefill = cli::prefill_pairs(&cli.prefill)?;
        let pd = cli.vllm_pd_disaggregation;
        let discovery = cli.vllm_discovery_address.clone();
        if pd
            && discovery.is_none()
            && !cli.service_discovery
            && (prefill.is_empty() || cli.decode.is_empty())
        {
            return Err(
                "--vllm-pd-disaggregation needs at least one --prefill URL and one \
                        --decode URL, --vllm-discovery-address, or --service-discovery"
                    .into(),
            );
        }
        if !pd && discovery.is_some() {
            return Err("--vllm-discovery-address needs --vllm-pd-disaggregation".into());
        }
        if !pd && (cli.prefill_policy.is_some() || cli.decode_policy.is_some()) {
            return Err(
                "--prefill-policy and --decode-policy need --vllm-pd-disaggregation".into(),
            );
        }
        if !pd && (!prefill.is_empty() || !cli.decode.is_empty()) {
            return Err("--prefill and --decode need --vllm-pd-disaggregation".into());
        }
        let prefill_urls: Vec<String> = prefill.iter().map(|(u, _)| u.clone()).collect();
        let k8s = k8s_config(cli, pd)?;
        // A malformed URL is a configuration error: say so before binding anything.
        for url in worker_urls.iter().chain(&prefill_urls).chain(&cli.decode) {
            control::registry::parse_worker_url(url)?;
        }
        let policy = PolicyKind::parse(&cli.policy).expect("clap validated the policy");
        let request_id_headers = if cli.request_id_headers.is_empty() {
            shards::DEFAULT_REQUEST_ID_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            cli.request_id_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect()
        };
        let health_timeout = Duration::from_secs(cli.health_check_timeout_secs);
        let breaker = shards::breaker::BreakerConfig {
            enabled: !cli.disable_circuit_breaker,
            failure_threshold: cli.cb_failure_threshold.max(1),
            success_threshold: cli.cb_success_threshold.max(1),
            timeout: secs(cli.cb_timeout_duration_secs),
            window: secs(cli.cb_window_duration_secs),
        };
        let shard = Arc::new(ShardConfig {
            listen,
            max_payload_bytes: cli.max_payload_size,
            request_timeout: Duration::from_secs(cli.request_timeout_secs),
            connect_timeout: secs(cli.connect_timeout_secs),
            head_timeout: secs(cli.upstream_head_timeout_secs),
            stream_idle_timeout: secs(cli.stream_idle_timeout_secs),
            header_read_timeout: secs(cli.client_header_timeout_secs),
            keepalive_timeout: secs(cli.keepalive_timeout_secs),
            retry: shards::RetryConfig {
                max_attempts: if cli.disable_retries {
                    1
                } else {
                    cli.retry_max_retries.max(1)
                },
                initial_backoff: Duration::from_millis(cli.retry_initial_backoff_ms),
                max_backoff: Duration::from_millis(cli.retry_max_backoff_ms),
                multiplier: cli.retry_backoff_multiplier.max(1.0),
                jitter: cli.retry_jitter_factor.clamp(0.0, 1.0),
            },
            breaker: breaker.clone(),
            admission_slots: share(cli.max_concurrent_requests, shard_count),
            admission_queue: share(cli.queue_size, shard_count),
            queue_timeout: secs(cli.queue_timeout_secs),
            policy,
            pd: pd.then(|| {
                let inherit =
                    |p: &Option<String>| p.as_deref().and_then(PolicyKind::parse).unwrap_or(policy);
                shards::PdConfig {
                    prefill_policy: inherit(&cli.prefill_policy),
                    decode_policy: inherit(&cli.decode_policy),
                }
            }),
            policy_options: shards::policy::PolicyOptions {
                consistent_hash_load_factor: cli.consistent_hash_load_factor,
                cache_aware: shards::policy::CacheAwareConfig {
                    cache_threshold: cli.cache_threshold,
                    balance_abs_threshold: cli.balance_abs_threshold.min(u64::from(u32::MAX))
                        as u32,
                    balance_rel_threshold: cli.balance_rel_threshold,
                    max_tree_size: cli.max_tree_size as usize,
                },
            },
            api_key: cli.api_key.clone(),
            request_id_headers,
            admin_timeout: health_timeout + ADMIN_MARGIN,
        });
        let prometheus = resolve_listen(&cli.prometheus_host, cli.prometheus_port)?;
        let notifier = crate::notify::Notifier::from_env().map(Arc::new);
        let control_config = ControlConfig {
            worker_urls: worker_urls.clone(),
            prefill_urls,
            decode_urls: cli.decode.clone(),
            discovery_address: discovery,
            k8s,
            dp_size: cli.intra_node_data_parallel_size.max(1),
            probe: ProbeConfig {
                endpoint: cli.health_check_endpoint.clone(),
                timeout: health_timeout,
                api_key: cli.api_key.clone(),
            },
            health_interval: Duration::from_secs(cli.health_check_interval_secs.max(1)),
            success_threshold: cli.health_success_threshold,
            failure_threshold: cli.health_failure_threshold,
            startup_timeout: Duration::from_secs(cli.worker_startup_timeout_secs),
            startup_interval: Duration::from_secs(cli.worker_startup_check_interval.max(1)),
            prometheus,
            listen,
            shards: shard_count,
            policy,
            eviction_interval: Duration::from_secs(cli.eviction_interval_secs),
            max_tree_size: cli.max_tree_size as usize,
            breaker,
            worker_urls_file: cli.worker_urls_file.clone(),
            file_urls,
            notifier: notifier.clone(),
        };
        Ok(Settings {
            shard,
            control: control_config,
            reserved,
        })
    }
}

/// `--service-discovery` and its selectors, checked.
fn k8s_config(cli: &Cli, pd: bool) -> Result<Option<control::k8s_discovery::K8sConfig>, String> {
    use control::k8s_discovery::{K8sConfig, Watch};
    use shards::messages::WorkerRole;
    let given = !cli.selector.is_empty()
        || !cli.prefill_selector.is_empty()
        || !cli.decode_selector.is_empty()
        || cli.service_discovery_namespace.is_some();
    if !cli.service_discovery {
        if given {
            return Err("--selector, --prefill-selector, --decode-selector and \
                        --service-discovery-namespace need --service-discovery"
                .into());
        }
        return Ok(None);
    }
    for s in cli
        .selector
        .iter()
        .chain(&cli.prefill_selector)
        .chain(&cli.decode_selector)
    {
        let ok = s.split_once('=').is_some_and(|(k, _)| !k.is_empty());
        if !ok {
            return Err(format!("bad selector {s:?}: expected key=value"));
        }
    }
    let watches = if pd {
        if cli.prefill_selector.is_empty() || cli.decode_selector.is_empty() {
            return Err("--service-discovery with --vllm-pd-disaggregation needs \
                        --prefill-selector and --decode-selector"
                .into());
        }
        vec![
            Watch {
                role: WorkerRole::Prefill,
                selector: cli.prefill_selector.clone(),
            },
            Watch {
                role: WorkerRole::Decode,
                selector: cli.decode_selector.clone(),
            },
        ]
    } else {
        if cli.selector.is_empty() {
            return Err(
                "--service-discovery needs --selector k=v (the worker pods' labels)".into(),
            );
        }
        vec![Watch {
            role: WorkerRole::Regular,
            selector: cli.selector.clone(),
        }]
    };
    Ok(Some(K8sConfig {
        watches,
        namespace: cli.service_discovery_namespace.clone(),
        port: cli.service_discovery_port,
    }))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One shard's share of a router-wide limit, rounded up so the shares add up to at
/// least the limit.
fn share(total: u64, shards: usize) -> usize {
    (total as usize).div_ceil(shards.max(1))
}

fn resolve_listen(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve --host {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve --host {host}"))
}
