//! Routing mode 3: prefill/decode disaggregation (not built yet).
//!
//! The design it slots into: the pipeline buffers and parses the JSON body (as in
//! mode 2), rewrites it for the prefill leg (`max_tokens: 1`, `stream: false`,
//! `kv_transfer_params` asking for remote decode), runs that leg through
//! `forward::exchange` with the whole answer buffered, reads `kv_transfer_params`
//! from it, then runs the decode leg with the original body plus those params and
//! relays its answer to the client like any other. Both legs use the same pool,
//! deadline and cancellation as a single-leg request. Until it lands the CLI refuses
//! `--vllm-pd-disaggregation` with a "not supported yet" error.
