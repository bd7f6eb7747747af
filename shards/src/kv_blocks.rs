//! The router's own name for a KV block: a chained hash of its token ids. The control
//! core computes it from vLLM's `BlockStored.token_ids`, a shard from a request's
//! tokens, block by block; equal token prefixes get equal names on every worker and
//! every router, whatever hash vLLM was configured with (`--prefix-caching-hash-algo`,
//! `PYTHONHASHSEED`).

use crate::worker::WorkerId;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

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
    /// LoRA adapters the worker stored blocks for, first seen in this batch: a
    /// request naming one as its `model` is that adapter's (see [`adapter_extra`]).
    pub adapters: Vec<std::sync::Arc<str>>,
}

impl BlockChanges {
    pub fn is_empty(&self) -> bool {
        !self.cleared
            && self.stored.is_empty()
            && self.removed.is_empty()
            && self.adapters.is_empty()
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

/// One item of a block's extra keys (vLLM's `BlockStored.extra_keys`: what its block
/// hash mixes in besides the tokens, such as a `cache_salt`, a LoRA name or an image's
/// identifier).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExtraKeyItem<'a> {
    Text(&'a str),
    Int(i64),
    Bytes(&'a [u8]),
}

/// A name for one block's extra keys, mixed into its parent's name ([`with_extra`]).
/// Each item is tagged and length-prefixed, so `("ab",)` and `("a", "b")` differ.
/// Streamed, not gathered into a buffer: a shard names a salted request's chain with
/// it, and xxh3's streaming digest equals the one-shot digest of the same bytes.
pub fn extra_key_hash<'a>(items: impl IntoIterator<Item = ExtraKeyItem<'a>>) -> u64 {
    let mut h = Xxh3::new();
    for item in items {
        let (tag, bytes): (u8, &[u8]) = match item {
            ExtraKeyItem::Text(s) => (b's', s.as_bytes()),
            ExtraKeyItem::Bytes(b) => (b'b', b),
            ExtraKeyItem::Int(i) => {
                h.update(b"i");
                h.update(&i.to_le_bytes());
                continue;
            }
        };
        h.update(&[tag]);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.digest()
}

/// The parent a block with extra keys (named by [`extra_key_hash`]) chains from: vLLM
/// hashes a block's extra keys with its tokens, so the same tokens under another salt
/// are another block, and so are all the blocks after it.
pub fn with_extra(parent: u64, extra: u64) -> u64 {
    let mut buf = [0u8; 17];
    buf[0] = b'x';
    buf[1..9].copy_from_slice(&parent.to_le_bytes());
    buf[9..].copy_from_slice(&extra.to_le_bytes());
    xxh3_64(&buf)
}

/// The extra keys vLLM hashes into every block of a LoRA adapter's request (the
/// adapter's name; on the first block, then a `cache_salt`).
pub fn adapter_extra(adapter: &str, first_block_salt: Option<&str>) -> u64 {
    match first_block_salt {
        None => extra_key_hash([ExtraKeyItem::Text(adapter)]),
        Some(salt) => extra_key_hash([ExtraKeyItem::Text(adapter), ExtraKeyItem::Text(salt)]),
    }
}

/// How a request's blocks are named beyond their tokens, as vLLM keys them: a
/// `cache_salt` is hashed into the first block, a LoRA adapter's name into every
/// block (with the salt after it on the first), so the same tokens under another salt
/// or adapter are other blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestChain {
    /// The parent of the first block (holding its extra keys).
    pub root: u64,
    /// Mixed into the parent of every later block (0: nothing).
    extra: u64,
}

impl RequestChain {
    /// A base-model request without a salt.
    pub const PLAIN: RequestChain = RequestChain {
        root: ROOT,
        extra: 0,
    };

    pub fn new(cache_salt: Option<&str>, adapter: Option<&str>) -> Self {
        match (adapter, cache_salt) {
            (None, None) => Self::PLAIN,
            (None, Some(salt)) => RequestChain {
                root: with_extra(ROOT, extra_key_hash([ExtraKeyItem::Text(salt)])),
                extra: 0,
            },
            (Some(a), salt) => RequestChain {
                root: with_extra(ROOT, adapter_extra(a, salt)),
                extra: adapter_extra(a, None),
            },
        }
    }

    /// What block `i` chains from, given the name of block `i - 1` (or the root).
    pub fn parent(&self, previous: u64, i: usize) -> u64 {
        if i == 0 || self.extra == 0 {
            previous
        } else {
            with_extra(previous, self.extra)
        }
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

    #[test]
    fn a_salt_starts_a_chain_of_its_own() {
        let tokens: Vec<u32> = (0..16).collect();
        let root = |salt| RequestChain::new(salt, None).root;
        let plain = chain_hash(root(None), &tokens);
        let a = chain_hash(root(Some("tenant-a")), &tokens);
        let b = chain_hash(root(Some("tenant-b")), &tokens);
        assert_eq!(plain, chain_hash(ROOT, &tokens));
        assert!(plain != a && a != b && plain != b);
        // The event side's form of the same salt names the same block.
        let extra = extra_key_hash([ExtraKeyItem::Text("tenant-a")]);
        assert_eq!(a, chain_hash(with_extra(ROOT, extra), &tokens));
        // Items are delimited.
        let one = extra_key_hash([ExtraKeyItem::Text("ab")]);
        let two = extra_key_hash([ExtraKeyItem::Text("a"), ExtraKeyItem::Text("b")]);
        assert_ne!(one, two);
        assert_ne!(one, extra_key_hash([ExtraKeyItem::Bytes(b"ab")]));
        // The layout: a tag, the length, the bytes.
        let mut bytes = b"s".to_vec();
        bytes.extend_from_slice(&2u64.to_le_bytes());
        bytes.extend_from_slice(b"ab");
        assert_eq!(one, xxh3_64(&bytes));
    }

    #[test]
    fn an_adapter_is_in_every_block_and_a_salt_in_the_first() {
        let tokens: Vec<u32> = (0..32).collect();
        let names = |c: RequestChain| {
            let first = chain_hash(c.root, &tokens[..16]);
            (first, chain_hash(c.parent(first, 1), &tokens[16..]))
        };
        let plain = names(RequestChain::PLAIN);
        let sql = names(RequestChain::new(None, Some("sql")));
        // The event side: each block's extra keys as vLLM lists them.
        let text = |t| ExtraKeyItem::Text(t);
        let first = chain_hash(
            with_extra(ROOT, extra_key_hash([text("sql")])),
            &tokens[..16],
        );
        let second = with_extra(first, extra_key_hash([text("sql")]));
        assert_eq!(sql, (first, chain_hash(second, &tokens[16..])));
        assert!(sql.0 != plain.0 && sql.1 != plain.1);
        let salted = names(RequestChain::new(Some("t"), Some("sql")));
        let root = with_extra(ROOT, extra_key_hash([text("sql"), text("t")]));
        assert_eq!(salted.0, chain_hash(root, &tokens[..16]));
        assert_eq!(RequestChain::new(None, None), RequestChain::PLAIN);
    }
}
