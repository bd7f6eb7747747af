//! Power of two choices: two distinct random routable workers, the less loaded wins.
//! Load is the router's requests in flight to the worker over all shards: this
//! shard's own count, exact and current, plus the other shards' counts from the
//! control core's last view (rebroadcast every 50 ms when it changes).

use super::{Policy, PolicyKind, Random, RouteInput};
use crate::state::PoolView;
use crate::worker::WorkerId;

pub struct PowerOfTwo {
    rng: Random,
}

impl PowerOfTwo {
    pub fn new(seed: u64) -> Self {
        PowerOfTwo {
            rng: Random::new(seed),
        }
    }
}

impl Policy for PowerOfTwo {
    fn kind(&self) -> PolicyKind {
        PolicyKind::PowerOfTwo
    }

    fn pick(&mut self, workers: &PoolView<'_>, _: &RouteInput<'_>) -> Option<WorkerId> {
        let n = workers.routable_count();
        match n {
            0 => None,
            1 => Some(workers.routable_nth(0).spec.id),
            _ => {
                let a = (self.rng.next_u64() % n as u64) as usize;
                let mut b = (self.rng.next_u64() % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                let (wa, wb) = (workers.routable_nth(a), workers.routable_nth(b));
                Some(if wb.load() < wa.load() {
                    wb.spec.id
                } else {
                    wa.spec.id
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::request::RequestHead;
    use crate::worker::WorkerRole;

    #[test]
    fn avoids_the_loaded_worker() {
        let mut s = crate::state::test_workers(2);
        s.get_mut(0).unwrap().remote_load = 5;
        let mut p = PowerOfTwo::new(3);
        let h = RequestHead::default();
        for _ in 0..20 {
            assert_eq!(
                p.pick(
                    &s.view(WorkerRole::Regular, &[]),
                    &RouteInput {
                        head: &h,
                        json: None,
                        tokens: None,
                    }
                ),
                Some(1)
            );
        }
    }
}
