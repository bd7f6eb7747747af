//! `mock-vllm`: a fast mock vLLM worker. See `vllm_router_bench::mock`.

use clap::Parser;
use vllm_router_bench::mock::{server, MockConfig};

fn main() {
    let cfg = MockConfig::parse();
    if let Some(dir) = &cfg.write_test_tokenizer {
        if let Err(e) = vllm_router_bench::mock::test_tokenizer::write(dir) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = server::run(cfg) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
