//! Ingestion of vLLM's KV-cache events (`--policy kv_aware`, issue 22): ZMQ
//! subscribers on the control core feed an index of which worker holds which token
//! blocks, sent to the shards as deltas. Built in steps; this one decodes the wire.

// The subscriber that uses it comes in the next step.
#[allow(dead_code)]
pub mod wire;
