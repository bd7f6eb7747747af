//! Settings a shard reads, fixed at start: the binary turns the command line into a
//! `ShardConfig` and hands every shard the same copy.

pub use crate::cors::CorsConfig;
use crate::policy::{PolicyKind, PolicyOptions};
use std::net::SocketAddr;
use std::time::Duration;

pub use crate::breaker::BreakerConfig;

/// Settings every shard reads; fixed at start.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub listen: SocketAddr,
    pub max_payload_bytes: u64,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Time a worker has to send its answer head once the request is out.
    pub head_timeout: Duration,
    /// Longest silence from a worker between reads of an answer body.
    pub stream_idle_timeout: Duration,
    /// Time allowed to receive a whole request head once its first byte arrived.
    pub header_read_timeout: Duration,
    /// Time an idle client keep-alive connection is kept open.
    pub keepalive_timeout: Duration,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    /// This shard's share of `--max-concurrent-requests` and `--queue-size`.
    pub admission_slots: usize,
    pub admission_queue: usize,
    pub queue_timeout: Duration,
    pub policy: PolicyKind,
    /// P/D mode (`--vllm-pd-disaggregation`): generation requests take a prefill and a
    /// decode worker, each chosen by its pool's policy.
    pub pd: Option<PdConfig>,
    pub policy_options: PolicyOptions,
    /// Sent to workers as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// Headers a request id is taken from, in order (`--request-id-headers`).
    pub request_id_headers: Vec<String>,
    /// Longest wait for the control core to answer an admin call.
    pub admin_timeout: Duration,
    /// This shard's share of `--rate-limit-tokens-per-second` (None: no rate limit).
    pub rate_per_second: Option<f64>,
    /// Bytes of request bodies one shard may hold buffered at once.
    pub body_budget_bytes: u64,
    /// `--enable-igw`: requests are routed among the workers serving their `model`.
    pub igw: bool,
    /// `--cors-allowed-origins`: the router answers CORS itself (None: it adds nothing).
    pub cors: Option<CorsConfig>,
    /// Who may use the router (`--admin-api-key`, `--client-api-key`).
    pub access: AccessKeys,
    /// `--tokenizer-path`: kv_aware tokenizes on the shard (each clones it).
    pub tokenizer: Option<std::sync::Arc<crate::chat_tokens::ChatTokenizer>>,
}

/// Bearer tokens the router itself checks (not `api_key`, which it sends to workers).
/// Empty: open, as in the published router.
#[derive(Clone, Default)]
pub struct AccessKeys {
    /// Needed for admin writes.
    pub admin: Option<Vec<u8>>,
    /// One of them is needed for inference calls.
    pub clients: Vec<Vec<u8>>,
}

/// Keys never reach a log line, even at debug.
impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeys")
            .field("admin", &self.admin.is_some())
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// `--prefill-policy` and `--decode-policy` (each defaults to `--policy`), and how
/// the KV cache moves from prefill to decode.
#[derive(Clone, Debug)]
pub struct PdConfig {
    pub prefill_policy: PolicyKind,
    pub decode_policy: PolicyKind,
    pub connector: KvConnector,
}

/// `--kv-connector`: what the two legs' `kv_transfer_params` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvConnector {
    /// The decode leg gets the prefill answer's params (vLLM's NixlConnector).
    Nixl,
    /// Both legs get params the router makes: a transfer id, and for decode the
    /// prefill worker's bootstrap server and engine (vLLM's MooncakeConnector).
    Mooncake,
}

/// `--retry-*` flags.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    /// Attempts in all, the first included (`--retry-max-retries`); 1 disables retries.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// The pause varies by up to this fraction either way, so clients that failed
    /// together do not retry together.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(30),
            multiplier: 1.5,
            jitter: 0.2,
        }
    }
}

impl RetryConfig {
    /// The pause before retry number `retry` (0 = the first retry), given a uniform
    /// sample `u` in [0, 1): `min(initial * multiplier^retry, max) * (1 +- jitter)`.
    pub fn backoff(&self, retry: u32, u: f64) -> Duration {
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(retry as i32);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * u - 1.0);
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let cfg = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            multiplier: 2.0,
            jitter: 0.5,
            ..RetryConfig::default()
        };
        let mid = |r| cfg.backoff(r, 0.5).as_millis();
        assert_eq!((mid(0), mid(1), mid(2), mid(5)), (100, 200, 300, 300));
        assert_eq!(cfg.backoff(0, 0.0).as_millis(), 50);
        assert_eq!(cfg.backoff(0, 0.999_999).as_millis(), 149);
    }
}
