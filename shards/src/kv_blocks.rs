//! The router's own name for a KV block: a chained hash of its token ids. The control
//! core computes it from vLLM's `BlockStored.token_ids`, a shard from a request's
//! tokens, block by block; equal token prefixes get equal names on every worker and
//! every router, whatever hash vLLM was configured with (`--prefix-caching-hash-algo`,
//! `PYTHONHASHSEED`).

use xxhash_rust::xxh3::xxh3_64;

/// The parent of a sequence's first block.
pub const ROOT: u64 = 0x6b76_2d72_6f6f_7421;

/// Most tokens a block may have: vLLM's block sizes are 16 to 256 (a bigger one is
/// hashed in pieces, still deterministically).
const MAX_BLOCK_TOKENS: usize = 256;

/// The name of a block holding `tokens` after the block named `parent`.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
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
