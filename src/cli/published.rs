//! Flags vllm-router 0.1.17 added (docs/cli.md, "0.1.17"): parsed with 0.1.17's names,
//! defaults and value checks, so that a command line written for it is read the same
//! way here; what this build does not do yet is refused at start by name
//! (`refusals`), never ignored.

use clap::Args;

/// `kv_aware`, its event sources, and the other 0.1.17 additions.
#[derive(Args, Debug, Clone)]
pub struct PublishedFlags {
    /// kv_aware: softmax temperature over worker costs; 0 picks the cheapest.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub router_temperature: f64,
    /// kv_aware: cost weight of blocks cached in host memory, 0 to 1.
    #[arg(long, default_value_t = 0.8, value_parser = unit_interval, allow_negative_numbers = true)]
    pub kv_penalty_host: f64,
    /// kv_aware: cost weight of blocks cached in an external store, 0 to 1.
    #[arg(long, default_value_t = 0.6, value_parser = unit_interval, allow_negative_numbers = true)]
    pub kv_penalty_external: f64,
    /// kv_aware: cost weight of blocks cached on disk, 0 to 1.
    #[arg(long, default_value_t = 0.3, value_parser = unit_interval, allow_negative_numbers = true)]
    pub kv_penalty_disk: f64,
    /// kv_aware: keep a session on its worker for this many seconds (1-31536000;
    /// unset: off).
    #[arg(long, value_parser = affinity_ttl)]
    pub kv_aware_session_affinity_ttl_secs: Option<u64>,
    /// kv_aware: a worker's KV event publisher, WORKER_URL=ENDPOINT[,ENDPOINT...] by DP
    /// rank; repeatable.
    #[arg(long, action = clap::ArgAction::Append)]
    pub kv_event_source: Vec<String>,
    /// kv_aware: where a worker replays missed KV events, WORKER_URL=ENDPOINT[,...];
    /// repeatable.
    #[arg(long, action = clap::ArgAction::Append)]
    pub kv_event_replay_source: Vec<String>,
    /// kv_aware: tokens per KV block of the static event sources.
    #[arg(long, default_value_t = 16)]
    pub kv_event_block_size: u32,
    /// kv_aware: the model the static event sources serve (needed with them).
    #[arg(long)]
    pub kv_event_model: Option<String>,
    /// P/D with kv_aware prefill: a prefill worker's KV events, URL=ENDPOINT[,...];
    /// repeatable.
    #[arg(long, action = clap::ArgAction::Append)]
    pub pd_kv_events: Vec<String>,
    /// Run 0.1.17's Python debug balancer instead of the router.
    #[arg(long)]
    pub mini_lb: bool,
    /// P/D: how prefill hands the KV cache to decode.
    #[arg(long, default_value = "nixl", value_parser = ["nixl", "mooncake", "moriio"])]
    pub kv_connector: String,
    /// Multi-model routing: a request goes to the workers whose /v1/models list its
    /// `model` (one policy per model); an unknown model gets 404.
    #[arg(long)]
    pub enable_igw: bool,
    /// Requests per second the router admits to workers, split over the shards, with a
    /// burst of one second's worth; over it 429 with Retry-After (unset: no rate limit).
    #[arg(long)]
    pub rate_limit_tokens_per_second: Option<u64>,
    /// 0.1.17's program (agent) scheduling layer.
    #[arg(long)]
    pub enable_program_scheduling: bool,
    /// Settings of program scheduling, a JSON object.
    #[arg(long)]
    pub program_scheduling_config_json: Option<String>,
    /// A WASM component run on each request.
    #[arg(long)]
    pub wasm_middleware: Option<std::path::PathBuf>,
    /// SHA-256 of --wasm-middleware, 64 hex characters.
    #[arg(long)]
    pub wasm_middleware_sha256: Option<String>,
    /// Paths the WASM middleware applies to; repeatable (default /v1/chat/completions).
    #[arg(long, action = clap::ArgAction::Append)]
    pub wasm_middleware_route: Vec<String>,
}

/// 0.1.17: "Must be finite and >= 0.0".
pub fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s} - Must be finite and >= 0.0")),
    }
}

/// 0.1.17's launcher: a year at most.
fn affinity_ttl(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v) if (1..=31_536_000).contains(&v) => Ok(v),
        _ => Err("kv_aware_session_affinity_ttl_secs must be between 1 and 31536000".into()),
    }
}

/// 0.1.17: "Must be finite and between 0.0 and 1.0".
fn unit_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s} - Must be finite and between 0.0 and 1.0")),
    }
}
