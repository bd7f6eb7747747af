//! Benchmarking harness and the mock vLLM worker used by tests and benchmarks.

pub mod fixtures;
pub mod loadgen;
pub mod mock;
