//! cache_aware's routing trees across shards: inserts forwarded from the shard that
//! routed to every other, and the periodic eviction; kv_aware's provisional copies
//! forwarded the same way.

use super::state::ControlState;
use shards::kv_blocks::ProvisionalBlocks;
use shards::messages::{Delta, RoutedText};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// One shard's batch of inserts goes to every other shard (one shared copy).
pub fn forward_inserts(s: &ControlState, from: usize, inserts: Vec<RoutedText>) {
    let batch = Arc::new(inserts);
    to_others(s, from, || Delta::CacheInserts(batch.clone()));
}

/// One shard's batch of kv_aware provisional copies goes to every other shard.
pub fn forward_provisional(s: &ControlState, from: usize, notes: Vec<ProvisionalBlocks>) {
    let batch = Arc::new(notes);
    to_others(s, from, || Delta::KvProvisional(batch.clone()));
}

fn to_others(s: &ControlState, from: usize, delta: impl Fn() -> Delta) {
    for (i, link) in s.links.iter().enumerate() {
        if i != from {
            link.send(delta());
        }
    }
}

/// Periodic LRU eviction of the shards' cache_aware trees, by delta.
pub async fn eviction_loop(state: Rc<RefCell<ControlState>>, every: Duration, max: usize) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        state.borrow().broadcast(Delta::CacheEvict { max });
    }
}
