//! What a mock worker's connections share: the worker-wide counters and cache, and one
//! client connection's buffers.

use super::cache::PrefixCache;
use super::kv::KvState;
use super::MockConfig;
use glommio::net::TcpStream;
use shards::codec::request::RequestHead;
use shards::ReadBuf;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Requests remembered for `/mock/requests` (tests read what each worker received).
const RECENT_REQUESTS: usize = 256;

/// State shared by the mock's threads. A mock may use locks; the router may not.
pub struct Shared {
    pub cfg: MockConfig,
    pub name: String,
    pub running: AtomicI64,
    pub generation_requests: AtomicU64,
    /// Generation requests answered to the end (`vllm:request_success_total`).
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub cache: Mutex<PrefixCache>,
    /// `--kv-events-port`: the token-block cache that publishes KV events; it then
    /// stands for the prefix cache.
    pub kv: Option<KvState>,
    /// `--tokenizer-path`: the model's tokenizer (else a token per byte).
    pub tokenizer: Option<shards::chat_tokens::ChatTokenizer>,
    pub by_path: Mutex<HashMap<String, u64>>,
    pub recent: Mutex<VecDeque<serde_json::Value>>,
}

impl Shared {
    pub fn new(cfg: MockConfig) -> std::io::Result<Arc<Shared>> {
        let name = cfg.worker_name();
        let tokenizer = match &cfg.tokenizer_path {
            Some(dir) => {
                Some(shards::chat_tokens::ChatTokenizer::load(dir).map_err(std::io::Error::other)?)
            }
            None => None,
        };
        Ok(Arc::new(Shared {
            tokenizer,
            kv: KvState::start(&cfg, &name)?,
            name,
            cache: Mutex::new(PrefixCache::new(cfg.cache_blocks)),
            cfg,
            running: AtomicI64::new(0),
            generation_requests: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            by_path: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
        }))
    }

    pub fn remember(&self, entry: serde_json::Value) {
        let mut r = self.recent.lock().unwrap();
        if r.len() == RECENT_REQUESTS {
            r.pop_front();
        }
        r.push_back(entry);
    }

    pub fn count_path(&self, path: &str) {
        *self
            .by_path
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default() += 1;
    }

    pub fn running(&self) -> i64 {
        self.running.load(Ordering::Relaxed)
    }
}

/// One client connection of the mock.
pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: ReadBuf,
    pub head: RequestHead,
    pub body: Vec<u8>,
    pub out: Vec<u8>,
    /// Sent as `x-mock-worker` on every answer, so tests see who served them.
    pub worker: String,
}
