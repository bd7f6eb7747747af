//! The router's own name for a KV block: a chained hash of its token ids. The control
//! core computes it from vLLM's `BlockStored.token_ids`, a shard from a request's
//! tokens, block by block; equal token prefixes get equal names on every worker and
//! every router, whatever hash vLLM was configured with (`--prefix-caching-hash-algo`,
//! `PYTHONHASHSEED`).

use crate::worker::WorkerId;
use xxhash_rust::xxh3::xxh3_64;

/// Where a block lives on its worker: what it costs to use it again differs
/// (`--kv-penalty-host`, `--kv-penalty-disk`, `--kv-penalty-external`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Medium {
    Device,
    Host,
    Disk,
    /// Outside the worker (a KV connector's shared store, LMCache's remote tier):
    /// fetched over the network before use.
    External,
}

impl Medium {
    pub const ALL: [Medium; 4] = [Medium::Device, Medium::Host, Medium::Disk, Medium::External];

    /// A bit per medium, for sets of them.
    pub fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// What changed in one worker's blocks (one batch of KV events, or a purge).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockChanges {
    /// Everything the worker held is gone (applied before the rest).
    pub cleared: bool,
    /// Blocks a medium started holding.
    pub stored: Vec<(u64, Medium)>,
    /// Blocks a medium stopped holding.
    pub removed: Vec<(u64, Medium)>,
}

impl BlockChanges {
    pub fn is_empty(&self) -> bool {
        !self.cleared && self.stored.is_empty() && self.removed.is_empty()
    }
}

/// The control core tells every shard: `worker`'s blocks changed so.
#[derive(Clone, Debug)]
pub struct KvBlockDelta {
    pub worker: WorkerId,
    /// Tokens per block on that worker (its `kv_block_size`).
    pub block_size: u32,
    pub changes: BlockChanges,
}

/// The parent of a sequence's first block.
pub const ROOT: u64 = 0x6b76_2d72_6f6f_7421;

/// Tokens hashed in one piece: vLLM's usual block of 16 fits four times over; a bigger
/// block is hashed in pieces, still deterministically. Small, because the stack buffer
/// is cleared on every call (a 1 KiB one was most of a 4k-token request's naming).
const MAX_BLOCK_TOKENS: usize = 64;

/// The name of a block holding `tokens` after the block named `parent`.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    if tokens.len() <= 16 {
        // vLLM's default block: a buffer just big enough.
        let mut buf = [0u8; 8 + 4 * 16];
        buf[..8].copy_from_slice(&parent.to_le_bytes());
        for (i, t) in tokens.iter().enumerate() {
            buf[8 + 4 * i..12 + 4 * i].copy_from_slice(&t.to_le_bytes());
        }
        return xxh3_64(&buf[..8 + 4 * tokens.len()]);
    }
    // parent, then each token, little-endian, on the stack.
    let mut buf = [0u8; 8 + 4 * MAX_BLOCK_TOKENS];
    let mut h = parent;
    for piece in tokens.chunks(MAX_BLOCK_TOKENS) {
        buf[..8].copy_from_slice(&h.to_le_bytes());
        for (i, t) in piece.iter().enumerate() {
            buf[8 + 4 * i..12 + 4 * i].copy_from_slice(&t.to_le_bytes());
        }
        h = xxh3_64(&buf[..8 + 4 * piece.len()]);
    }
    h
}

/// The names of the full blocks of `tokens`, in order, into `out`.
pub fn block_hashes(tokens: &[u32], block_size: usize, out: &mut Vec<u64>) {
    out.clear();
    if block_size == 0 {
        return;
    }
    let mut parent = ROOT;
    for block in tokens.chunks_exact(block_size) {
        parent = chain_hash(parent, block);
        out.push(parent);
    }
}

/// Blocks a shard's kv_aware just sent a request for (named by the router's chained
/// hash), noted provisionally on that worker: the other shards note them too, so a
/// burst of one new prompt that reaches several shards before the worker's events do
/// stays on one worker.
pub type ProvisionalBlocks = (crate::worker::WorkerId, Box<[u64]>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_each_prefix() {
        let tokens: Vec<u32> = (0..40).collect();
        let mut a = Vec::new();
        block_hashes(&tokens, 16, &mut a);
        assert_eq!(a.len(), 2, "the partial third block has no name");
        assert_eq!(a[0], chain_hash(ROOT, &tokens[..16]));
        assert_eq!(a[1], chain_hash(a[0], &tokens[16..32]));
        // Another second block, same first: the first name is shared, the second not.
        let mut other = tokens.clone();
        other[20] = 999;
        let mut b = Vec::new();
        block_hashes(&other, 16, &mut b);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        // Order matters, within and across blocks.
        assert_ne!(chain_hash(ROOT, &[1, 2]), chain_hash(ROOT, &[2, 1]));
    }
}
