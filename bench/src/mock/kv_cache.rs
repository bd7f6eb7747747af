//! A token-block prefix cache that tells what it stores and evicts as vLLM's KV events
//! (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`). Its block hashes are its own
//! (seeded per worker, like vLLM with a random `PYTHONHASHSEED`), so a router must
//! name blocks by their tokens to match requests against them.

use super::cache::{BlockLru, Lookup};
use rmpv::Value;

/// One event, before encoding.
#[derive(Clone, Debug, PartialEq)]
pub enum CacheEvent {
    Stored {
        hashes: Vec<u64>,
        parent: Option<u64>,
        tokens: Vec<u32>,
        /// The request's `cache_salt`, when the run starts at its first block (vLLM
        /// hashes the salt into that block and sends it as the block's `extra_keys`).
        salt: Option<String>,
        /// The LoRA adapter (id, name) the blocks were computed with: vLLM hashes its
        /// name into every block.
        adapter: Option<(u32, String)>,
    },
    Removed {
        hashes: Vec<u64>,
    },
    Cleared,
}

/// What vLLM hashes into a request's blocks besides their tokens.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockKeys<'a> {
    /// `cache_salt`: the first block only.
    pub salt: Option<&'a str>,
    /// A LoRA adapter (id, name): every block.
    pub adapter: Option<(u32, &'a str)>,
}

pub struct TokenBlockCache {
    block_size: usize,
    seed: u64,
    lru: BlockLru,
    pub queries_tokens: u64,
    pub hits_tokens: u64,
}

