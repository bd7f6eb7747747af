//! The client side of a shard: accepting connections and reading requests from them.

mod admin;
mod auth;
mod connection;
mod endpoints;
mod session;

use crate::shard::Shard;
use glommio::net::{TcpListener, TcpStream};
use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

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
                let Ok(pass) = shard.connections.enter() else {
                    return; // gate closed: draining
                };
                spawn_connection(&shard, stream, pass, Instant::now());
            }
            Err(e) => {
                crate::warn!("shard {}: accept failed: {e}", shard.index);
                glommio::timer::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

/// Starts the task that serves one client connection, idle since `idle_since`.
fn spawn_connection(
    shard: &Rc<Shard>,
    stream: TcpStream,
    pass: glommio::sync::Pass,
    idle_since: Instant,
) {
    let serve = connection::serve(shard.clone(), stream, pass, idle_since);
    let task = Contained {
        serve,
        shard: shard.index,
    };
    glommio::spawn_local(task).detach();
}

/// Serves the dormant connections whose clients spoke again (`crate::dormant`): one
/// poll on the shard's epoll set for all of them. Ends when dropped (drain).
pub async fn wake_dormant(shard: Rc<Shard>) {
    let mut woken = Vec::new();
    loop {
        if let Err(e) = glommio::net::poll_readable(shard.dormant.raw_fd()).await {
            crate::error!(
                "shard {}: idle connections cannot be watched: {e}",
                shard.index
            );
            return;
        }
        loop {
            let more = shard.dormant.take_woken(&mut woken);
            for w in woken.drain(..) {
                let Ok(pass) = shard.connections.enter() else {
                    continue; // draining: the socket closes here
                };
                // SAFETY: the descriptor is the accepted socket, owned whole here.
                let stream = unsafe { TcpStream::from_raw_fd(w.socket.into_raw_fd()) };
                spawn_connection(&shard, stream, pass, w.idle_since);
            }
            if !more {
                break;
            }
        }
    }
}

/// A connection's task: its future, polled so that a panic in it (a bug) costs that
/// connection, not the shard. A plain struct rather than an `async` block around
/// the connection's future: a block that awaits a captured future holds it twice
/// (once captured, once awaited), and with glommio's gate wrapping it again a
/// connection's task took four times its future's size.
struct Contained<F> {
    serve: F,
    shard: usize,
}

impl<F: Future<Output = ()>> Future for Contained<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `serve` is structurally pinned: it is never moved out of `self`,
        // and `Contained` has no Drop of its own that could move it.
        let this = unsafe { self.get_unchecked_mut() };
        let serve = unsafe { Pin::new_unchecked(&mut this.serve) };
        match std::panic::catch_unwind(AssertUnwindSafe(|| serve.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                crate::error!(
                    "shard {}: a connection task panicked (bug); connection closed",
                    this.shard
                );
                Poll::Ready(())
            }
        }
    }
}
