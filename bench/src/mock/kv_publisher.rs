//! Publishes the mock's KV events the way vLLM's `ZmqEventPublisher` does: a PUB
//! socket sending `[topic, seq (8 bytes, big-endian), msgpack batch]`, the batch
//! `[ts, [events...], data_parallel_rank]`, and an optional ROUTER socket that replays
//! buffered batches from a requested sequence number (`[identity, "", start_seq]` in;
//! `[identity, "", topic, seq, batch]` out, ended by seq -1 with an empty payload).
//!
//! It runs on a thread of its own with a tokio runtime (the zeromq crate needs one);
//! the glommio executors hand it events over a channel.

use super::kv_cache::{encode_event, CacheEvent};
use bytes::Bytes;
use rmpv::Value;
use std::collections::VecDeque;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// Batches kept for replay (vLLM's default `buffer_steps` is 10,000).
const REPLAY_BUFFER: usize = 10_000;

/// The executors' end.
#[derive(Clone)]
pub struct KvPublisher {
    tx: mpsc::UnboundedSender<Vec<CacheEvent>>,
}

impl KvPublisher {
    /// Sends one batch (nothing when `events` is empty).
    pub fn publish(&self, events: Vec<CacheEvent>) {
        if !events.is_empty() {
            let _ = self.tx.send(events);
        }
    }
}

/// What the publisher needs to know.
pub struct PublisherConfig {
    pub host: String,
    pub port: u16,
    pub replay_port: Option<u16>,
    pub block_size: usize,
    /// Events as arrays (vLLM) or tagged maps; batches as arrays (vLLM) or maps.
    pub positional_events: bool,
    pub positional_batch: bool,
    pub skip_every: u64,
}

/// Binds the sockets and starts the thread; errors when a port cannot be bound.
pub fn start(cfg: PublisherConfig) -> std::io::Result<KvPublisher> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("mock-kv-events".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(run(cfg, rx, ready_tx));
        })?;
    ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("the KV event publisher died"))?
        .map_err(std::io::Error::other)?;
    Ok(KvPublisher { tx })
}

async fn run(
    cfg: PublisherConfig,
    mut rx: mpsc::UnboundedReceiver<Vec<CacheEvent>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut publisher = zeromq::PubSocket::new();
    let endpoint = format!("tcp://{}:{}", cfg.host, cfg.port);
    if let Err(e) = publisher.bind(&endpoint).await {
        let _ = ready.send(Err(format!("cannot bind {endpoint}: {e}")));
        return;
    }
    let mut replay = None;
    if let Some(p) = cfg.replay_port {
        let mut r = zeromq::RouterSocket::new();
        let endpoint = format!("tcp://{}:{p}", cfg.host);
        if let Err(e) = r.bind(&endpoint).await {
            let _ = ready.send(Err(format!("cannot bind {endpoint}: {e}")));
            return;
        }
        replay = Some(r);
    }
    let _ = ready.send(Ok(()));
    let mut buffer: VecDeque<(i64, Bytes)> = VecDeque::new();
    let mut seq: i64 = 0;
    loop {
        let request = async {
            match replay.as_mut() {
                Some(r) => r.recv().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            events = rx.recv() => {
                let Some(events) = events else { return };
                let payload = encode_batch(&events, &cfg);
                buffer.push_back((seq, payload.clone()));
                if buffer.len() > REPLAY_BUFFER {
                    buffer.pop_front();
                }
                let skipped = cfg.skip_every > 0 && (seq as u64 + 1).is_multiple_of(cfg.skip_every);
                if !skipped {
                    let _ = publisher.send(frames(vec![
                        Bytes::new(),
                        Bytes::copy_from_slice(&seq.to_be_bytes()),
                        payload,
                    ])).await;
                }
                seq += 1;
            }
            Some(msg) = request => {
                if let Some(r) = replay.as_mut() {
                    answer_replay(r, msg, &buffer).await;
                }
            }
        }
    }
}

fn frames(f: Vec<Bytes>) -> ZmqMessage {
    ZmqMessage::try_from(f).expect("at least one frame")
}

async fn answer_replay(
    r: &mut zeromq::RouterSocket,
    msg: ZmqMessage,
    buffer: &VecDeque<(i64, Bytes)>,
) {
    let f = msg.into_vec();
    let (Some(identity), Some(start)) = (f.first(), f.last()) else {
        return;
    };
    let Ok(start) = <[u8; 8]>::try_from(&start[..]) else {
        return;
    };
    let start = i64::from_be_bytes(start);
    for (s, payload) in buffer.iter().filter(|(s, _)| *s >= start) {
        let m = frames(vec![
            identity.clone(),
            Bytes::new(),
            Bytes::new(),
            Bytes::copy_from_slice(&s.to_be_bytes()),
            payload.clone(),
        ]);
        if r.send(m).await.is_err() {
            return;
        }
    }
    let end = frames(vec![
        identity.clone(),
        Bytes::new(),
        Bytes::new(),
        Bytes::copy_from_slice(&(-1i64).to_be_bytes()),
        Bytes::new(),
    ]);
    let _ = r.send(end).await;
}

/// One batch's msgpack payload, as `cfg` says to encode it.
pub fn encode_batch(events: &[CacheEvent], cfg: &PublisherConfig) -> Bytes {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let events = Value::Array(
        events
            .iter()
            .map(|e| encode_event(e, cfg.block_size, cfg.positional_events))
            .collect(),
    );
    let batch = if cfg.positional_batch {
        Value::Array(vec![Value::F64(ts), events, Value::from(0)])
    } else {
        Value::Map(vec![
            (Value::from("ts"), Value::F64(ts)),
            (Value::from("events"), events),
            (Value::from("data_parallel_rank"), Value::from(0)),
        ])
    };
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &batch).expect("writing to a Vec");
    Bytes::from(out)
}
