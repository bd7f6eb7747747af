//! A shard's cache of requests' prompt tokens (kv_aware), by a hash of what was
//! tokenized: a retried or repeated request costs no second `/tokenize` call.

use crate::prehashed::PrehashedMap;
use std::rc::Rc;

/// Requests' tokens a shard keeps: a chat turn is some KiB of tokens, so this is some
/// MiB at most. Past it, the least recently used eighth goes.
pub const MAX_CACHED: usize = 4096;

/// Tokens by request content.
#[derive(Default)]
pub struct TokenCache {
    map: PrehashedMap<(Rc<[u32]>, u64)>,
    tick: u64,
    /// Asked of a worker, answered from here, failed.
    pub counts: [u64; 3],
}

impl TokenCache {
    pub fn get(&mut self, key: u64) -> Option<Rc<[u32]>> {
        self.tick += 1;
        let tick = self.tick;
        let (tokens, used) = self.map.get_mut(&key)?;
        *used = tick;
        Some(tokens.clone())
    }

    pub fn put(&mut self, key: u64, tokens: Rc<[u32]>) {
        if self.map.len() >= MAX_CACHED {
            let mut ages: Vec<u64> = self.map.values().map(|(_, t)| *t).collect();
            let nth = MAX_CACHED / 8;
            let (_, cut, _) = ages.select_nth_unstable(nth);
            let cut = *cut;
            self.map.retain(|_, (_, t)| *t > cut);
        }
        self.tick += 1;
        self.map.insert(key, (tokens, self.tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_bounded() {
        let mut c = TokenCache::default();
        for k in 0..(MAX_CACHED as u64 * 2) {
            c.put(k, Rc::from(vec![1u32]));
            assert!(c.map.len() <= MAX_CACHED);
        }
        assert!(c.get(MAX_CACHED as u64 * 2 - 1).is_some());
    }
}
