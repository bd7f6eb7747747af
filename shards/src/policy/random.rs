use super::{Policy, PolicyKind, RouteInput};
use crate::state::PoolView;
use crate::worker::WorkerId;

/// Uniform choice over routable workers, from a per-shard xorshift generator (no
/// shared RNG, no syscalls).
pub struct Random {
    state: u64,
}

impl Random {
    pub fn new(seed: u64) -> Self {
        Random {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// xorshift64*: fast and good enough to spread load.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform sample in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Policy for Random {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Random
    }

    fn pick(&mut self, workers: &PoolView<'_>, _: &RouteInput<'_>) -> Option<WorkerId> {
        let n = workers.routable_count();
        if n == 0 {
            return None;
        }
        let i = ((self.next_u64() >> 32) * n as u64) >> 32;
        Some(workers.routable_nth(i as usize).spec.id)
    }
}
