//! vllm-router: parse flags, check the machine, start the shards and the control core,
//! then wait for a signal to drain.

mod cli;
mod control;
mod notify;
mod preflight;

use cli::Cli;
use control::health::ProbeConfig;
use control::{Command, ControlConfig, ControlCore};
use nix::sys::signal::{SigSet, Signal};
use shards::log::Level;
use shards::policy::PolicyKind;
use shards::ShardConfig;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// An admin call may include a health probe: it gets the probe's timeout plus this.
const ADMIN_MARGIN: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let (cli, unsupported) = Cli::parse_checked();
    if !unsupported.is_empty() {
        for line in &unsupported {
            eprintln!("error: {line}");
        }
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let level = match cli.log_level.as_str() {
        "critical" => Level::Error,
        other => Level::parse(other).unwrap_or(Level::Info),
    };
    shards::log::init(level, cli.log_dir.as_deref())
        .map_err(|e| format!("cannot open the log: {e}"))?;

    let cpus = preflight::allowed_cpus();
    let shard_count = cli.shards.unwrap_or(cpus.len()).max(1);
    preflight::check_io_uring()?;
    preflight::check_memlock(shard_count)?;

    let listen = resolve_listen(&cli.host, cli.port)?;
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
        return Err("--prefill-policy and --decode-policy need --vllm-pd-disaggregation".into());
    }
    if !pd && (!prefill.is_empty() || !cli.decode.is_empty()) {
        return Err("--prefill and --decode need --vllm-pd-disaggregation".into());
    }
    let prefill_urls: Vec<String> = prefill.iter().map(|(u, _)| u.clone()).collect();
    let k8s = k8s_config(&cli, pd)?;
    // A malformed URL is a configuration error: say so before binding anything.
    for url in worker_urls.iter().chain(&prefill_urls).chain(&cli.decode) {
        control::registry::parse_worker_url(url)?;
    }
    let policy = PolicyKind::parse(&cli.policy).expect("clap validated the policy");
    let request_id_headers = if cli.request_id_headers.is_empty() {
        shards::proxy::request_id::DEFAULT_REQUEST_ID_HEADERS
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
    let config = Arc::new(ShardConfig {
        listen,
        max_payload_bytes: cli.max_payload_size,
        request_timeout: Duration::from_secs(cli.request_timeout_secs),
        connect_timeout: secs(cli.connect_timeout_secs),
        head_timeout: secs(cli.upstream_head_timeout_secs),
        stream_idle_timeout: secs(cli.stream_idle_timeout_secs),
        header_read_timeout: secs(cli.client_header_timeout_secs),
        keepalive_timeout: secs(cli.keepalive_timeout_secs),
        retry: shards::proxy::retry::RetryConfig {
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
            shards::shard::PdConfig {
                prefill_policy: inherit(&cli.prefill_policy),
                decode_policy: inherit(&cli.decode_policy),
            }
        }),
        policy_options: shards::policy::PolicyOptions {
            consistent_hash_load_factor: cli.consistent_hash_load_factor,
            cache_aware: shards::policy::CacheAwareConfig {
                cache_threshold: cli.cache_threshold,
                balance_abs_threshold: cli.balance_abs_threshold.min(u64::from(u32::MAX)) as u32,
                balance_rel_threshold: cli.balance_rel_threshold,
                max_tree_size: cli.max_tree_size as usize,
            },
        },
        api_key: cli.api_key.clone(),
        request_id_headers,
        admin_timeout: health_timeout + ADMIN_MARGIN,
    });
    let prometheus = resolve_listen(&cli.prometheus_host, cli.prometheus_port)?;
    let notifier = notify::Notifier::from_env().map(Arc::new);
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
        policy: policy.name(),
        eviction_interval: Duration::from_secs(cli.eviction_interval_secs),
        max_tree_size: cli.max_tree_size as usize,
        breaker,
        worker_urls_file: cli.worker_urls_file.clone(),
        file_urls,
        notifier: notifier.clone(),
    };

    // Signals are taken synchronously by this thread: block them before any other
    // thread starts so every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;

    // Links first: the control core queues the worker set on them before the shards
    // exist, and each shard applies what is queued before it accepts a connection.
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    let mut control_ends = Vec::with_capacity(shard_count);
    let mut shard_ends = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (c, s) = shards::link::link().map_err(|e| format!("cannot create shard link: {e}"))?;
        control_ends.push(c);
        shard_ends.push(s);
    }
    let (command_tx, command_rx) = crossbeam_channel::bounded(4);
    let (started_tx, started_rx) = crossbeam_channel::bounded(1);
    let control = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            ControlCore {
                links: control_ends,
                reports: report_rx,
                commands: command_rx,
                config: control_config,
            }
            .run(started_tx)
        })
        .map_err(|e| format!("cannot start the control core: {e}"))?;
    if !worker_urls.is_empty() {
        shards::info!("checking {} worker(s) before serving", worker_urls.len());
    }
    let started = started_rx
        .recv()
        .map_err(|_| "the control core stopped during start-up".to_string())??;

    let mut threads = Vec::with_capacity(shard_count);
    for (index, shard_end) in shard_ends.into_iter().enumerate() {
        let cpu = cpus.get(index % cpus.len().max(1)).copied();
        let thread = shards::spawn_shard(index, cpu, config.clone(), shard_end, report_tx.clone())?;
        threads.push(thread);
    }

    let cpu_list: Vec<String> = cpus
        .iter()
        .take(shard_count)
        .map(|c| c.to_string())
        .collect();
    shards::info!(
        "vllm-router listening on http://{listen} with {shard_count} shard(s) on CPU(s) {} \
         (policy {}); metrics on http://{prometheus}/metrics",
        cpu_list.join(","),
        policy.name()
    );
    if started.workers.is_empty() {
        shards::warn!("no workers configured: add them with POST /add_worker?url=...");
    }
    for (url, healthy, why) in &started.workers {
        if *healthy {
            shards::info!("worker {url} is healthy");
        } else {
            shards::warn!(
                "worker {url} is not healthy yet: {}",
                why.as_deref().unwrap_or("?")
            );
        }
    }

    if let Some(n) = &notifier {
        let healthy = started.workers.iter().filter(|w| w.1).count();
        n.send(&format!(
            "READY=1\nSTATUS=serving; {healthy} of {} worker(s) healthy\nMAINPID={}",
            started.workers.len(),
            std::process::id()
        ));
    }

    let signal = loop {
        match signals.wait().map_err(|e| format!("sigwait failed: {e}"))? {
            Signal::SIGHUP => {
                shards::info!("SIGHUP received: re-reading the worker list");
                let _ = command_tx.send(Command::Reload);
            }
            other => break other,
        }
    };
    if let Some(n) = &notifier {
        n.send("STOPPING=1\nSTATUS=draining");
    }
    let grace = Duration::from_secs(cli.shutdown_grace_period_secs);
    shards::info!(
        "{signal:?} received: draining (grace period {}s)",
        grace.as_secs()
    );
    let _ = command_tx.send(Command::Shutdown { grace });
    let clean = control.join().unwrap_or(false);
    if clean {
        for t in threads {
            let _ = t.join();
        }
    }
    let dropped = shards::log::dropped();
    if dropped > 0 {
        shards::warn!("{dropped} log line(s) were dropped because the log writer fell behind");
    }
    shards::info!("stopped");
    // Give the log writer a moment to flush the last lines.
    std::thread::sleep(Duration::from_millis(20));
    Ok(())
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
