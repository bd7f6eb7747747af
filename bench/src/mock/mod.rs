//! A mock vLLM worker: OpenAI chat and completions (JSON or SSE), `/health`,
//! `/v1/models`, `/tokenize`, `/metrics` with vLLM's gauge names and a simulated
//! prefix cache (with vLLM's KV events, `--kv-events-port`), the P/D prefill role, and
//! fault injection. Built on the router's own
//! codec and glommio so that it is never the bottleneck of a benchmark.

pub mod cache;
pub mod config;
pub mod handlers;
pub mod kv;
pub mod kv_cache;
pub mod kv_publisher;
pub mod server;
pub mod state;
pub mod test_tokenizer;

pub use config::MockConfig;
