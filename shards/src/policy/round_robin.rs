use super::{Policy, PolicyKind, RouteInput};
use crate::state::PoolView;
use crate::worker::WorkerId;

/// Next routable worker in turn. The counter is per shard: requests of one client
/// connection rotate exactly, and shards start at different offsets.
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub fn new(start: usize) -> Self {
        RoundRobin { next: start }
    }
}

impl Policy for RoundRobin {
    fn kind(&self) -> PolicyKind {
        PolicyKind::RoundRobin
    }

    fn pick(&mut self, workers: &PoolView<'_>, _: &RouteInput<'_>) -> Option<WorkerId> {
        let n = workers.routable_count();
        if n == 0 {
            return None;
        }
        let i = self.next % n;
        self.next = self.next.wrapping_add(1);
        Some(workers.routable_nth(i).spec.id)
    }
}
