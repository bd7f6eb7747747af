//! The control core's index of which worker holds which KV blocks, built from KV
//! events, one [`SourceBlocks`] per event source (a worker's DP rank). It names blocks
//! by the router's chained hash of their token ids (`shards::kv_blocks`) and keeps the
//! engine's hash only to find a stored block's parent and a removed block. What
//! changes (a block a medium starts or stops holding) comes out as a [`BlockChanges`]
//! for the shards, which keep their own copy.

use super::wire::{KvEvent, Medium, WireHash};
use shards::kv_blocks::{adapter_extra, chain_hash, with_extra, BlockChanges, ROOT};
use std::collections::HashMap;
use std::sync::Arc;

/// Blocks one source may hold in the index. A vLLM rank holds some 10^4 to 10^5
/// blocks on its GPU, more with CPU offloading; a source reporting more than this has
/// lost its removals somewhere, and is dropped and rebuilt rather than growing without
/// bound. About 40 bytes each.
pub const MAX_BLOCKS_PER_SOURCE: usize = 4 << 20;

/// Why a stored block was not indexed (0.1.17's reason names, for the metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejected {
    /// A LoRA adapter's blocks: a base-model request cannot use them.
    Adapter,
    /// A non-default KV group, or extra keys that do not line up with the blocks.
    Layout,
    /// A medium the router has no price for.
    Residency,
    BlockSizeMismatch,
    TokenCountMismatch,
    /// The parent block is not in the index (stored before the router listened).
    UnknownParent,
}

impl Rejected {
    pub fn name(self) -> &'static str {
        match self {
            Rejected::Adapter => "adapter",
            Rejected::Layout => "layout",
            Rejected::Residency => "residency",
            Rejected::BlockSizeMismatch => "block_size_mismatch",
            Rejected::TokenCountMismatch => "token_count_mismatch",
            Rejected::UnknownParent => "unknown_parent",
        }
    }
}

/// One block as a source holds it.
#[derive(Clone, Copy)]
struct Block {
    /// The router's name for it.
    name: u64,
    /// Copies per medium (device, host, disk, external): vLLM may store one block twice.
    copies: [u16; 4],
}

/// The blocks of one source.
pub struct SourceBlocks {
    block_size: u32,
    blocks: HashMap<WireHash, Block>,
    /// Rejections by reason since the last [`SourceBlocks::take_rejections`].
    rejected: HashMap<Rejected, u64>,
    /// LoRA adapters whose blocks this source stored (told to the shards once).
    adapters: std::collections::HashSet<Arc<str>>,
}

/// Adapters remembered per source: a deployment serves a handful; past this the
/// names are still indexed, just no longer announced.
const MAX_ADAPTERS: usize = 1024;

fn slot(m: Medium) -> usize {
    match m {
        Medium::Device => 0,
        Medium::Host => 1,
        Medium::Disk => 2,
        Medium::External => 3,
    }
}

