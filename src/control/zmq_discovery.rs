//! vLLM P/D discovery for the NCCL connector (`--vllm-discovery-address`).
//!
//! Each vLLM instance started with `P2pNcclConnector` connects a ZMQ DEALER socket to
//! the router and sends, every few seconds, a msgpack map
//! `{"type": "P"|"D", "http_address": "host:port", "zmq_address": "host:port"}`. The
//! control core binds a ZMQ ROUTER socket (the pure-Rust `zeromq` crate, on its own
//! tokio runtime), adds the instance to the prefill or decode pool at its first
//! heartbeat, and removes it [`EXPIRY`] after its last. P/D request ids name these
//! workers by their ZMQ address. Static `--prefill`/`--decode` workers are unaffected.

use super::ControlState;
use shards::messages::WorkerRole;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use zeromq::{Socket, SocketRecv};

/// An instance silent this long is gone (vLLM's own proxy uses the same 5 s).
pub const EXPIRY: Duration = Duration::from_secs(5);

/// How often expired instances are looked for.
const EXPIRY_CHECK: Duration = Duration::from_millis(500);

/// One decoded heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub role: WorkerRole,
    pub http_address: String,
    pub zmq_address: String,
}

/// Decodes a heartbeat's msgpack payload.
pub fn parse_heartbeat(payload: &[u8]) -> Result<Heartbeat, String> {
    let value =
        rmpv::decode::read_value(&mut &payload[..]).map_err(|e| format!("not msgpack: {e}"))?;
    let map = value.as_map().ok_or("not a msgpack map")?;
    let field = |name: &str| {
        map.iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("no string field {name:?}"))
    };
    let role = match field("type")?.as_str() {
        "P" => WorkerRole::Prefill,
        "D" => WorkerRole::Decode,
        other => return Err(format!("unknown type {other:?} (expected P or D)")),
    };
    Ok(Heartbeat {
        role,
        http_address: field("http_address")?,
        zmq_address: field("zmq_address")?,
    })
}

/// An instance known from heartbeats.
struct Instance {
    last_seen: Instant,
}

/// Binds the ROUTER socket; an error stops the start-up (the address is wrong or taken).
pub async fn bind(address: &str) -> Result<zeromq::RouterSocket, String> {
    let mut socket = zeromq::RouterSocket::new();
    socket
        .bind(&format!("tcp://{address}"))
        .await
        .map_err(|e| format!("cannot bind the discovery socket on {address}: {e}"))?;
    Ok(socket)
}

/// Receives heartbeats and expires silent instances, forever.
pub async fn run(state: Rc<RefCell<ControlState>>, mut socket: zeromq::RouterSocket) {
    let mut known: HashMap<String, Instance> = HashMap::new();
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let Ok(msg) = msg else { continue };
                // ROUTER frames: the peer's identity, then the payload.
                let Some(payload) = msg.into_vec().pop() else { continue };
                match parse_heartbeat(&payload) {
                    Ok(hb) => heartbeat(&state, &mut known, hb),
                    Err(e) => shards::debug!("discovery: ignored a message: {e}"),
                }
            }
            _ = expiry.tick() => expire(&state, &mut known),
        }
    }
}

fn heartbeat(
    state: &Rc<RefCell<ControlState>>,
    known: &mut HashMap<String, Instance>,
    hb: Heartbeat,
) {
    if let Some(i) = known.get_mut(&hb.http_address) {
        i.last_seen = Instant::now();
        return;
    }
    let url = format!("http://{}", hb.http_address);
    let mut s = state.borrow_mut();
    // A heartbeat is a sign of life; the health checks take over from here.
    match s.add_worker(&url, hb.role, true, Some(&hb.zmq_address)) {
        Ok(_) => {}
        Err(e) => {
            shards::warn!("discovery: {} {e}", hb.http_address);
            return;
        }
    }
    s.discovery_updates += 1;
    s.discovery_added += 1;
    shards::info!(
        "discovery: {} worker {url} joined (zmq {})",
        hb.role.name(),
        hb.zmq_address
    );
    known.insert(
        hb.http_address,
        Instance {
            last_seen: Instant::now(),
        },
    );
}

fn expire(state: &Rc<RefCell<ControlState>>, known: &mut HashMap<String, Instance>) {
    let now = Instant::now();
    let gone: Vec<String> = known
        .iter()
        .filter(|(_, i)| now.duration_since(i.last_seen) > EXPIRY)
        .map(|(a, _)| a.clone())
        .collect();
    for address in gone {
        known.remove(&address);
        let mut s = state.borrow_mut();
        s.remove_worker(&format!("http://{address}"));
        s.discovery_updates += 1;
        s.discovery_removed += 1;
        let secs = EXPIRY.as_secs();
        shards::info!("discovery: worker http://{address} expired (no heartbeat for {secs}s)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn decodes_vllm_heartbeats() {
        let hb = encode(&Value::Map(vec![
            (Value::from("type"), Value::from("P")),
            (Value::from("http_address"), Value::from("10.0.0.1:8100")),
            (Value::from("zmq_address"), Value::from("10.0.0.1:21001")),
        ]));
        assert_eq!(
            parse_heartbeat(&hb).unwrap(),
            Heartbeat {
                role: WorkerRole::Prefill,
                http_address: "10.0.0.1:8100".into(),
                zmq_address: "10.0.0.1:21001".into(),
            }
        );
        let bad = encode(&Value::Map(vec![(Value::from("type"), Value::from("X"))]));
        assert!(parse_heartbeat(&bad).unwrap_err().contains("unknown type"));
        assert!(parse_heartbeat(b"\xc1").is_err());
    }
}
