//! The command line: the published vllm-router's flag set (docs/cli.md), with its
//! defaults and value shapes, plus `--shards` and `--shutdown-grace-period-secs`.

use clap::{CommandFactory, FromArgMatches, Parser};
use std::path::PathBuf;

mod published;
mod refusals;

pub use published::PublishedFlags;

/// The policy names 0.1.17 accepts.
const POLICIES: [&str; 7] = [
    "round_robin",
    "random",
    "consistent_hash",
    "power_of_two",
    "cache_aware",
    "kv_aware",
    "sticky_least_loaded",
];

#[derive(Parser, Debug, Clone)]
#[command(
    name = "vllm-router",
    version,
    about = "Thread-per-core request router for vLLM workers (drop-in for vllm-router)"
)]
pub struct Cli {
    // --- server ---
    /// Address to listen on (an IP or a name resolved once at start).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one, named in the start-up line.
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// Largest request body in bytes; larger bodies get 413.
    #[arg(long, default_value_t = 536_870_912)]
    pub max_payload_size: u64,
    /// Bytes of request bodies one shard may buffer at once, all requests together;
    /// past it a request gets 503 with Retry-After (ours).
    #[arg(long, default_value_t = 1_073_741_824)]
    pub body_buffer_budget_bytes: u64,
    /// Longest time for a whole request, from admission to the end of its answer (504 before the answer head).
    #[arg(long, default_value_t = 1800)]
    pub request_timeout_secs: u64,
    /// Least severe log level written (critical is error).
    #[arg(long, default_value = "info",
          value_parser = ["debug", "info", "warn", "warning", "error", "critical"])]
    pub log_level: String,
    /// Write logs to vllm-router.log in this directory instead of stderr.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Sent to workers as `Authorization: Bearer`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Admin writes (adding and removing workers, /flush_cache) need
    /// `Authorization: Bearer KEY`; without it anyone who reaches the port may change
    /// the worker set. Better set through the environment, out of `ps` (ours).
    #[arg(long, env = "VLLM_ROUTER_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Inference calls need `Authorization: Bearer` with one of these keys (comma- or
    /// space-separated); health endpoints stay open (ours).
    #[arg(long, num_args = 1.., value_delimiter = ',',
          env = "VLLM_ROUTER_CLIENT_API_KEYS", hide_env_values = true)]
    pub client_api_key: Vec<String>,
    /// Origins whose web pages may call the router (CORS), exact or `*`; unset: the
    /// router adds no CORS headers and the workers' own apply.
    #[arg(long, num_args = 0..)]
    pub cors_allowed_origins: Vec<String>,
    /// kv_aware: a directory with the model's `tokenizer.json` and
    /// `tokenizer_config.json`: prompts are tokenized on the router, not by a worker's
    /// `/tokenize` (ours).
    #[arg(long, value_name = "DIR")]
    pub tokenizer_path: Option<std::path::PathBuf>,
    /// kv_aware: weight of the prompt tokens a worker has yet to start on, in the cost
    /// (ours; 1 is 0.1.17's `A`; 0 leaves it out, measured better: docs/kv-aware.md).
    #[arg(long, default_value_t = 0.0, value_parser = published::non_negative)]
    pub kv_pending_prefill_weight: f64,
    /// kv_aware: the power of `load + 1` in the cost (ours; 1 is 0.1.17's; 0.5, the
    /// default, measured better with several router replicas: docs/kv-aware.md).
    #[arg(long, default_value_t = 0.5, value_parser = load_exponent)]
    pub kv_load_exponent: f64,
    /// kv_aware: seconds a just-routed request's blocks count as on its worker before
    /// the worker's KV events say so (ours; 0: off).
    #[arg(long, default_value_t = 10)]
    pub kv_provisional_ttl_secs: u64,
    /// kv_aware: the load a prompt no worker holds a quarter of is priced with (ours):
    /// `recent`, at least each worker's share of all requests in flight (this one
    /// included) as its recent traffic divides them; `load`, requests in flight, as 0.1.17 (docs/kv-aware.md).
    #[arg(long, default_value = "recent", value_parser = ["recent", "load"])]
    pub kv_cold_placement: String,
    /// Data-plane shards (one glommio executor per CPU). Default: the CPUs in the
    /// process's affinity mask.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Bind each shard to one CPU (ours): `auto` when the affinity mask is narrower
    /// than the machine (CPUs given to the router) and no CPU quota is below it;
    /// `always`; `never`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub pin_shards: String,
    /// On SIGTERM/SIGINT, time given to in-flight requests and streams to finish.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_period_secs: u64,

    // --- timeouts (ours; the published router has only --request-timeout-secs) ---
    /// Time to establish a TCP connection to a worker.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_secs: u64,
    /// Time a worker has to send its answer head once the request is sent. vLLM sends
    /// a non-streamed answer's head only when generation is done: keep it generous.
    #[arg(long, default_value_t = 600)]
    pub upstream_head_timeout_secs: u64,
    /// Longest silence from a worker in the middle of an answer body (between stream
    /// events); a stream silent longer is cut and counted as a worker failure.
    #[arg(long, default_value_t = 300)]
    pub stream_idle_timeout_secs: u64,
    /// Time a client has to send a whole request head once it started (slowloris).
    #[arg(long, default_value_t = 30)]
    pub client_header_timeout_secs: u64,
    /// Time an idle client keep-alive connection stays open.
    #[arg(long, default_value_t = 75)]
    pub keepalive_timeout_secs: u64,

    // --- workers and policy ---
    /// Worker base URLs (http://host:port), space-separated.
    #[arg(long, num_args = 0..)]
    pub worker_urls: Vec<String>,
    /// A file with one worker URL per line, read at start and again on SIGHUP
    /// (`systemctl reload`); ours.
    #[arg(long)]
    pub worker_urls_file: Option<PathBuf>,
    /// How a worker is chosen for a request.
    #[arg(long, default_value = "cache_aware", value_parser = POLICIES)]
    pub policy: String,
    /// P/D: the prefill pool's policy (default: --policy).
    #[arg(long, value_parser = POLICIES)]
    pub prefill_policy: Option<String>,
    /// P/D: the decode pool's policy (default: --policy).
    #[arg(long, value_parser = POLICIES)]
    pub decode_policy: Option<String>,
    /// At start, seconds to wait for a first healthy worker before giving up (exit 1).
    #[arg(long, default_value_t = 600)]
    pub worker_startup_timeout_secs: u64,
    /// At start, seconds between health checks while no worker is healthy.
    #[arg(long, default_value_t = 30)]
    pub worker_startup_check_interval: u64,
    /// Data-parallel ranks per worker URL: each rank is routed to as URL@rank.
    #[arg(long, default_value_t = 1)]
    pub intra_node_data_parallel_size: u32,
    /// consistent_hash with bounded loads: a worker above F x the mean load is skipped
    /// along the ring (ours; off by default).
    #[arg(long)]
    pub consistent_hash_load_factor: Option<f64>,

    // --- cache_aware ---
    /// cache_aware: share of a request's text a worker must hold (0-1) for the match to count.
    #[arg(long, default_value_t = 0.3)]
    pub cache_threshold: f64,
    /// cache_aware: with the relative one, the load gap (requests) past which the idlest worker wins.
    #[arg(long, default_value_t = 64)]
    pub balance_abs_threshold: u64,
    /// cache_aware: with the absolute one, the load ratio past which the idlest worker wins.
    #[arg(long, default_value_t = 1.5)]
    pub balance_rel_threshold: f64,
    /// cache_aware: seconds between evictions of the routing trees down to --max-tree-size.
    #[arg(long, default_value_t = 120)]
    pub eviction_interval_secs: u64,
    /// cache_aware: characters of routing text kept per worker.
    #[arg(long, default_value_t = 33_554_432)]
    pub max_tree_size: u64,

    // --- prefill/decode ---
    /// Prefill/decode disaggregation: each generation request goes to a prefill and then a decode worker.
    #[arg(long)]
    pub vllm_pd_disaggregation: bool,
    /// `--prefill URL [BOOTSTRAP_PORT|none]`, repeatable.
    #[arg(long, num_args = 1..=2, action = clap::ArgAction::Append, value_names = ["URL", "BOOTSTRAP_PORT"])]
    pub prefill: Vec<String>,
    /// P/D: a decode worker URL; repeatable.
    #[arg(long, action = clap::ArgAction::Append)]
    pub decode: Vec<String>,
    /// P/D: ZMQ address (host:port) where vLLM instances announce themselves.
    #[arg(long)]
    pub vllm_discovery_address: Option<String>,

    // --- Kubernetes ---
    /// Find workers as Kubernetes pods (in-cluster or kubeconfig credentials).
    #[arg(long)]
    pub service_discovery: bool,
    /// Kubernetes: label selector(s) KEY=VALUE of worker pods.
    #[arg(long, num_args = 1..)]
    pub selector: Vec<String>,
    /// Kubernetes: the port workers serve on in their pods.
    #[arg(long, default_value_t = 8000)]
    pub service_discovery_port: u16,
    /// Kubernetes: namespace to watch (default: every namespace the credentials allow).
    #[arg(long)]
    pub service_discovery_namespace: Option<String>,
    /// Kubernetes P/D: label selector(s) of prefill pods.
    #[arg(long, num_args = 1..)]
    pub prefill_selector: Vec<String>,
    /// Kubernetes P/D: label selector(s) of decode pods.
    #[arg(long, num_args = 1..)]
    pub decode_selector: Vec<String>,

    // --- metrics and request ids ---
    /// Address the Prometheus /metrics endpoint listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub prometheus_host: String,
    /// Port of the /metrics endpoint; 0 picks a free one.
    #[arg(long, default_value_t = 29000)]
    pub prometheus_port: u16,
    /// Headers a request id is taken from, in order (default: x-request-id and friends).
    #[arg(long, num_args = 0..)]
    pub request_id_headers: Vec<String>,

    // --- retries ---
    /// Attempts per request in all, the first included.
    #[arg(long, default_value_t = 5)]
    pub retry_max_retries: u32,
    /// Pause before the first retry, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub retry_initial_backoff_ms: u64,
    /// Longest pause between retries, in milliseconds.
    #[arg(long, default_value_t = 30000)]
    pub retry_max_backoff_ms: u64,
    /// Each pause is the previous one times this.
    #[arg(long, default_value_t = 1.5)]
    pub retry_backoff_multiplier: f64,
    /// Pauses vary by up to this fraction either way (0-1).
    #[arg(long, default_value_t = 0.2)]
    pub retry_jitter_factor: f64,
    /// One attempt per request.
    #[arg(long)]
    pub disable_retries: bool,

    // --- circuit breaker ---
    /// Circuit breaker: failures within the window that open a worker's breaker.
    #[arg(long, default_value_t = 10)]
    pub cb_failure_threshold: u32,
    /// Circuit breaker: successes in half-open that close it again.
    #[arg(long, default_value_t = 3)]
    pub cb_success_threshold: u32,
    /// Circuit breaker: seconds an open breaker waits before letting a probe through.
    #[arg(long, default_value_t = 60)]
    pub cb_timeout_duration_secs: u64,
    /// Circuit breaker: seconds over which failures are counted.
    #[arg(long, default_value_t = 120)]
    pub cb_window_duration_secs: u64,
    /// Never stop routing to a worker because of failed requests.
    #[arg(long)]
    pub disable_circuit_breaker: bool,

    // --- health checks ---
    /// Failed health checks in a row that mark a worker unhealthy.
    #[arg(long, default_value_t = 3)]
    pub health_failure_threshold: u32,
    /// Passed health checks in a row that mark it healthy again.
    #[arg(long, default_value_t = 2)]
    pub health_success_threshold: u32,
    /// Seconds a health check may take.
    #[arg(long, default_value_t = 5)]
    pub health_check_timeout_secs: u64,
    /// Seconds between health checks of each worker.
    #[arg(long, default_value_t = 60)]
    pub health_check_interval_secs: u64,
    /// Path of the workers' health endpoint (any 2xx is healthy).
    #[arg(long, default_value = "/health")]
    pub health_check_endpoint: String,

    // --- admission ---
    /// Requests in flight at once, all shards together; more wait in the queue.
    #[arg(long, default_value_t = 32768)]
    pub max_concurrent_requests: u64,
    /// Requests that may wait for a slot; more get 429.
    #[arg(long, default_value_t = 100)]
    pub queue_size: u64,
    /// Seconds a request may wait in the queue before 408.
    #[arg(long, default_value_t = 60)]
    pub queue_timeout_secs: u64,

    // --- 0.1.17's additions ---
    #[command(flatten)]
    pub published: PublishedFlags,
}