impl SourceBlocks {
    pub fn new(block_size: u32) -> Self {
        SourceBlocks {
            block_size,
            blocks: HashMap::new(),
            rejected: HashMap::new(),
            adapters: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Drops everything (a sequence gap nobody replayed, a publisher restart).
    pub fn purge(&mut self, out: &mut BlockChanges) {
        self.blocks.clear();
        out.cleared = true;
        out.stored.clear();
        out.removed.clear();
    }

    /// Counts of rejected blocks by reason, since the last call.
    pub fn take_rejections(&mut self) -> HashMap<Rejected, u64> {
        std::mem::take(&mut self.rejected)
    }

    fn reject(&mut self, why: Rejected, blocks: usize) {
        *self.rejected.entry(why).or_default() += blocks as u64;
    }

    /// Applies one event; what the shards must learn goes to `out`.
    pub fn apply(&mut self, event: &KvEvent, out: &mut BlockChanges) {
        match event {
            KvEvent::AllBlocksCleared => self.purge(out),
            KvEvent::BlockRemoved {
                block_hashes,
                medium,
            } => {
                let Some(m) = medium else { return };
                for h in block_hashes {
                    let Some(b) = self.blocks.get_mut(h) else {
                        continue;
                    };
                    let c = &mut b.copies[slot(*m)];
                    if *c == 0 {
                        continue;
                    }
                    *c -= 1;
                    if *c == 0 {
                        out.removed.push((b.name, *m));
                        if b.copies == [0; 4] {
                            self.blocks.remove(h);
                        }
                    }
                }
            }
            KvEvent::BlockStored {
                block_hashes,
                parent,
                token_ids,
                block_size,
                lora,
                lora_name,
                special,
                extra,
                medium,
            } => {
                let n = block_hashes.len();
                // An adapter's blocks carry its name in every block's extra keys (vLLM
                // since early 2026), or are named by `lora_name` as vLLM hashes them.
                let adapter = lora_name.as_deref();
                let why = if *lora && adapter.is_none() && extra.is_empty() {
                    Some(Rejected::Adapter)
                } else if *special {
                    Some(Rejected::Layout)
                } else if medium.is_none() {
                    Some(Rejected::Residency)
                } else if *block_size != self.block_size {
                    Some(Rejected::BlockSizeMismatch)
                } else if token_ids.len() != n * *block_size as usize {
                    Some(Rejected::TokenCountMismatch)
                } else {
                    None
                };
                if let Some(why) = why {
                    return self.reject(why, n);
                }
                let m = medium.expect("checked above");
                if let Some(a) = adapter {
                    if self.adapters.len() < MAX_ADAPTERS && !self.adapters.contains(a) {
                        let a: Arc<str> = Arc::from(a);
                        self.adapters.insert(a.clone());
                        out.adapters.push(a);
                    }
                }
                let mut name = match parent {
                    None => ROOT,
                    Some(p) => match self.blocks.get(p) {
                        Some(b) => b.name,
                        None => return self.reject(Rejected::UnknownParent, n),
                    },
                };
                if self.blocks.len() + n > MAX_BLOCKS_PER_SOURCE {
                    self.purge(out);
                }
                let size = *block_size as usize;
                for (i, (h, tokens)) in block_hashes
                    .iter()
                    .zip(token_ids.chunks_exact(size))
                    .enumerate()
                {
                    // Extra keys (a salt) are hashed with the block's tokens in vLLM:
                    // the same tokens under them are another block.
                    let x = match (extra.get(i), adapter) {
                        (Some(&x), _) => x,
                        (None, Some(a)) => adapter_extra(a, None),
                        (None, None) => 0,
                    };
                    if x != 0 {
                        name = with_extra(name, x);
                    }
                    name = chain_hash(name, tokens);
                    let b = self.blocks.entry(*h).or_insert(Block {
                        name,
                        copies: [0; 4],
                    });
                    // The engine's hash names the same tokens on a later store.
                    b.name = name;
                    let c = &mut b.copies[slot(m)];
                    if *c == 0 {
                        out.stored.push((name, m));
                    }
                    *c = c.saturating_add(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shards::kv_blocks::block_hashes;

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: &[u32], medium: Medium) -> KvEvent {
        KvEvent::BlockStored {
            block_hashes: hashes.to_vec(),
            parent,
            token_ids: tokens.to_vec(),
            block_size: 4,
            lora: false,
            lora_name: None,
            special: false,
            extra: vec![],
            medium: Some(medium),
        }
    }

    #[test]
    fn names_follow_the_tokens_not_the_engines_hashes() {
        let tokens: Vec<u32> = (100..112).collect();
        let mut want = Vec::new();
        block_hashes(&tokens, 4, &mut want);
        // Two sources with unrelated engine hashes, one storing in two events.
        let (mut a, mut b) = (SourceBlocks::new(4), SourceBlocks::new(4));
        let (mut ca, mut cb) = (BlockChanges::default(), BlockChanges::default());
        a.apply(&stored(&[1, 2, 3], None, &tokens, Medium::Device), &mut ca);
        b.apply(&stored(&[900], None, &tokens[..4], Medium::Device), &mut cb);
        b.apply(
            &stored(&[901, 902], Some(900), &tokens[4..], Medium::Device),
            &mut cb,
        );
        let names = |c: &BlockChanges| c.stored.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        assert_eq!(names(&ca), want);
        assert_eq!(names(&cb), want);
    }

    #[test]
    fn removals_count_copies_per_medium_and_clear_drops_all() {
        let tokens: Vec<u32> = (0..8).collect();
        let mut s = SourceBlocks::new(4);
        let mut c = BlockChanges::default();
        s.apply(&stored(&[1, 2], None, &tokens, Medium::Device), &mut c);
        s.apply(&stored(&[1], None, &tokens[..4], Medium::Host), &mut c);
        s.apply(&stored(&[1], None, &tokens[..4], Medium::Device), &mut c);
        assert_eq!(c.stored.len(), 3, "a second device copy is no change");
        let name1 = c.stored[0].0;
        let mut c = BlockChanges::default();
        let remove = |h: u64, m| KvEvent::BlockRemoved {
            block_hashes: vec![h],
            medium: Some(m),
        };
        s.apply(&remove(1, Medium::Device), &mut c);
        assert!(c.is_empty(), "one device copy is left");
        s.apply(&remove(1, Medium::Device), &mut c);
        s.apply(&remove(1, Medium::Host), &mut c);
        assert_eq!(
            c.removed,
            vec![(name1, Medium::Device), (name1, Medium::Host)]
        );
        s.apply(&remove(77, Medium::Host), &mut c);
        assert_eq!(c.removed.len(), 2, "an unknown block is ignored");
        let mut c = BlockChanges::default();
        s.apply(&KvEvent::AllBlocksCleared, &mut c);
        assert!(c.cleared);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn unusable_blocks_are_counted_not_indexed() {
        let mut s = SourceBlocks::new(4);
        let mut c = BlockChanges::default();
        let t: Vec<u32> = (0..4).collect();
        s.apply(&stored(&[5], Some(404), &t, Medium::Device), &mut c);
        s.apply(&stored(&[5], None, &t[..3], Medium::Device), &mut c);
        let mut lora = stored(&[5], None, &t, Medium::Device);
        if let KvEvent::BlockStored { lora: l, .. } = &mut lora {
            *l = true;
        }
        s.apply(&lora, &mut c);
        let mut nvme = stored(&[5], None, &t, Medium::Device);
        if let KvEvent::BlockStored { medium, .. } = &mut nvme {
            *medium = None;
        }
        s.apply(&nvme, &mut c);
        assert!(c.is_empty());
        let r = s.take_rejections();
        for why in [
            Rejected::UnknownParent,
            Rejected::TokenCountMismatch,
            Rejected::Adapter,
            Rejected::Residency,
        ] {
            assert_eq!(r.get(&why), Some(&1), "{why:?}");
        }
    }

    #[test]
    fn an_adapter_s_blocks_are_named_as_its_requests_and_announced_once() {
        use shards::kv_blocks::RequestChain;
        let mut s = SourceBlocks::new(4);
        let t: Vec<u32> = (0..8).collect();
        let mut c = BlockChanges::default();
        let mut lora = stored(&[5, 6], None, &t, Medium::Device);
        if let KvEvent::BlockStored {
            lora, lora_name, ..
        } = &mut lora
        {
            (*lora, *lora_name) = (true, Some("sql".into()));
        }
        s.apply(&lora, &mut c);
        s.apply(&lora, &mut c);
        // What a request for model `sql` names its blocks.
        let chain = RequestChain::new(None, Some("sql"));
        let first = chain_hash(chain.root, &t[..4]);
        let second = chain_hash(chain.parent(first, 1), &t[4..]);
        let names: Vec<u64> = c.stored.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec![first, second]);
        assert_eq!(c.adapters, vec![Arc::from("sql")]);
        assert!(s.take_rejections().is_empty());
    }
}
