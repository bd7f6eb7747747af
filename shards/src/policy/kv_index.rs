//! A shard's copy of which worker holds which KV blocks (kv_aware), kept from the
//! control core's `Delta::KvBlocks`: the design's shared-nothing rule, so a lookup
//! touches no lock. Blocks are named by the router's chained hash of their tokens
//! (`kv_blocks`), so a request's block names look up every worker at once.

use super::kv_holders::{slots, Holders, DEVICE, PROVISIONAL, SLOTS};
use crate::kv_blocks::{BlockChanges, Medium};
use crate::prehashed::PrehashedMap;
use crate::worker::WorkerId;
use std::collections::VecDeque;
use std::time::Instant;

/// Provisional copies one shard keeps at most (about 40 bytes each); past it no new
/// ones are made until old ones expire.
const MAX_PROVISIONAL: usize = 1 << 20;

/// No place in a lookup's output.
const NONE: u32 = u32::MAX;

/// A worker without a slot.
const NO_SLOT: u8 = u8::MAX;

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

pub struct KvIndex {
    blocks: PrehashedMap<Holders>,
    /// Blocks held per worker id.
    held: Vec<usize>,
    /// Tokens per block, per worker id (0: no events yet).
    block_sizes: Vec<u32>,
    /// Per worker id, its slot ([`NO_SLOT`]: none). A worker gets one only while it
    /// holds nothing, so its copies are all bits or all listed, never both.
    slot_of: Vec<u8>,
    /// Per slot, its worker.
    slot_worker: [WorkerId; SLOTS],
    /// Slots nobody has.
    free_slots: u64,
    /// Per worker id, its place in a lookup's output (scratch, reused).
    place: Vec<u32>,
    /// Provisional copies in the order they expire.
    provisional: VecDeque<(Instant, WorkerId, u64)>,
}

impl Default for KvIndex {
    fn default() -> Self {
        KvIndex {
            blocks: PrehashedMap::default(),
            held: Vec::new(),
            block_sizes: Vec::new(),
            slot_of: Vec::new(),
            slot_worker: [0; SLOTS],
            free_slots: u64::MAX,
            place: Vec::new(),
            provisional: VecDeque::new(),
        }
    }
}

/// A lookup's runs per tier, over slots: the slots whose run is still unbroken.
struct Runs {
    device: u64,
    host: u64,
    disk: u64,
    external: u64,
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

    fn slot(&self, worker: WorkerId) -> Option<u8> {
        Some(*self.slot_of.get(worker as usize)?).filter(|s| *s != NO_SLOT)
    }

