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
        let pools = Pools::from_cli(cli)?;
        let policy = PolicyKind::parse(&cli.policy).expect("clap validated the policy");
        let access = access_keys(cli)?;
        let kv_events = crate::kv_settings::kv_events(cli, policy, &pools.regular, &pools.prefill)?;
        // The model's tokenizer is read here, once: a shard never touches a file.
        let tokenizer = match &cli.tokenizer_path {
            Some(dir) => {
                let t = shards::chat_tokens::ChatTokenizer::load(dir)
                    .map_err(|e| format!("--tokenizer-path: {e}"))?;
                shards::info!(
                    "kv_aware tokenizes on the router with {} (chat template: {}; chats cut at special tokens: {}; word by word: {})",
                    dir.display(),
                    if t.has_template() { "yes" } else { "none, chats ask a worker" },
                    if t.cuts_chats() { "yes" } else { "no" },
                    if t.splits_words() { "yes" } else { "no" }
                );
                Some(Arc::new(t))
            }
            None => None,
        };
        let shard = Arc::new(shard_config(
            cli,
            shard_count,
            reserved.addr,
            policy,
            access,
            tokenizer,
        ));
        let control = ControlConfig {
            worker_urls: pools.regular,
            prefill_urls: pools.prefill,
            igw: cli.published.enable_igw,
            mooncake_bootstrap: if cli.published.kv_connector == "mooncake" {
                pools.bootstrap
            } else {
                Vec::new()
            },
            decode_urls: cli.decode.clone(),
            discovery_address: cli.vllm_discovery_address.clone(),
            k8s: k8s_config(cli, cli.vllm_pd_disaggregation)?,
            dp_size: cli.intra_node_data_parallel_size.max(1),
            probe: ProbeConfig {
                endpoint: cli.health_check_endpoint.clone(),
                timeout: secs(cli.health_check_timeout_secs),
                api_key: cli.api_key.clone(),
            },
            health_interval: secs(cli.health_check_interval_secs.max(1)),
            success_threshold: cli.health_success_threshold,
            failure_threshold: cli.health_failure_threshold,
            startup_timeout: secs(cli.worker_startup_timeout_secs),
            startup_interval: secs(cli.worker_startup_check_interval.max(1)),
            prometheus: resolve_listen(&cli.prometheus_host, cli.prometheus_port)?,
            listen: reserved.addr,
            shards: shard_count,
            policy,
            eviction_interval: secs(cli.eviction_interval_secs),
            max_tree_size: cli.max_tree_size as usize,
            breaker: shard.breaker.clone(),
            worker_urls_file: cli.worker_urls_file.clone(),
            file_urls: pools.from_file,
            notifier: crate::notify::Notifier::from_env().map(Arc::new),
            kv_events,
        };
        Ok(Settings {
            shard,
            control,
            reserved,
        })
    }
}

/// The worker URLs of each pool, checked: the command line's, the worker list file's,
/// and the P/D flags' with their rules.
struct Pools {
    regular: Vec<String>,
    /// The worker list file's URLs (already in `regular`).
    from_file: Vec<String>,
    prefill: Vec<String>,
    /// `--prefill URL PORT`: the bootstrap ports given (Mooncake asks them).
    bootstrap: Vec<(String, u16)>,
}

