//! One subscriber per event source (a worker's DP rank): a ZMQ SUB socket reading
//! live batches, a DEALER asking the replay endpoint for what a gap lost, and the
//! source's blocks in the index. What changes goes to every shard as a delta; a
//! malformed message is counted and dropped, never the end of ingestion.

use super::index::SourceBlocks;
use super::sequence::{Resume, Sequence, Step};
use super::sources::SourceSpec;
use super::wire::{decode_batch, split_message};
use crate::control::state::ControlState;
use bytes::Bytes;
use shards::kv_blocks::{BlockChanges, KvBlockDelta};
use shards::messages::{Delta, WorkerId};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// How long a replay may take before the gap counts as unfilled.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to wait before connecting again after the endpoint refused.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Who the events are about.
pub struct Target {
    pub worker: WorkerId,
    /// For the metrics' `worker` label.
    pub url: String,
    pub block_size: u32,
}

/// Subscribes to `spec` and keeps `target`'s blocks in the shards' indexes, forever
/// (the task is aborted when the worker leaves).
pub async fn run(state: Rc<RefCell<ControlState>>, spec: SourceSpec, target: Target) {
    let mut socket = loop {
        let mut s = zeromq::SubSocket::new();
        match s.connect(&spec.endpoint).await {
            Ok(()) => break s,
            Err(e) => {
                shards::debug!("kv events: {} not reachable yet: {e}", spec.endpoint);
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    };
    if let Err(e) = socket.subscribe(&spec.topic).await {
        shards::warn!("kv events: cannot subscribe to {}: {e}", spec.endpoint);
        return;
    }
    shards::info!(
        "kv events: subscribed to {} for {} (rank {})",
        spec.endpoint,
        target.url,
        spec.rank
    );
    let mut source = Source {
        state,
        blocks: SourceBlocks::new(target.block_size),
        seq: Sequence::default(),
        target,
        topic: spec.topic.clone(),
    };
    if let Some(endpoint) = spec.replay.as_deref() {
        source.catch_up(endpoint).await;
    }
    while let Ok(msg) = socket.recv().await {
        let frames: Vec<Bytes> = msg.into_vec();
        let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        source.live(&frames, spec.replay.as_deref()).await;
    }
    shards::warn!("kv events: {} closed", spec.endpoint);
}

/// One source's ingestion state.
struct Source {
    state: Rc<RefCell<ControlState>>,
    blocks: SourceBlocks,
    seq: Sequence,
    target: Target,
    topic: String,
}

impl Source {
    fn count(&self, f: impl FnOnce(&mut super::stats::KvWorkerStats)) {
        f(self.state.borrow_mut().kv.of(&self.target.url));
    }

    fn drop_message(&self, why: &'static str) {
        self.count(|s| *s.dropped.entry(why).or_default() += 1);
    }

    async fn live(&mut self, frames: &[&[u8]], replay: Option<&str>) {
        self.count(|s| s.received += 1);
        let Ok((seq, payload)) = split_message(frames) else {
            return self.drop_message("malformed");
        };
        if frames[0] != self.topic.as_bytes() && !self.topic.is_empty() {
            return self.drop_message("topic");
        }
        let mut changes = BlockChanges::default();
        match self.seq.live(seq) {
            Step::Apply => {}
            Step::Duplicate => return,
            Step::Restart => {
                self.count(|s| s.restarts += 1);
                self.blocks.purge(&mut changes);
            }
            Step::Gap { from } => {
                self.count(|s| s.gaps += 1);
                if let Some(endpoint) = replay {
                    self.count(|s| s.replays += 1);
                    self.replay(endpoint, from, &mut changes).await;
                }
                match self.seq.resume(seq) {
                    Resume::Covered => return self.publish(changes),
                    Resume::Filled => {}
                    Resume::Unfilled => self.blocks.purge(&mut changes),
                }
            }
        }
        self.apply(payload, &mut changes);
        self.publish(changes);
    }

    fn apply(&mut self, payload: &[u8], changes: &mut BlockChanges) {
        match decode_batch(payload) {
            Ok(batch) => {
                for e in &batch.events {
                    self.blocks.apply(e, changes);
                }
                let n = batch.events.len() as u64;
                let skipped = batch.skipped as u64;
                let rejected = self.blocks.take_rejections();
                self.count(|s| {
                    s.applied += n;
                    if skipped > 0 {
                        *s.dropped.entry("unknown_event").or_default() += skipped;
                    }
                    for (why, k) in rejected {
                        *s.dropped.entry(why.name()).or_default() += k;
                    }
                });
            }
            Err(e) => {
                shards::debug!("kv events from {}: {e}", self.target.url);
                self.drop_message("malformed");
            }
        }
    }

    /// Fills the new index from what the publisher still buffers (vLLM keeps its last
    /// `buffer_steps` batches): a restarted router, or one that just learned of a busy
    /// worker, starts knowing the worker's recent blocks instead of none. Blocks stored
    /// before the buffer's first batch stay unknown (their children are skipped as
    /// unanchored), which costs hits, never a wrong one.
    async fn catch_up(&mut self, endpoint: &str) {
        let mut changes = BlockChanges::default();
        self.count(|s| s.replays += 1);
        let before = self.blocks.len();
        self.replay(endpoint, 0, &mut changes).await;
        shards::info!(
            "kv events: {} blocks of {} from its replay buffer at start",
            self.blocks.len() - before,
            self.target.url
        );
        self.publish(changes);
    }

    /// Asks the replay endpoint for everything from `from` on, applying what is next.
    async fn replay(&mut self, endpoint: &str, from: i64, changes: &mut BlockChanges) {
        let mut dealer = zeromq::DealerSocket::new();
        let asked = async {
            dealer.connect(endpoint).await.map_err(|e| e.to_string())?;
            let request: Vec<Bytes> =
                vec![Bytes::new(), Bytes::copy_from_slice(&from.to_be_bytes())];
            let request = ZmqMessage::try_from(request).map_err(|e| e.to_string())?;
            dealer.send(request).await.map_err(|e| e.to_string())?;
            loop {
                let reply = dealer.recv().await.map_err(|e| e.to_string())?.into_vec();
                // [empty, topic, seq, payload]; the end is seq -1.
                let [_, _topic, seq, payload] = &reply[..] else {
                    return Err("a replay reply without four frames".to_string());
                };
                let Ok((seq, payload)) = split_message(&[&[], &seq[..], &payload[..]]) else {
                    return Err("a malformed replay reply".to_string());
                };
                if seq < 0 {
                    return Ok(());
                }
                self.count(|s| s.received += 1);
                if self.seq.replayed(seq) {
                    self.apply(payload, changes);
                }
            }
        };
        match tokio::time::timeout(REPLAY_TIMEOUT, asked).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shards::warn!("kv events: replay from {endpoint} failed: {e}"),
            Err(_) => shards::warn!("kv events: replay from {endpoint} timed out"),
        }
    }

    fn publish(&self, changes: BlockChanges) {
        let blocks = self.blocks.len() as u64;
        self.count(|s| s.blocks = blocks);
        if changes.is_empty() {
            return;
        }
        let delta = KvBlockDelta {
            worker: self.target.worker,
            block_size: self.target.block_size,
            changes,
        };
        self.state
            .borrow()
            .broadcast(Delta::KvBlocks(Arc::new(delta)));
    }
}
