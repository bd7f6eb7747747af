//! A shard's copy of which worker holds which KV blocks (kv_aware), kept from the
//! control core's `Delta::KvBlocks`: the design's shared-nothing rule, so a lookup
//! touches no lock. Blocks are named by the router's chained hash of their tokens
//! (`kv_blocks`), so a request's block names look up every worker at once.

use crate::kv_blocks::{BlockChanges, Medium};
use crate::worker::WorkerId;
use smallvec::SmallVec;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

/// The media bit of a provisional copy: a block a request just routed to the worker
/// will leave there. Looked up as if on the GPU, so a burst of one new prefix follows
/// its first request instead of scattering before the worker's events say so.
const PROVISIONAL: u8 = 0x80;

/// Provisional copies one shard keeps at most (about 40 bytes each); past it no new
/// ones are made until old ones expire.
const MAX_PROVISIONAL: usize = 1 << 20;

/// Block names are already hashes: the map uses them as they are (SipHash was a third
/// of a lookup).
#[derive(Default)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// No place in a lookup's output.
const NONE: u32 = u32::MAX;

/// One worker holding a block, in which media (bits of [`Medium::bit`]).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Owner {
    worker: WorkerId,
    media: u8,
}

/// How deep a worker holds a request's leading blocks, per medium: blocks `0..device`
/// on its GPU; `0..host` on its GPU or in host memory; `0..disk` on its GPU or disk;
/// `0..external` on its GPU or outside it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Depth {
    pub worker: WorkerId,
    pub device: usize,
    pub host: usize,
    pub disk: usize,
    pub external: usize,
    /// Of the `device` blocks, those only provisionally there: requests in flight are
    /// computing them.
    pub provisional: usize,
}

#[derive(Default)]
pub struct KvIndex {
    blocks: HashMap<u64, SmallVec<[Owner; 2]>, BuildHasherDefault<NameHasher>>,
    /// Blocks held per worker id.
    held: Vec<usize>,
    /// Tokens per block, per worker id (0: no events yet).
    block_sizes: Vec<u32>,
    /// Per worker id, its place in a lookup's output (scratch, reused).
    slot: Vec<u32>,
    /// Provisional copies in the order they expire.
    provisional: VecDeque<(Instant, WorkerId, u64)>,
}

impl KvIndex {
    /// Blocks `worker` holds (any medium).
    pub fn held(&self, worker: WorkerId) -> usize {
        self.held.get(worker as usize).copied().unwrap_or(0)
    }

    fn count(&mut self, worker: WorkerId, up: bool) {
        let i = worker as usize;
        if self.held.len() <= i {
            self.held.resize(i + 1, 0);
        }
        if up {
            self.held[i] += 1;
        } else {
            self.held[i] = self.held[i].saturating_sub(1);
        }
    }

    /// Tokens per block on `worker` (0 before its first events).
    pub fn block_size(&self, worker: WorkerId) -> u32 {
        self.block_sizes.get(worker as usize).copied().unwrap_or(0)
    }

    /// Records a worker's block size.
    pub fn set_block_size(&mut self, worker: WorkerId, size: u32) {
        let i = worker as usize;
        if self.block_sizes.len() <= i {
            self.block_sizes.resize(i + 1, 0);
        }
        self.block_sizes[i] = size;
    }

    /// Applies one worker's changes.
    pub fn apply(&mut self, worker: WorkerId, c: &BlockChanges) {
        if c.cleared {
            self.forget(worker);
        }
        for (name, m) in &c.stored {
            let owners = self.blocks.entry(*name).or_default();
            match owners.iter_mut().find(|o| o.worker == worker) {
                Some(o) => o.media |= m.bit(),
                None => {
                    owners.push(Owner {
                        worker,
                        media: m.bit(),
                    });
                    self.count(worker, true);
                }
            }
        }
        for (name, m) in &c.removed {
            let Some(owners) = self.blocks.get_mut(name) else {
                continue;
            };
            let Some(i) = owners.iter().position(|o| o.worker == worker) else {
                continue;
            };
            // A block the worker dropped is not coming back provisionally either.
            owners[i].media &= !(m.bit() | PROVISIONAL);
            if owners[i].media == 0 {
                owners.swap_remove(i);
                let empty = owners.is_empty();
                if empty {
                    self.blocks.remove(name);
                }
                self.count(worker, false);
            }
        }
    }

