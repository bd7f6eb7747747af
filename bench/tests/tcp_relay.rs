//! `tcp-relay`, the latency floor in bench/latency.py: bytes pass unchanged both ways
//! over one connection, and the worker's side closes when the client leaves.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::Kill;

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn relays_both_ways_and_closes_the_worker_side_when_the_client_leaves() {
    // The test plays the worker.
    let worker = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = worker.local_addr().unwrap().to_string();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _relay = Kill(
        Command::new(env!("CARGO_BIN_EXE_tcp-relay"))
            .args(["--port", &port.to_string(), "--upstream", &upstream])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "relay did not start: {e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut server, _) = worker.accept().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for n in 0..3 {
        let ask = format!("POST /v1/completions HTTP/1.1\r\ncontent-length: 1\r\n\r\n{n}");
        client.write_all(ask.as_bytes()).unwrap();
        assert_eq!(read_exactly(&mut server, ask.len()), ask.as_bytes());
        let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n-{n}");
        server.write_all(reply.as_bytes()).unwrap();
        assert_eq!(read_exactly(&mut client, reply.len()), reply.as_bytes());
    }
    drop(client);
    // Within the read timeout the worker sees end of stream, not more bytes.
    let mut rest = Vec::new();
    assert_eq!(server.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
}
