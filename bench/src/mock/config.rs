use clap::Parser;

/// Flags of `mock-vllm`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mock-vllm",
    about = "A fast mock vLLM worker for tests and benchmarks"
)]
pub struct MockConfig {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// glommio executors serving the port (SO_REUSEPORT).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Name returned in the `x-mock-worker` header (default: mock-PORT).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "mock-model")]
    pub model: String,
    /// Tokens generated when the request has no max_tokens.
    #[arg(long, default_value_t = 16)]
    pub tokens: u32,
    /// Delay between streamed tokens, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub token_delay_us: u64,
    /// Delay before the first token (a fixed prefill cost), in microseconds.
    #[arg(long, default_value_t = 0)]
    pub ttft_us: u64,
    /// Extra prefill time per uncached prefix block, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub prefill_us_per_block: u64,
    /// Capacity of the simulated prefix cache, in blocks (LRU).
    #[arg(long, default_value_t = 4096)]
    pub cache_blocks: usize,
    /// Characters of request text per cache block (about 16 tokens).
    #[arg(long, default_value_t = 64)]
    pub block_chars: usize,
    /// Answer every generation request with this status.
    #[arg(long)]
    pub fail_status: Option<u16>,
    /// Fail only the first N generation requests (with --fail-status, default 503).
    #[arg(long, default_value_t = 0)]
    pub fail_first: u64,
    /// Close the connection after this many streamed tokens (no [DONE]).
    #[arg(long)]
    pub drop_after_tokens: Option<u32>,
    /// Wait this long before sending any response head, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub slow_headers_ms: u64,
    /// Publish KV-cache events as vLLM does (ZMQ PUB on this port, msgpack). The
    /// prefix cache then holds token blocks (text tokenized one token per byte, as
    /// `/tokenize` answers) and `--cache-blocks` counts those.
    #[arg(long)]
    pub kv_events_port: Option<u16>,
    /// Answer replay requests for missed KV events (ZMQ ROUTER on this port).
    #[arg(long)]
    pub kv_events_replay_port: Option<u16>,
    /// How events are encoded: `positional` (vLLM's msgspec array_like: batch and
    /// events are arrays), `map` (both maps) or `tagged` (an array batch of maps: the
    /// only form vllm-router 0.1.17 reads).
    #[arg(long, default_value = "positional", value_parser = ["positional", "map", "tagged"])]
    pub kv_events_encoding: String,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub kv_block_size: usize,
    /// A model's `tokenizer.json` and `tokenizer_config.json`: `/tokenize` and the KV
    /// cache use its tokens (the chat rendered with its template and tokenized whole,
    /// as vLLM does) instead of one token per byte.
    #[arg(long, value_name = "DIR")]
    pub tokenizer_path: Option<std::path::PathBuf>,
    /// Write a small test tokenizer (byte-level BPE, ChatML) into DIR and exit.
    #[arg(long, value_name = "DIR")]
    pub write_test_tokenizer: Option<std::path::PathBuf>,
    /// How `/kv_event_sources` answers: `list` (current vLLM) or `object` (keyed by DP
    /// rank: the only form vllm-router 0.1.17 reads).
    #[arg(long, default_value = "list", value_parser = ["list", "object"])]
    pub kv_event_sources_form: String,
    /// Leave out every Nth live event message (a lossy network: the router sees a
    /// sequence gap). 0 sends all.
    #[arg(long, default_value_t = 0)]
    pub kv_events_skip_every: u64,
    /// LoRA adapters served besides the base model (comma separated): a request naming
    /// one as its `model` is cached under it, as vLLM hashes the adapter's name into
    /// every block, and its stores say so (`lora_id`, `lora_name`, `extra_keys`).
    #[arg(long, value_delimiter = ',')]
    pub lora_adapters: Vec<String>,
}

impl MockConfig {
    pub fn worker_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("mock-{}", self.port))
    }
}
