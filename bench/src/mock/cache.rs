//! A simulated prefix cache: chained block hashes in an LRU, counted like vLLM's
//! `prefix_cache_queries` / `prefix_cache_hits` (in tokens).

use std::collections::{BTreeMap, HashMap};

/// Tokens a block stands for in the counters (vLLM's default block size).
pub const TOKENS_PER_BLOCK: u64 = 16;

/// Block hashes in least-recently-used order, bounded: the mock's cache of text blocks
/// here and of token blocks in `kv_cache`.
#[derive(Default)]
pub struct BlockLru {
    capacity: usize,
    tick: u64,
    by_hash: HashMap<u64, u64>,
    by_tick: BTreeMap<u64, u64>,
}

impl BlockLru {
    pub fn new(capacity: usize) -> Self {
        BlockLru {
            capacity: capacity.max(1),
            ..Default::default()
        }
    }

    pub fn contains(&self, h: u64) -> bool {
        self.by_hash.contains_key(&h)
    }

    pub fn clear(&mut self) {
        self.by_hash.clear();
        self.by_tick.clear();
    }

    pub fn usage(&self) -> f64 {
        self.by_hash.len() as f64 / self.capacity as f64
    }

    /// Makes `h` the most recent block; past capacity the least recent go, each
    /// handed to `evicted`.
    pub fn touch(&mut self, h: u64, mut evicted: impl FnMut(u64)) {
        self.tick += 1;
        if let Some(old) = self.by_hash.insert(h, self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, h);
        while self.by_hash.len() > self.capacity {
            let Some((&t, &victim)) = self.by_tick.iter().next() else {
                break;
            };
            self.by_tick.remove(&t);
            self.by_hash.remove(&victim);
            evicted(victim);
        }
    }
}

#[derive(Default)]
pub struct PrefixCache {
    lru: BlockLru,
    pub queries_tokens: u64,
    pub hits_tokens: u64,
}

/// What one lookup found.
pub struct Lookup {
    pub blocks: u64,
    pub hit_blocks: u64,
}

impl PrefixCache {
    pub fn new(capacity: usize) -> Self {
        PrefixCache {
            lru: BlockLru::new(capacity),
            ..Default::default()
        }
    }

    /// Drops every cached block (vLLM's `/reset_prefix_cache`); the counters stay.
    pub fn clear(&mut self) {
        self.lru.clear();
    }

    /// Looks up the prefix blocks of `text` and inserts them (all become most recent).
    pub fn lookup_insert(&mut self, text: &[u8], block_chars: usize) -> Lookup {
        let mut parent = 0u64;
        let mut blocks = 0;
        let mut hits = 0;
        let mut still_hitting = true;
        for block in text.chunks(block_chars.max(1)) {
            if block.len() < block_chars {
                break; // only full blocks are cached, as in vLLM
            }
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(block, parent);
            parent = h;
            blocks += 1;
            if still_hitting && self.lru.contains(h) {
                hits += 1;
            } else {
                still_hitting = false;
            }
            self.lru.touch(h, |_| {});
        }
        self.queries_tokens += blocks * TOKENS_PER_BLOCK;
        self.hits_tokens += hits * TOKENS_PER_BLOCK;
        Lookup {
            blocks,
            hit_blocks: hits,
        }
    }

    pub fn usage(&self) -> f64 {
        self.lru.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_hits_and_lru_evicts() {
        let mut c = PrefixCache::new(4);
        let a = b"aaaabbbbccccdddd";
        assert_eq!(c.lookup_insert(a, 4).hit_blocks, 0);
        let l = c.lookup_insert(b"aaaabbbbxxxx", 4);
        assert_eq!((l.blocks, l.hit_blocks), (3, 2));
        assert_eq!(c.hits_tokens, 2 * TOKENS_PER_BLOCK);
        c.lookup_insert(b"zzzzyyyywwwwvvvv", 4);
        assert_eq!(
            c.lookup_insert(a, 4).hit_blocks,
            0,
            "evicted by the newer blocks"
        );
    }
}
