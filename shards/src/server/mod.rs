//! The client side of a shard: accepting connections and reading requests from them.

mod connection;
mod endpoints;

pub use connection::Client;

use crate::shard::Shard;
use glommio::net::TcpListener;
use std::rc::Rc;

/// Accepts until the task is dropped (drain). An accept error (EMFILE, say) is logged
/// and retried after a pause rather than ending the shard.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let s = shard.clone();
                if shard
                    .connections
                    .spawn(async move { connection::serve(s, stream).await })
                    .map(|t| t.detach())
                    .is_err()
                {
                    return; // gate closed: draining
                }
            }
            Err(e) => {
                crate::warn!("shard {}: accept failed: {e}", shard.index);
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