    /// Drops everything `worker` holds (it left, or its events were lost).
    pub fn forget(&mut self, worker: WorkerId) {
        if self.held(worker) == 0 {
            return;
        }
        self.blocks.retain(|_, owners| {
            owners.retain(|o| o.worker != worker);
            !owners.is_empty()
        });
        self.held[worker as usize] = 0;
    }

    /// Notes that `worker` will soon hold `names` on its GPU (it was just sent a request
    /// for them), until its events say so or `until` (`--kv-provisional-ttl-secs`: longer
    /// than a long prompt's prefill behind a queue plus the events' way back, short
    /// enough that a request that failed misleads only briefly).
    pub fn provisional(&mut self, worker: WorkerId, names: &[u64], now: Instant, until: Instant) {
        self.expire(now);
        if self.provisional.len() + names.len() > MAX_PROVISIONAL {
            return;
        }
        for name in names {
            let owners = self.blocks.entry(*name).or_default();
            match owners.iter_mut().find(|o| o.worker == worker) {
                Some(o) if o.media & (Medium::Device.bit() | PROVISIONAL) != 0 => continue,
                Some(o) => o.media |= PROVISIONAL,
                None => {
                    owners.push(Owner {
                        worker,
                        media: PROVISIONAL,
                    });
                    self.count(worker, true);
                }
            }
            self.provisional.push_back((until, worker, *name));
        }
    }