impl TokenBlockCache {
    pub fn new(block_size: usize, capacity: usize, seed: u64) -> Self {
        TokenBlockCache {
            block_size: block_size.max(1),
            seed,
            lru: BlockLru::new(capacity),
            queries_tokens: 0,
            hits_tokens: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn usage(&self) -> f64 {
        self.lru.usage()
    }

    /// Drops every block (`/reset_prefix_cache`).
    pub fn clear(&mut self, events: &mut Vec<CacheEvent>) {
        self.lru.clear();
        events.push(CacheEvent::Cleared);
    }

    /// Looks up the full blocks of `tokens` (under `salt`, a request's `cache_salt`),
    /// caches the missing ones (all become most recent) and evicts the least recent
    /// past capacity, reporting both as events.
    pub fn lookup_insert(
        &mut self,
        tokens: &[u32],
        keys: &BlockKeys<'_>,
        events: &mut Vec<CacheEvent>,
    ) -> Lookup {
        let salt = keys.salt;
        let mut parent: Option<u64> = None;
        let (mut blocks, mut hits, mut hitting) = (0, 0, true);
        let mut new_run: Option<CacheEvent> = None;
        let mut evicted = Vec::new();
        for block in tokens.chunks_exact(self.block_size) {
            let first_salt = salt.filter(|_| parent.is_none());
            let h = self.engine_hash(parent, first_salt, keys.adapter, block);
            blocks += 1;
            let present = self.lru.contains(h);
            if hitting && present {
                hits += 1;
            } else {
                hitting = false;
            }
            if present {
                if let Some(run) = new_run.take() {
                    events.push(run);
                }
            } else {
                match &mut new_run {
                    Some(CacheEvent::Stored {
                        hashes, tokens: t, ..
                    }) => {
                        hashes.push(h);
                        t.extend_from_slice(block);
                    }
                    _ => {
                        new_run = Some(CacheEvent::Stored {
                            hashes: vec![h],
                            parent,
                            tokens: block.to_vec(),
                            salt: first_salt.map(str::to_string),
                            adapter: keys.adapter.map(|(id, n)| (id, n.to_string())),
                        })
                    }
                }
            }
            self.lru.touch(h, |v| evicted.push(v));
            parent = Some(h);
        }
        events.extend(new_run);
        if !evicted.is_empty() {
            events.push(CacheEvent::Removed { hashes: evicted });
        }
        let size = self.block_size as u64;
        self.queries_tokens += blocks * size;
        self.hits_tokens += hits * size;
        Lookup {
            blocks,
            hit_blocks: hits,
        }
    }

    fn engine_hash(
        &self,
        parent: Option<u64>,
        salt: Option<&str>,
        adapter: Option<(u32, &str)>,
        block: &[u32],
    ) -> u64 {
        let mut bytes = Vec::with_capacity(8 + 4 * block.len());
        bytes.extend_from_slice(&parent.unwrap_or(0).to_le_bytes());
        bytes.extend_from_slice(adapter.map_or("", |a| a.1).as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(salt.unwrap_or("").as_bytes());
        block
            .iter()
            .for_each(|t| bytes.extend_from_slice(&t.to_le_bytes()));
        // 63 bits: a positive int64, as Python hashes are.
        xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, self.seed) >> 1
    }
}

/// An event as vLLM's msgspec encodes it (`positional`: array_like with the type tag
/// first) or as a tagged map.
pub fn encode_event(e: &CacheEvent, block_size: usize, positional: bool) -> Value {
    let hashes = |hs: &[u64]| Value::Array(hs.iter().map(|h| Value::from(*h)).collect());
    let (tag, fields): (&str, Vec<(&str, Value)>) = match e {
        CacheEvent::Stored {
            hashes: hs,
            parent,
            tokens,
            salt,
            adapter,
        } => (
            "BlockStored",
            vec![
                ("block_hashes", hashes(hs)),
                ("parent_block_hash", parent.map_or(Value::Nil, Value::from)),
                (
                    "token_ids",
                    Value::Array(tokens.iter().map(|t| Value::from(*t)).collect()),
                ),
                ("block_size", Value::from(block_size as u64)),
                (
                    "lora_id",
                    adapter.as_ref().map_or(Value::Nil, |a| Value::from(a.0)),
                ),
                ("medium", Value::from("GPU")),
                (
                    "lora_name",
                    adapter
                        .as_ref()
                        .map_or(Value::Nil, |a| Value::from(a.1.as_str())),
                ),
                ("extra_keys", extra_keys(hs.len(), salt, adapter)),
            ],
        ),
        CacheEvent::Removed { hashes: hs } => (
            "BlockRemoved",
            vec![("block_hashes", hashes(hs)), ("medium", Value::from("GPU"))],
        ),
        CacheEvent::Cleared => ("AllBlocksCleared", vec![]),
    };
    if positional {
        let mut a = vec![Value::from(tag)];
        a.extend(fields.into_iter().map(|(_, v)| v));
        Value::Array(a)
    } else {
        let mut m = vec![(Value::from("type"), Value::from(tag))];
        m.extend(fields.into_iter().map(|(k, v)| (Value::from(k), v)));
        Value::Map(m)
    }
}

/// One entry per block, as vLLM sends them: the adapter's name on every block, then
/// the salt on the first (a salted run starts at the request's first block); nil for
/// a block with neither, and for the whole list when no block has any.
fn extra_keys(blocks: usize, salt: &Option<String>, adapter: &Option<(u32, String)>) -> Value {
    if salt.is_none() && adapter.is_none() {
        return Value::Nil;
    }
    let entry = |i: usize| {
        let mut items: Vec<Value> = adapter.iter().map(|a| Value::from(a.1.as_str())).collect();
        items.extend(
            salt.iter()
                .filter(|_| i == 0)
                .map(|s| Value::from(s.as_str())),
        );
        if items.is_empty() {
            Value::Nil
        } else {
            Value::Array(items)
        }
    };
    Value::Array((0..blocks).map(entry).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_blocks_are_stored_with_their_parent_and_evictions_removed() {
        let mut c = TokenBlockCache::new(2, 3, 9);
        let mut ev = Vec::new();
        let l = c.lookup_insert(&[1, 2, 3, 4, 5], &BlockKeys::default(), &mut ev);
        assert_eq!((l.blocks, l.hit_blocks), (2, 0));
        let CacheEvent::Stored {
            hashes,
            parent,
            tokens,
            ..
        } = &ev[0]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (hashes.len(), *parent, tokens.as_slice()),
            (2, None, &[1, 2, 3, 4][..])
        );
        let first = hashes[0];
        ev.clear();
        let l = c.lookup_insert(&[1, 2, 9, 9, 8, 8], &BlockKeys::default(), &mut ev);
        assert_eq!(l.hit_blocks, 1);
        // Two new blocks after the cached first; the fourth block overflows capacity 3.
        assert!(
            matches!(&ev[0], CacheEvent::Stored { parent: Some(p), hashes, .. } if *p == first && hashes.len() == 2)
        );
        assert!(matches!(&ev[1], CacheEvent::Removed { hashes } if hashes.len() == 1));
    }

    #[test]
    fn a_salted_prompt_is_other_blocks_and_says_its_salt() {
        let mut c = TokenBlockCache::new(2, 16, 9);
        let mut ev = Vec::new();
        c.lookup_insert(&[1, 2, 3, 4], &BlockKeys::default(), &mut ev);
        ev.clear();
        // The same tokens under a salt hit nothing, and the store names the salt.
        let salted = BlockKeys {
            salt: Some("t"),
            adapter: None,
        };
        let l = c.lookup_insert(&[1, 2, 3, 4], &salted, &mut ev);
        assert_eq!(l.hit_blocks, 0);
        assert!(
            matches!(&ev[0], CacheEvent::Stored { salt: Some(s), parent: None, .. } if s == "t")
        );
        let encoded = encode_event(&ev[0], 2, false);
        let extra = encoded
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("extra_keys")))
            .map(|(_, v)| v.clone());
        assert_eq!(
            extra,
            Some(Value::Array(vec![
                Value::Array(vec![Value::from("t")]),
                Value::Nil
            ]))
        );
        // Under the same salt again: hits.
        assert_eq!(
            c.lookup_insert(&[1, 2, 3, 4], &salted, &mut ev).hit_blocks,
            2
        );
        // An adapter's blocks are others again; every block names it, the first the salt too.
        ev.clear();
        let lora = BlockKeys {
            salt: Some("t"),
            adapter: Some((1, "sql")),
        };
        assert_eq!(c.lookup_insert(&[1, 2, 3, 4], &lora, &mut ev).hit_blocks, 0);
        let CacheEvent::Stored { salt, adapter, .. } = &ev[0] else {
            panic!("{ev:?}")
        };
        let keys = extra_keys(2, salt, adapter);
        let entry = |items: &[&str]| Value::Array(items.iter().map(|i| Value::from(*i)).collect());
        assert_eq!(
            keys,
            Value::Array(vec![entry(&["sql", "t"]), entry(&["sql"])])
        );
    }
}