impl Cli {
    /// Parses the process arguments; exits with clap's message on a malformed line.
    pub fn parse_checked() -> (Cli, Vec<String>) {
        Self::parse_from_checked(std::env::args_os())
    }

    /// Parses and returns the flags given on the command line that this build cannot
    /// honour yet, each as a one-line explanation.
    pub fn parse_from_checked<I, T>(args: I) -> (Cli, Vec<String>)
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().get_matches_from(args);
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let unsupported = refusals::refusals(&cli, &matches);
        (cli, unsupported)
    }
}

/// `--prefill URL [BOOTSTRAP_PORT|none]`, repeated, arrives as one flat list; this
/// pairs each URL with its optional bootstrap port.
pub fn prefill_pairs(values: &[String]) -> Result<Vec<(String, Option<u16>)>, String> {
    let mut out: Vec<(String, Option<u16>)> = Vec::new();
    let mut can_take_port = false;
    for v in values {
        if v.contains("://") {
            out.push((v.clone(), None));
            can_take_port = true;
        } else if can_take_port {
            can_take_port = false;
            if v != "none" {
                let port = v.parse::<u16>().map_err(|_| {
                    format!(
                        "--prefill {}: bad bootstrap port {v:?} (a port or none)",
                        out.last().unwrap().0
                    )
                })?;
                out.last_mut().unwrap().1 = Some(port);
            }
        } else {
            return Err(format!("--prefill: expected a URL, got {v:?}"));
        }
    }
    Ok(out)
}

