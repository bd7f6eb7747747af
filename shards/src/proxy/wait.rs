//! Waiting on a worker while watching the client and the request's deadline.
//!
//! While a request is with a worker, the client may leave. Reading from the client
//! socket at the same time notices that at once (EOF), so the worker's connection is
//! closed and vLLM aborts the generation instead of computing for nobody. Bytes the
//! client sends meanwhile (a pipelined next request) are kept in its buffer.

use crate::client::Client;
use crate::codec::limits::MAX_REQUEST_HEAD_BYTES;
use crate::deadline::Deadline;
use crate::pool::Upstream;
use futures_lite::future::{or, pending};
use std::io;

/// What ended a wait.
pub enum Wake {
    /// A read from the worker finished (0 = the worker closed).
    Upstream(io::Result<usize>),
    /// The client closed or failed: the request is abandoned.
    ClientGone,
    /// The request's deadline passed.
    Deadline,
}

/// Tracks whether the client socket is still worth watching.
pub struct ClientWatch {
    enabled: bool,
}

impl ClientWatch {
    pub fn new() -> Self {
        ClientWatch { enabled: true }
    }
}

impl Default for ClientWatch {
    fn default() -> Self {
        Self::new()
    }
}

/// One read from the worker into its buffer (growing up to `max`), raced against the
/// client leaving and the deadline.
pub async fn read_upstream(
    up: &mut Upstream,
    max: usize,
    c: &mut Client,
    watch: &mut ClientWatch,
    deadline: &mut Deadline<'_>,
) -> Wake {
    let upstream = async { Wake::Upstream(up.rbuf.read_from(&mut up.stream, max).await) };
    let client = async {
        client_leaves(c, watch).await;
        Wake::ClientGone
    };
    let expired = async {
        (&mut *deadline).await;
        Wake::Deadline
    };
    or(upstream, or(client, expired)).await
}

/// Reads the client socket until it closes or fails. Bytes it sends meanwhile (a body,
/// pipelined requests) stay in its buffer; once that buffer is full the socket is left
/// alone (a write to a gone client still fails later), and this never returns.
async fn client_leaves(c: &mut Client, watch: &mut ClientWatch) {
    loop {
        if !watch.enabled {
            return pending().await;
        }
        match c
            .rbuf
            .read_from(&mut c.stream, MAX_REQUEST_HEAD_BYTES)
            .await
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => watch.enabled = false,
            Err(_) => return,
        }
    }
}

/// What ended `watch_client`.
pub enum Waited<T> {
    Done(T),
    ClientGone,
    Deadline,
}

/// Awaits `fut` (a backoff pause, a place in the admission queue) while watching the
/// client and a deadline, so a client that leaves stops waiting at once.
pub async fn watch_client<T>(
    fut: impl std::future::Future<Output = T>,
    c: &mut Client,
    watch: &mut ClientWatch,
    deadline: &mut Deadline<'_>,
) -> Waited<T> {
    let fut = async { Waited::Done(fut.await) };
    let client = async {
        client_leaves(c, watch).await;
        Waited::ClientGone
    };
    let expired = async {
        (&mut *deadline).await;
        Waited::Deadline
    };
    or(fut, or(client, expired)).await
}