    /// `worker`'s slot, given now if it holds nothing yet and one is free.
    fn slot_for_store(&mut self, worker: WorkerId) -> Option<u8> {
        if let Some(s) = self.slot(worker) {
            return Some(s);
        }
        if self.held(worker) != 0 || self.free_slots == 0 {
            return None;
        }
        let s = self.free_slots.trailing_zeros() as u8;
        self.free_slots &= !(1 << s);
        let i = worker as usize;
        if self.slot_of.len() <= i {
            self.slot_of.resize(i + 1, NO_SLOT);
        }
        self.slot_of[i] = s;
        self.slot_worker[s as usize] = worker;
        Some(s)
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

    /// Changes `worker`'s media bits for `name` by `f`, keeping the counts.
    fn update(&mut self, worker: WorkerId, slot: Option<u8>, name: u64, f: impl Fn(u8) -> u8) {
        let h = self.blocks.entry(name).or_default();
        let before = h.media(worker, slot);
        let after = f(before);
        if after == before {
            if h.is_empty() {
                self.blocks.remove(&name);
            }
            return;
        }
        h.set_media(worker, slot, after);
        if h.is_empty() {
            self.blocks.remove(&name);
        }
        match (before, after) {
            (0, _) => self.count(worker, true),
            (_, 0) => self.count(worker, false),
            _ => {}
        }
    }

    /// Applies one worker's changes.
    pub fn apply(&mut self, worker: WorkerId, c: &BlockChanges) {
        if c.cleared {
            self.forget(worker);
        }
        let slot = if c.stored.is_empty() {
            self.slot(worker)
        } else {
            self.slot_for_store(worker)
        };
        for (name, m) in &c.stored {
            self.update(worker, slot, *name, |media| media | m.bit());
        }
        for (name, m) in &c.removed {
            if !self.blocks.contains_key(name) {
                continue;
            }
            // A block the worker dropped is not coming back provisionally either.
            self.update(worker, slot, *name, |media| {
                media & !(m.bit() | PROVISIONAL)
            });
        }
    }

    /// Drops everything `worker` holds (it left, or its events were lost).
    pub fn forget(&mut self, worker: WorkerId) {
        let slot = self.slot(worker);
        if self.held(worker) != 0 {
            self.blocks.retain(|_, h| {
                h.set_media(worker, slot, 0);
                !h.is_empty()
            });
            self.held[worker as usize] = 0;
        }
        if let Some(s) = slot {
            self.slot_of[worker as usize] = NO_SLOT;
            self.free_slots |= 1 << s;
        }
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
        let slot = self.slot_for_store(worker);
        for name in names {
            let held = (self.blocks.get(name)).map_or(0, |h| h.media(worker, slot));
            if held & (DEVICE | PROVISIONAL) != 0 {
                continue;
            }
            self.update(worker, slot, *name, |m| m | PROVISIONAL);
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
            if self.blocks.contains_key(&name) {
                let slot = self.slot(worker);
                self.update(worker, slot, name, |m| m & !PROVISIONAL);
            }
        }
    }

    /// For each worker holding the first of `names`, how deep it holds them (into
    /// `out`, cleared first). Each block costs a lookup and a word per tier for the
    /// slotted workers, and a step per listed owner. Names are taken lazily: a prompt's
    /// blocks past the deepest holder are never named (most of a long prompt, usually).
    pub fn depths(&mut self, names: impl IntoIterator<Item = u64>, out: &mut Vec<Depth>) {
        // The previous lookup's places (kept for `depth_of`) are forgotten first.
        for d in out.iter() {
            self.place[d.worker as usize] = NONE;
        }
        out.clear();
        let mut names = names.into_iter();
        let Some(mut h) = names.next().and_then(|n| self.blocks.get(&n)) else {
            return;
        };
        // Everyone holding the first block gets a place.
        let mut slot_place = [NONE; SLOTS];
        let mut held = h.gpu | h.provisional;
        for o in h.others() {
            match self.slot(o.worker) {
                Some(s) => held |= 1 << s,
                None => place(&mut self.place, out, o.worker),
            }
        }
        for s in slots(held) {
            slot_place[s] = out.len() as u32;
            place(&mut self.place, out, self.slot_worker[s]);
        }
        let mut runs = Runs {
            device: held,
            host: held,
            disk: held,
            external: held,
        };
        let mut i = 0;
        loop {
            let listed_on = self.step(h, i, &mut runs, &slot_place, out);
            i += 1;
            let slotted_on = runs.device | runs.host | runs.disk | runs.external != 0;
            if !slotted_on && !listed_on {
                break;
            }
            match names.next().and_then(|n| self.blocks.get(&n)) {
                Some(next) => h = next,
                None => break,
            }
        }
        // Unbroken runs reach the last block looked at: nobody holds the next.
        let sp = &slot_place;
        end_runs(&mut runs.device, 0, i, sp, out, |d| &mut d.device);
        end_runs(&mut runs.host, 0, i, sp, out, |d| &mut d.host);
        end_runs(&mut runs.disk, 0, i, sp, out, |d| &mut d.disk);
        end_runs(&mut runs.external, 0, i, sp, out, |d| &mut d.external);
    }

    /// Block `i` of a lookup: the slotted runs it breaks get their depth (`i`); listed
    /// owners step as before. Whether a listed owner's run went on.
    fn step(
        &self,
        h: &Holders,
        i: usize,
        runs: &mut Runs,
        slot_place: &[u32; SLOTS],
        out: &mut [Depth],
    ) -> bool {
        let device = h.gpu | h.provisional;
        let (mut host, mut disk, mut external) = (device, device, device);
        let mut listed_on = false;
        for o in h.others() {
            if let Some(s) = self.slot(o.worker) {
                let bit = 1u64 << s;
                let on = |m: Medium| if o.media & m.bit() != 0 { bit } else { 0 };
                host |= on(Medium::Host);
                disk |= on(Medium::Disk);
                external |= on(Medium::External);
                continue;
            }
            let Some(&at) = self.place.get(o.worker as usize).filter(|p| **p != NONE) else {
                continue;
            };
            listed_on |= step_listed(&mut out[at as usize], o.media, i);
        }
        let sp = slot_place;
        end_runs(&mut runs.device, device, i, sp, out, |d| &mut d.device);
        end_runs(&mut runs.host, host, i, sp, out, |d| &mut d.host);
        end_runs(&mut runs.disk, disk, i, sp, out, |d| &mut d.disk);
        end_runs(&mut runs.external, external, i, sp, out, |d| {
            &mut d.external
        });
        for s in slots(runs.device & h.provisional & !h.gpu) {
            out[slot_place[s] as usize].provisional += 1;
        }
        listed_on
    }

    /// `worker`'s entry in the output of the last [`KvIndex::depths`] (given again).
    pub fn depth_of<'a>(&self, worker: WorkerId, out: &'a [Depth]) -> Option<&'a Depth> {
        let at = *self.place.get(worker as usize)?;
        out.get(at as usize).filter(|d| d.worker == worker)
    }
}

/// One tier at block `i`: the runs of the slots in `run` that do not hold it (`held`)
/// end at depth `i`; the rest go on.
fn end_runs(
    run: &mut u64,
    held: u64,
    i: usize,
    slot_place: &[u32; SLOTS],
    out: &mut [Depth],
    depth: impl Fn(&mut Depth) -> &mut usize,
) {
    for s in slots(*run & !held) {
        *depth(&mut out[slot_place[s] as usize]) = i;
    }
    *run &= held;
}

/// Gives `worker` the next place in `out`.
fn place(places: &mut Vec<u32>, out: &mut Vec<Depth>, worker: WorkerId) {
    let w = worker as usize;
    if places.len() <= w {
        places.resize(w + 1, NONE);
    }
    places[w] = out.len() as u32;
    out.push(Depth {
        worker,
        ..Depth::default()
    });
}

/// One listed (slotless) owner of block `i`: its runs that reach `i` go on.
fn step_listed(d: &mut Depth, media: u8, i: usize) -> bool {
    let dev = media & (DEVICE | PROVISIONAL) != 0;
    let mut on = false;
    if d.device == i && dev {
        d.device += 1;
        if media & DEVICE == 0 {
            d.provisional += 1;
        }
        on = true;
    }
    for (depth, m) in [
        (&mut d.host, Medium::Host),
        (&mut d.disk, Medium::Disk),
        (&mut d.external, Medium::External),
    ] {
        if *depth == i && (dev || media & m.bit() != 0) {
            *depth += 1;
            on = true;
        }
    }
    on
}

#[cfg(test)]
#[path = "kv_index_tests.rs"]
mod tests;
