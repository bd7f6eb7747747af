//! The mock's HTTP server: glommio executors sharing a port, the router's codec.

use super::handlers;
use super::state::{Conn, Shared};
use super::MockConfig;
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use shards::codec::body::BodyDecoder;
use shards::codec::request::RequestHead;
use shards::codec::Status;
use shards::ReadBuf;
use std::net::ToSocketAddrs;
use std::rc::Rc;
use std::sync::Arc;

/// Starts `cfg.threads` executors and blocks until they exit. With `--port 0` they
/// share a port the kernel chooses (SO_REUSEPORT); the port is printed on stderr.
pub fn run(mut cfg: MockConfig) -> std::io::Result<()> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let wanted = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {addr}")))?;
    // Port 0: one port for every executor (its default name says which).
    let reserved = shards::reserve_port(wanted).map_err(std::io::Error::other)?;
    cfg.port = reserved.addr.port();
    let shared = Shared::new(cfg.clone())?;
    let mut handles = Vec::new();
    let port = cfg.port;
    for i in 0..cfg.threads.max(1) {
        let shared = shared.clone();
        let addr = format!("{}:{}", cfg.host, port);
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let h = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("mock-{i}"))
            .io_memory(512 * 1024)
            .spawn(move || async move {
                let listener = match TcpListener::bind(addr.as_str()) {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot listen on {addr}: {e}")));
                        return;
                    }
                };
                loop {
                    let Ok(stream) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    glommio::spawn_local(serve(shared, stream)).detach();
                }
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("mock executor died"))?
            .map_err(std::io::Error::other)?;
        handles.push(h);
    }
    drop(reserved);
    eprintln!("mock-vllm {} listening on {}:{port}", shared.name, cfg.host);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let mut c = Conn {
        stream,
        rbuf: ReadBuf::with_capacity(16 * 1024),
        head: RequestHead::default(),
        body: Vec::new(),
        out: Vec::new(),
        worker: shared.name.clone(),
    };
    let shared = Rc::new(shared);
    loop {
        // Head.
        loop {
            if !c.rbuf.is_empty() {
                match c.head.parse(c.rbuf.filled()) {
                    Ok(Status::Complete(n)) => {
                        c.rbuf.consume(n);
                        break;
                    }
                    Ok(Status::Partial) => {}
                    Err(e) => {
                        let _ = c
                            .stream
                            .write_all(format!("HTTP/1.1 {} Bad\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", e.status()).as_bytes())
                            .await;
                        return;
                    }
                }
            }
            match c.rbuf.read_from(&mut c.stream, 1 << 20).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        // Body, de-chunked.
        c.body.clear();
        let mut dec = BodyDecoder::new(c.head.framing);
        if c.head.expect_continue && c.rbuf.is_empty() && !dec.is_done() {
            let _ = c.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        loop {
            let body = &mut c.body;
            let Ok(p) = dec.feed(c.rbuf.filled(), |d| body.extend_from_slice(d)) else {
                return;
            };
            c.rbuf.consume(p.consumed);
            if p.done || dec.is_done() {
                break;
            }
            match c.rbuf.read_from(&mut c.stream, 1 << 20).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let keep = handlers::handle(&shared, &mut c).await;
        if !keep || !c.head.keep_alive {
            let _ = c.stream.close().await;
            return;
        }
    }
}
