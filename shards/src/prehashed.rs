//! Maps keyed by values that are already hashes (block names, xxh3 digests of text):
//! the key is used as it is, where SipHash was a third of a kv_aware index lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from a 64-bit hash to `V`.
pub type PrehashedMap<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// The identity "hasher" of a `u64` key.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
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
