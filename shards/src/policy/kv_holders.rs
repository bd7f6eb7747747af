//! Who holds one KV block, in which media. A popular prefix's first blocks are held by
//! every worker, so a lookup that stepped through an owner list per block cost a step
//! per (block, worker): 2,080 steps for 64 workers holding 1 to 64 blocks of a prompt.
//! Here the GPU copies of up to 64 workers are bits (a worker's *slot*, given by
//! [`KvIndex`](super::kv_index::KvIndex)), so a lookup ANDs one word per block; lower
//! tiers and workers past the 64th keep a short owner list beside them.

use crate::worker::WorkerId;
use smallvec::SmallVec;

/// Media bits ([`Medium::bit`](crate::kv_blocks::Medium::bit)) kept as slot bits: the GPU.
pub const DEVICE: u8 = 1;

/// The media bit of a provisional copy (see `KvIndex::provisional`).
pub const PROVISIONAL: u8 = 0x80;

/// Workers that get a slot: one bit each in a `u64`.
pub const SLOTS: usize = 64;

/// One worker in the owner list: a slotted worker's lower-tier copies, or all the
/// copies of a worker without a slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Owner {
    pub worker: WorkerId,
    pub media: u8,
}

/// The holders of one block.
#[derive(Default, Debug)]
pub struct Holders {
    /// Slots holding it on the GPU.
    pub gpu: u64,
    /// Slots holding it provisionally.
    pub provisional: u64,
    /// Rare: boxed so the common entry stays three words.
    pub others: Option<Box<SmallVec<[Owner; 2]>>>,
}

impl Holders {
    /// The owner list (empty when there is none).
    pub fn others(&self) -> &[Owner] {
        self.others.as_deref().map_or(&[], |o| &o[..])
    }

    pub fn is_empty(&self) -> bool {
        self.gpu == 0 && self.provisional == 0 && self.others.is_none()
    }

    /// `worker`'s media bits (with `slot`, if it has one).
    pub fn media(&self, worker: WorkerId, slot: Option<u8>) -> u8 {
        let listed = (self.others().iter())
            .find(|o| o.worker == worker)
            .map_or(0, |o| o.media);
        match slot {
            None => listed,
            Some(s) => {
                let bit = 1u64 << s;
                let mut m = listed;
                if self.gpu & bit != 0 {
                    m |= DEVICE;
                }
                if self.provisional & bit != 0 {
                    m |= PROVISIONAL;
                }
                m
            }
        }
    }

    /// Sets `worker`'s media bits (0: it holds none).
    pub fn set_media(&mut self, worker: WorkerId, slot: Option<u8>, media: u8) {
        let listed = match slot {
            None => media,
            Some(s) => {
                let bit = 1u64 << s;
                set_bit(&mut self.gpu, bit, media & DEVICE != 0);
                set_bit(&mut self.provisional, bit, media & PROVISIONAL != 0);
                media & !(DEVICE | PROVISIONAL)
            }
        };
        let others = self.others.get_or_insert_with(Default::default);
        match others.iter().position(|o| o.worker == worker) {
            Some(i) if listed == 0 => {
                others.swap_remove(i);
            }
            Some(i) => others[i].media = listed,
            None if listed != 0 => others.push(Owner {
                worker,
                media: listed,
            }),
            None => {}
        }
        if others.is_empty() {
            self.others = None;
        }
    }
}

fn set_bit(word: &mut u64, bit: u64, on: bool) {
    if on {
        *word |= bit;
    } else {
        *word &= !bit;
    }
}

/// The slots set in `bits`, lowest first.
pub fn slots(mut bits: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if bits == 0 {
            return None;
        }
        let s = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slotted_gpu_copies_are_bits_and_the_rest_is_listed() {
        let mut h = Holders::default();
        h.set_media(7, Some(3), DEVICE | 2);
        h.set_media(900, None, DEVICE);
        assert_eq!(h.gpu, 1 << 3);
        assert_eq!(
            h.others(),
            &[
                Owner {
                    worker: 7,
                    media: 2
                },
                Owner {
                    worker: 900,
                    media: DEVICE
                }
            ]
        );
        assert_eq!(h.media(7, Some(3)), DEVICE | 2);
        assert_eq!(h.media(900, None), DEVICE);
        h.set_media(7, Some(3), PROVISIONAL);
        assert_eq!((h.gpu, h.provisional, h.others().len()), (0, 1 << 3, 1));
        h.set_media(7, Some(3), 0);
        h.set_media(900, None, 0);
        assert!(h.is_empty());
    }

    #[test]
    fn slots_iterate_set_bits() {
        assert_eq!(slots(0b1010_0001).collect::<Vec<_>>(), vec![0, 5, 7]);
        assert_eq!(slots(1 << 63).collect::<Vec<_>>(), vec![63]);
    }
}
