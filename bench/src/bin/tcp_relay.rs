//! `tcp-relay`: the thinnest proxy there is, as a floor for the latency harness.
//!
//! Each accepted connection gets its own upstream connection and two threads, each
//! blocked in `read` on one side and writing what arrives to the other: no parsing, no
//! event loop, no pool, TCP_NODELAY on both sides. What it adds over going direct is
//! what the hops themselves cost on this machine (two loopback crossings and the
//! wake-ups of a sleeping thread), which no HTTP proxy can go below.
//!
//! ```sh
//! tcp-relay --port 8081 --upstream 127.0.0.1:8000
//! ```

use clap::Parser;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

/// Bytes copied per read: one SSE event or a request head fits many times over.
const COPY_BUFFER: usize = 16 * 1024;

#[derive(Parser)]
#[command(
    name = "tcp-relay",
    about = "A blocking TCP relay: the latency floor of a proxy hop"
)]
struct Args {
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    port: u16,
    /// Address to relay to, host:port.
    #[arg(long)]
    upstream: String,
}

fn main() {
    let args = Args::parse();
    let listener = match TcpListener::bind(("127.0.0.1", args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: bind 127.0.0.1:{}: {e}", args.port);
            std::process::exit(1);
        }
    };
    for client in listener.incoming().flatten() {
        let upstream = args.upstream.clone();
        thread::spawn(move || {
            if let Err(e) = relay(client, &upstream) {
                eprintln!("relay: {e}");
            }
        });
    }
}

/// Copies both ways until either side closes.
fn relay(client: TcpStream, upstream: &str) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let back = thread::spawn(move || copy(s2, c2));
    copy(client, server);
    let _ = back.join();
    Ok(())
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
