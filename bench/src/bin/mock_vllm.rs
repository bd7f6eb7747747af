//! `mock-vllm`: a fast mock vLLM worker. See `vllm_router_bench::mock`.

use clap::Parser;
use vllm_router_bench::mock::{server, MockConfig};

fn main() {
    let cfg = MockConfig::parse();
    if let Err(e) = server::run(cfg) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
