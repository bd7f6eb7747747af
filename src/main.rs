//! The `vllm-router` binary; everything is in the library (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    vllm_router::main()
}
