//! The client side of a shard: accepting connections and reading requests from them.

mod admin;
mod auth;
mod connection;
mod endpoints;
mod session;

use crate::shard::Shard;
use futures_lite::FutureExt;
use glommio::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

/// Pause after a failed accept (EMFILE, ENFILE, ENOBUFS): the condition lasts until
/// connections close, so retrying at once would spin; 10 ms is far below a client's
/// connect timeout.
const ACCEPT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Accepts until the task is dropped (drain). An accept error (EMFILE, say) is logged
/// and retried after a pause rather than ending the shard.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let s = shard.clone();
                let index = shard.index;
                // A panic is a bug, but it must cost one connection, not the shard.
                let guarded = AssertUnwindSafe(connection::serve(s, stream)).catch_unwind();
                if shard
                    .connections
                    .spawn(async move {
                        if guarded.await.is_err() {
                            crate::error!("shard {index}: a connection task panicked (bug); connection closed");
                        }
                    })
                    .map(|t| t.detach())
                    .is_err()
                {
                    return; // gate closed: draining
                }
            }
            Err(e) => {
                crate::warn!("shard {}: accept failed: {e}", shard.index);
                glommio::timer::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}
