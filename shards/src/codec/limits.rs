//! Every bound the codec enforces, in one place, each with the reason for its size.

/// Largest request head (request line + header fields) read from a client.
/// OpenAI clients send a few hundred bytes; 64 KiB leaves room for long auth
/// tokens and tracing baggage while bounding what a slowloris can pin per connection.
/// Past it the client gets 431.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Header fields accepted in one head. httparse parses into a fixed array of this
/// size on the stack; 100 is what hyper allows by default. Past it: 431.
pub const MAX_HEADERS: usize = 100;

/// Longest request-target. RFC 9112 §3 recommends supporting at least 8000 octets;
/// generation requests carry their payload in the body, so nothing longer is legitimate.
/// Past it: 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Largest response head accepted from a worker. vLLM's heads are small; a larger one
/// means a broken upstream, answered 502.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// Longest chunk-size line (hex size plus chunk extensions). Extensions are ignored;
/// bounding them stops a peer from streaming an endless size line (hyper uses 4 KiB
/// for the whole extension budget per chunk).
pub const MAX_CHUNK_SIZE_LINE_BYTES: usize = 4 * 1024;

/// Total bytes of chunked trailer fields accepted. Trailers are forwarded verbatim
/// but never interpreted; 16 KiB is generous for checksums and tracing.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Initial read buffer per client and per upstream connection. One typical chat
/// request or one burst of SSE events fits without growing.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Default body limit when none is configured (`--max-payload-size`): 512 MiB, the
/// published router's default.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 512 * 1024 * 1024;