    /// Drops the provisional copies that expired by `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, worker, name)) = self.provisional.front() {
            if at > now {
                break;
            }
            self.provisional.pop_front();
            let Some(owners) = self.blocks.get_mut(&name) else {
                continue;
            };
            let Some(i) = owners.iter().position(|o| o.worker == worker) else {
                continue;
            };
            owners[i].media &= !PROVISIONAL;
            if owners[i].media == 0 {
                owners.swap_remove(i);
                if owners.is_empty() {
                    self.blocks.remove(&name);
                }
                self.count(worker, false);
            }
        }
    }

    /// For each worker holding the first of `names`, how deep it holds them (into
    /// `out`, cleared first). Each block costs a lookup and a step per owner.
    /// Names are taken lazily: a prompt's blocks past the deepest holder are never
    /// named (most of a long prompt, usually).
    pub fn depths(&mut self, names: impl IntoIterator<Item = u64>, out: &mut Vec<Depth>) {
        // The previous lookup's places (kept for `depth_of`) are forgotten first.
        for d in out.iter() {
            self.slot[d.worker as usize] = NONE;
        }
        out.clear();
        for (i, name) in names.into_iter().enumerate() {
            let Some(owners) = self.blocks.get(&name) else {
                break;
            };
            let mut any = false;
            for o in owners {
                let w = o.worker as usize;
                if i == 0 {
                    if self.slot.len() <= w {
                        self.slot.resize(w + 1, NONE);
                    }
                    self.slot[w] = out.len() as u32;
                    out.push(Depth {
                        worker: o.worker,
                        ..Depth::default()
                    });
                }
                let Some(&at) = self.slot.get(w).filter(|s| **s != NONE) else {
                    continue;
                };
                let d = &mut out[at as usize];
                let dev = o.media & (Medium::Device.bit() | PROVISIONAL) != 0;
                if d.device == i && dev {
                    d.device += 1;
                    if o.media & Medium::Device.bit() == 0 {
                        d.provisional += 1;
                    }
                    any = true;
                }
                if d.host == i && (dev || o.media & Medium::Host.bit() != 0) {
                    d.host += 1;
                    any = true;
                }
                if d.disk == i && (dev || o.media & Medium::Disk.bit() != 0) {
                    d.disk += 1;
                    any = true;
                }
                if d.external == i && (dev || o.media & Medium::External.bit() != 0) {
                    d.external += 1;
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
    }

    /// `worker`'s entry in the output of the last [`KvIndex::depths`] (given again).
    pub fn depth_of<'a>(&self, worker: WorkerId, out: &'a [Depth]) -> Option<&'a Depth> {
        let at = *self.slot.get(worker as usize)?;
        out.get(at as usize).filter(|d| d.worker == worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(names: &[u64], m: Medium) -> BlockChanges {
        BlockChanges {
            stored: names.iter().map(|n| (*n, m)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn depth_per_medium_and_removal() {
        let mut x = KvIndex::default();
        x.apply(1, &stored(&[10, 11, 12], Medium::Device));
        x.apply(2, &stored(&[10], Medium::Device));
        x.apply(2, &stored(&[11, 12, 13], Medium::Host));
        x.apply(2, &stored(&[11], Medium::External));
        let mut d = Vec::new();
        x.depths([10, 11, 12, 13], &mut d);
        d.sort_by_key(|d| d.worker);
        assert_eq!(
            d,
            vec![
                Depth {
                    worker: 1,
                    device: 3,
                    host: 3,
                    disk: 3,
                    external: 3,
                    provisional: 0,
                },
                Depth {
                    worker: 2,
                    device: 1,
                    host: 4,
                    disk: 1,
                    external: 2,
                    provisional: 0,
                },
            ]
        );
        x.apply(
            1,
            &BlockChanges {
                removed: vec![(11, Medium::Device)],
                ..Default::default()
            },
        );
        x.depths([10, 11, 12], &mut d);
        let one = d.iter().find(|d| d.worker == 1).unwrap();
        assert_eq!(one.device, 1, "a hole ends the prefix");
        assert_eq!(x.held(1), 2);
        x.forget(2);
        x.depths([10], &mut d);
        assert_eq!(d.len(), 1);
        assert_eq!(x.held(2), 0);
    }

    #[test]
    fn a_cleared_worker_holds_nothing() {
        let mut x = KvIndex::default();
        x.apply(3, &stored(&[1, 2], Medium::Device));
        let mut c = stored(&[7], Medium::Device);
        c.cleared = true;
        x.apply(3, &c);
        let mut d = Vec::new();
        x.depths([1, 2], &mut d);
        assert!(d.is_empty());
        assert_eq!(x.held(3), 1);
    }

    #[test]
    fn a_provisional_copy_counts_as_on_the_gpu_until_it_expires_or_is_removed() {
        let mut x = KvIndex::default();
        let t0 = Instant::now();
        let later = t0 + std::time::Duration::from_secs(10);
        x.provisional(1, &[10, 11, 12], t0, later);
        let mut d = Vec::new();
        x.depths([10, 11, 12], &mut d);
        assert_eq!((d[0].worker, d[0].device, d[0].provisional), (1, 3, 3));
        // The worker's events confirm two; it drops the third.
        x.apply(1, &stored(&[10, 11], Medium::Device));
        x.apply(
            1,
            &BlockChanges {
                removed: vec![(12, Medium::Device)],
                ..Default::default()
            },
        );
        x.depths([10, 11, 12], &mut d);
        assert_eq!((d[0].device, d[0].provisional), (2, 0));
        // Expired: only what the events said is left.
        x.provisional(2, &[10], t0, later);
        x.expire(later);
        x.depths([10, 11, 12], &mut d);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].worker, d[0].device), (1, 2));
        assert_eq!((x.held(1), x.held(2)), (2, 0));
    }
}
