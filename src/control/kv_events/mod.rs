//! Ingestion of vLLM's KV-cache events (`--policy kv_aware`, issue 22): ZMQ
//! subscribers on the control core feed an index of which worker holds which token
//! blocks, sent to the shards as deltas. Built in steps: so far the wire decoder, the index and the sequence tracker.

// The subscriber that uses them comes in the next step.
#[allow(dead_code)]
pub mod index;
#[allow(dead_code)]
pub mod sequence;
#[allow(dead_code)]
pub mod wire;