/// `--kv-load-exponent`: 0 (load ignored) to 2.
fn load_exponent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=2.0).contains(&v) => Ok(v),
        _ => Err(format!("{s} - Must be between 0.0 and 2.0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_values_pair_up() {
        let v: Vec<String> = [
            "http://p1:8000",
            "9000",
            "http://p2:8000",
            "http://p3:8000",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            prefill_pairs(&v).unwrap(),
            [
                ("http://p1:8000".to_string(), Some(9000)),
                ("http://p2:8000".to_string(), None),
                ("http://p3:8000".to_string(), None),
            ]
        );
        assert!(prefill_pairs(&["9000".to_string()]).is_err());
        assert!(prefill_pairs(&["http://p:1".into(), "x".into()]).is_err());
    }

    fn parse(args: &[&str]) -> (Cli, Vec<String>) {
        Cli::parse_from_checked(std::iter::once("vllm-router").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_published_router() {
        let (c, bad) = parse(&[]);
        assert!(bad.is_empty());
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 30000));
        assert_eq!(c.max_payload_size, 536_870_912);
        assert_eq!(c.policy, "cache_aware");
        assert_eq!(c.retry_max_retries, 5);
        assert_eq!(c.health_check_endpoint, "/health");
        assert_eq!(c.prometheus_port, 29000);
    }

    #[test]
    fn value_shapes() {
        let (c, _) = parse(&[
            "--worker-urls",
            "http://a:1",
            "http://b:2",
            "--prefill",
            "http://p1:8000",
            "9000",
            "--prefill",
            "http://p2:8000",
            "--prefill",
            "http://p3:8000",
            "none",
            "--decode",
            "http://d1:8000",
            "--selector",
            "app=vllm",
            "tier=gpu",
        ]);
        assert_eq!(c.worker_urls, ["http://a:1", "http://b:2"]);
        assert_eq!(
            c.prefill,
            [
                "http://p1:8000",
                "9000",
                "http://p2:8000",
                "http://p3:8000",
                "none"
            ]
        );
        assert_eq!(c.decode, ["http://d1:8000"]);
        assert_eq!(c.selector, ["app=vllm", "tier=gpu"]);
    }

    #[test]
    fn unbuilt_flags_are_reported_only_when_given() {
        let (_, bad) = parse(&["--mini-lb", "--policy", "cache_aware"]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("--mini-lb is not supported yet"));
        let (_, bad) = parse(&["--policy", "random", "--port", "1"]);
        assert!(bad.is_empty());
        // A default 0.1.17 value given explicitly is fine; another one is refused.
        let (_, bad) = parse(&["--kv-connector", "nixl"]);
        assert!(bad.is_empty(), "{bad:?}");
        let (_, bad) = parse(&["--kv-connector", "moriio"]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        // kv_aware is built for the regular pool, P/D and per-model pools.
        let (_, bad) = parse(&["--policy", "kv_aware", "--router-temperature", "2"]);
        assert!(bad.is_empty(), "{bad:?}");
        let (_, bad) = parse(&["--vllm-pd-disaggregation", "--prefill-policy", "kv_aware"]);
        assert!(bad.is_empty(), "{bad:?}");
        let (_, bad) = parse(&["--policy", "kv_aware", "--enable-igw"]);
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn published_value_checks_keep_their_messages() {
        let e = Cli::command()
            .try_get_matches_from(["vllm-router", "--router-temperature", "-1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Must be finite and >= 0.0"), "{e}");
        let e = Cli::command()
            .try_get_matches_from(["vllm-router", "--kv-penalty-disk", "1.5"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Must be finite and between 0.0 and 1.0"), "{e}");
        for bad in ["0", "31536001", "x"] {
            let e = Cli::command()
                .try_get_matches_from(["vllm-router", "--kv-aware-session-affinity-ttl-secs", bad])
                .unwrap_err()
                .to_string();
            let want = "kv_aware_session_affinity_ttl_secs must be between 1 and 31536000";
            assert!(e.contains(want), "{e}");
        }
        let (c, _) = parse(&["--kv-aware-session-affinity-ttl-secs", "600"]);
        assert_eq!(c.published.kv_aware_session_affinity_ttl_secs, Some(600));
        let (c, _) = parse(&[]);
        assert_eq!(c.max_tree_size, 33_554_432);
    }
}