impl Pools {
    fn from_cli(cli: &Cli) -> Result<Pools, String> {
        // The worker list file joins the command line's workers.
        let mut regular = cli.worker_urls.clone();
        let from_file = match &cli.worker_urls_file {
            Some(path) => control::reload::read_worker_file(path)?,
            None => Vec::new(),
        };
        for url in &from_file {
            if !regular.iter().any(|u| u.trim_end_matches('/') == url) {
                regular.push(url.clone());
            }
        }
        let prefill = cli::prefill_pairs(&cli.prefill)?;
        let pd = cli.vllm_pd_disaggregation;
        let discovery = cli.vllm_discovery_address.is_some();
        if pd
            && !discovery
            && !cli.service_discovery
            && (prefill.is_empty() || cli.decode.is_empty())
        {
            return Err(
                "--vllm-pd-disaggregation needs at least one --prefill URL and one \
                        --decode URL, --vllm-discovery-address, or --service-discovery"
                    .into(),
            );
        }
        if pd && cli.published.enable_igw {
            return Err(
                "--enable-igw with --vllm-pd-disaggregation is not supported yet \
                        (multi-model routing covers the regular pool)"
                    .into(),
            );
        }
        if !pd && discovery {
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
        let bootstrap = prefill
            .iter()
            .filter_map(|(u, p)| Some((u.clone(), (*p)?)))
            .collect();
        let prefill: Vec<String> = prefill.into_iter().map(|(u, _)| u).collect();
        // A malformed URL is a configuration error: say so before binding anything.
        for url in regular.iter().chain(&prefill).chain(&cli.decode) {
            control::registry::parse_worker_url(url)?;
        }
        Ok(Pools {
            regular,
            from_file,
            prefill,
            bootstrap,
        })
    }
}

/// What every shard runs with.
fn shard_config(
    cli: &Cli,
    shard_count: usize,
    listen: SocketAddr,
    policy: PolicyKind,
    access: shards::AccessKeys,
    tokenizer: Option<Arc<shards::chat_tokens::ChatTokenizer>>,
) -> ShardConfig {
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
    let inherit = |p: &Option<String>| p.as_deref().and_then(PolicyKind::parse).unwrap_or(policy);
    ShardConfig {
        listen,
        max_payload_bytes: cli.max_payload_size,
        body_budget_bytes: cli.body_buffer_budget_bytes,
        // 0.1.17 treats 0 as 1.
        rate_per_second: cli
            .published
            .rate_limit_tokens_per_second
            .map(|r| r.max(1) as f64 / shard_count as f64),
        request_timeout: secs(cli.request_timeout_secs),
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
        breaker: shards::breaker::BreakerConfig {
            enabled: !cli.disable_circuit_breaker,
            failure_threshold: cli.cb_failure_threshold.max(1),
            success_threshold: cli.cb_success_threshold.max(1),
            timeout: secs(cli.cb_timeout_duration_secs),
            window: secs(cli.cb_window_duration_secs),
        },
        admission_slots: share(cli.max_concurrent_requests, shard_count),
        admission_queue: share(cli.queue_size, shard_count),
        queue_timeout: secs(cli.queue_timeout_secs),
        policy,
        pd: cli.vllm_pd_disaggregation.then(|| shards::PdConfig {
            prefill_policy: inherit(&cli.prefill_policy),
            decode_policy: inherit(&cli.decode_policy),
            connector: match cli.published.kv_connector.as_str() {
                "mooncake" => shards::KvConnector::Mooncake,
                _ => shards::KvConnector::Nixl, // moriio is refused at start
            },
        }),
        policy_options: shards::policy::PolicyOptions {
            consistent_hash_load_factor: cli.consistent_hash_load_factor,
            cache_aware: shards::policy::CacheAwareConfig {
                cache_threshold: cli.cache_threshold,
                balance_abs_threshold: cli.balance_abs_threshold.min(u64::from(u32::MAX)) as u32,
                balance_rel_threshold: cli.balance_rel_threshold,
                max_tree_size: cli.max_tree_size as usize,
            },
            session_ttl: session_ttl(),
            kv_aware: shards::policy::KvAwareConfig {
                temperature: cli.published.router_temperature,
                penalty_host: cli.published.kv_penalty_host,
                penalty_external: cli.published.kv_penalty_external,
                penalty_disk: cli.published.kv_penalty_disk,
                default_block_size: cli.published.kv_event_block_size,
                pending_prefill_weight: cli.kv_pending_prefill_weight,
                load_exponent: cli.kv_load_exponent,
                provisional_ttl: (cli.kv_provisional_ttl_secs > 0)
                    .then(|| Duration::from_secs(cli.kv_provisional_ttl_secs)),
                cold_by_recent_traffic: cli.kv_cold_placement == "recent",
                session_affinity_ttl: cli
                    .published
                    .kv_aware_session_affinity_ttl_secs
                    .map(Duration::from_secs),
            },
        },
        api_key: cli.api_key.clone(),
        access,
        igw: cli.published.enable_igw,
        cors: (!cli.cors_allowed_origins.is_empty()).then(|| shards::CorsConfig {
            any: cli.cors_allowed_origins.iter().any(|o| o == "*"),
            origins: cli.cors_allowed_origins.clone(),
        }),
        request_id_headers,
        admin_timeout: secs(cli.health_check_timeout_secs) + ADMIN_MARGIN,
        tokenizer,
    }
}

/// The environment variable 0.1.17 reads for sticky_least_loaded's session TTL.
const SESSION_TTL_ENV: &str = "VLLM_ROUTER_SLL_SESSION_EXPIRATION_IN_S";

/// sticky_least_loaded's idle TTL: the environment's, else 7200 s (a bad value is
/// warned about and ignored, as in 0.1.17).
fn session_ttl() -> Duration {
    match std::env::var(SESSION_TTL_ENV) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Duration::from_secs(secs),
            _ => {
                shards::warn!("{SESSION_TTL_ENV}={v:?} is not a number of seconds: using 7200");
                shards::policy::DEFAULT_SESSION_TTL
            }
        },
        Err(_) => shards::policy::DEFAULT_SESSION_TTL,
    }
}

/// `--admin-api-key` and `--client-api-key`; an empty key would let anyone in, so it
/// is refused.
fn access_keys(cli: &Cli) -> Result<shards::AccessKeys, String> {
    let admin = cli.admin_api_key.as_deref().map(str::trim);
    if admin == Some("") {
        return Err("--admin-api-key (or VLLM_ROUTER_ADMIN_API_KEY) is empty".into());
    }
    let clients: Vec<&str> = cli.client_api_key.iter().map(|k| k.trim()).collect();
    if clients.iter().any(|k| k.is_empty()) {
        return Err("--client-api-key (or VLLM_ROUTER_CLIENT_API_KEYS) has an empty key".into());
    }
    Ok(shards::AccessKeys {
        admin: admin.map(|k| k.as_bytes().to_vec()),
        clients: clients.iter().map(|k| k.as_bytes().to_vec()).collect(),
    })
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
