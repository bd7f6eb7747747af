//! vLLM's KV-cache events as they come off the wire: one ZMQ message of three frames
//! (topic, sequence number, msgpack payload) holding a batch of events.
//!
//! vLLM encodes with msgspec `array_like=True, tag=True`: a batch is
//! `[ts, [events...], data_parallel_rank]` and an event is `["BlockStored", field,
//! ...]` in declaration order. Other publishers (and 0.1.17's tests) send maps: a batch
//! `{"ts", "events", "data_parallel_rank"}` and an event `{"type": "BlockStored", ...}`.
//! Both are accepted, at batch and at event level. Unknown event types and unknown
//! fields are skipped (vLLM adds fields over releases); a payload that is not a batch
//! at all is an error for the caller to count.

use rmpv::Value;

/// A block's hash as the engine names it: a 64-bit integer or a byte string (vLLM's
/// `sha256_cbor` gives 32 bytes). Only an opaque name: the index keys blocks by its own
/// hash of their token ids, and uses this to find parents and removals.
pub type WireHash = u64;

pub use shards::kv_blocks::Medium;
use shards::kv_blocks::{extra_key_hash, ExtraKeyItem};

/// vLLM's medium strings, case-insensitive; missing means the GPU. A block whose
/// `ownership` is `external` (a connector reporting what it stored outside the worker)
/// is in the external tier whatever its medium. Another string (a tier the router has
/// no price for, such as `NVME`) is None: not indexed.
fn parse_medium(v: Option<&Value>, ownership: Option<&Value>) -> Option<Medium> {
    let external = |s: &str| s.eq_ignore_ascii_case("external");
    if ownership.and_then(Value::as_str).is_some_and(external) {
        return Some(Medium::External);
    }
    let Some(s) = v.and_then(Value::as_str) else {
        return Some(Medium::Device);
    };
    match s.to_ascii_uppercase().as_str() {
        "GPU" | "CUDA" | "DEVICE" => Some(Medium::Device),
        "CPU" | "HOST" | "HOST_PINNED" => Some(Medium::Host),
        "DISK" | "STORAGE" => Some(Medium::Disk),
        "EXTERNAL" | "REMOTE" => Some(Medium::External),
        _ => None,
    }
}

/// One event of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum KvEvent {
    BlockStored {
        block_hashes: Vec<WireHash>,
        parent: Option<WireHash>,
        token_ids: Vec<u32>,
        block_size: u32,
        /// A LoRA adapter's blocks (`lora_id` or `lora_name` set).
        lora: bool,
        /// The adapter's name, which vLLM hashes into each of its blocks (0.x releases
        /// before it sent only `lora_id`: those blocks cannot be named).
        lora_name: Option<String>,
        /// A non-default KV group, or extra keys not lined up with the blocks: not
        /// creditable either.
        special: bool,
        /// Per block, the name of its extra keys (`kv_blocks::extra_key_hash`; 0: none):
        /// a `cache_salt` on a salted request's first block, an image's identifier on a
        /// multimodal one. Empty when no block has any.
        extra: Vec<u64>,
        medium: Option<Medium>,
    },
    BlockRemoved {
        block_hashes: Vec<WireHash>,
        medium: Option<Medium>,
    },
    AllBlocksCleared,
}

/// A decoded batch.
#[derive(Debug, PartialEq)]
pub struct EventBatch {
    pub events: Vec<KvEvent>,
    pub data_parallel_rank: Option<u32>,
    /// Events of a type this router does not know, skipped.
    pub skipped: usize,
}

/// The three frames of a live message, checked: the sequence number is 8 bytes,
/// big-endian, signed.
pub fn split_message<'a>(frames: &[&'a [u8]]) -> Result<(i64, &'a [u8]), &'static str> {
    let [_topic, seq, payload] = frames else {
        return Err("not three frames");
    };
    let seq: [u8; 8] = (*seq).try_into().map_err(|_| "sequence not 8 bytes")?;
    Ok((i64::from_be_bytes(seq), payload))
}

/// Decodes a batch's msgpack payload.
pub fn decode_batch(payload: &[u8]) -> Result<EventBatch, String> {
    let mut rest = payload;
    let v = rmpv::decode::read_value(&mut rest).map_err(|e| format!("not msgpack: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the batch", rest.len()));
    }
    let (events, rank) = match &v {
        Value::Array(a) => (a.get(1), a.get(2)),
        Value::Map(_) => (field(&v, "events"), field(&v, "data_parallel_rank")),
        _ => return Err("a batch is an array or a map".into()),
    };
    let events = events
        .and_then(Value::as_array)
        .ok_or("a batch without an event list")?;
    let mut batch = EventBatch {
        events: Vec::with_capacity(events.len()),
        data_parallel_rank: rank.and_then(Value::as_u64).map(|r| r as u32),
        skipped: 0,
    };
    for e in events {
        match decode_event(e)? {
            Some(event) => batch.events.push(event),
            None => batch.skipped += 1,
        }
    }
    Ok(batch)
}

/// A map's value under `name`.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

/// An event's fields by name, whichever encoding it came in.
struct Fields<'a> {
    event: &'a Value,
    /// The positional names of this event type, after the tag.
    names: &'static [&'static str],
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        let v = match self.event {
            Value::Array(a) => {
                let i = self.names.iter().position(|n| *n == name)?;
                a.get(i + 1)
            }
            map => field(map, name),
        };
        v.filter(|v| !v.is_nil())
    }
}

/// vLLM's field order for each event type (`vllm/distributed/kv_events.py`).
const BLOCK_STORED: &[&str] = &[
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
];
const BLOCK_REMOVED: &[&str] = &["block_hashes", "medium"];

/// One event; None for a type this router does not know.
fn decode_event(e: &Value) -> Result<Option<KvEvent>, String> {
    let tag = match e {
        Value::Array(a) => a.first().and_then(Value::as_str),
        Value::Map(_) => field(e, "type").and_then(Value::as_str),
        _ => None,
    }
    .ok_or("an event without a type tag")?;
    let names = match tag {
        "BlockStored" => BLOCK_STORED,
        "BlockRemoved" => BLOCK_REMOVED,
        "AllBlocksCleared" => return Ok(Some(KvEvent::AllBlocksCleared)),
        _ => return Ok(None),
    };
    let f = Fields { event: e, names };
    let hashes = hash_list(f.get("block_hashes")).ok_or("block_hashes missing or not hashes")?;
    let medium = parse_medium(f.get("medium"), f.get("ownership"));
    if tag == "BlockRemoved" {
        return Ok(Some(KvEvent::BlockRemoved {
            block_hashes: hashes,
            medium,
        }));
    }
    let parent = match f.get("parent_block_hash") {
        None => None,
        Some(p) => Some(wire_hash(p).ok_or("parent_block_hash not a hash")?),
    };
    let token_ids = f
        .get("token_ids")
        .and_then(Value::as_array)
        .ok_or("token_ids missing")?
        .iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect::<Option<Vec<u32>>>()
        .ok_or("token_ids not token ids")?;
    let block_size = f
        .get("block_size")
        .and_then(Value::as_u64)
        .and_then(|b| u32::try_from(b).ok())
        .ok_or("block_size missing")?;
    let group = f.get("group_idx").and_then(Value::as_u64).unwrap_or(0);
    let extra = extra_keys(f.get("extra_keys"), hashes.len());
    Ok(Some(KvEvent::BlockStored {
        lora: f.get("lora_id").is_some() || f.get("lora_name").is_some(),
        lora_name: f
            .get("lora_name")
            .and_then(Value::as_str)
            .map(str::to_string),
        special: group != 0 || extra.is_none(),
        extra: extra.unwrap_or_default(),
        block_hashes: hashes,
        parent,
        token_ids,
        block_size,
        medium,
    }))
}

/// `extra_keys`: one entry per block, nil or a tuple of items (vLLM since early 2026).
/// Each block's entry named by `extra_key_hash`, 0 for nil; empty when every entry is
/// nil or the field is missing; None when the list does not line up with the blocks.
fn extra_keys(v: Option<&Value>, blocks: usize) -> Option<Vec<u64>> {
    let Some(v) = v else {
        return Some(Vec::new());
    };
    let entries = v.as_array().filter(|a| a.len() == blocks)?;
    if entries.iter().all(Value::is_nil) {
        return Some(Vec::new());
    }
    Some(entries.iter().map(extra_entry).collect())
}

/// One block's extra keys, named as a request's would be.
fn extra_entry(v: &Value) -> u64 {
    let items: &[Value] = match v {
        Value::Nil => return 0,
        Value::Array(a) => a,
        one => std::slice::from_ref(one),
    };
    // Items that are neither text, integers nor bytes (nested tuples) by their encoding:
    // only requests' salts are ever matched, and those are text.
    let encoded: Vec<Vec<u8>> = items
        .iter()
        .map(|i| {
            let mut out = Vec::new();
            if !matches!(i, Value::String(_) | Value::Integer(_) | Value::Binary(_)) {
                let _ = rmpv::encode::write_value(&mut out, i);
            }
            out
        })
        .collect();
    extra_key_hash(items.iter().zip(&encoded).map(|(i, enc)| match i {
        Value::String(s) => match s.as_str() {
            Some(t) => ExtraKeyItem::Text(t),
            None => ExtraKeyItem::Bytes(s.as_bytes()),
        },
        Value::Integer(n) => {
            ExtraKeyItem::Int(n.as_i64().unwrap_or(n.as_u64().unwrap_or(0) as i64))
        }
        Value::Binary(b) => ExtraKeyItem::Bytes(b),
        _ => ExtraKeyItem::Bytes(enc),
    }))
}

fn hash_list(v: Option<&Value>) -> Option<Vec<WireHash>> {
    v?.as_array()?.iter().map(wire_hash).collect()
}

/// An integer (signed or not) as its 64 bits; bytes folded with xxh3.
fn wire_hash(v: &Value) -> Option<WireHash> {
    match v {
        Value::Integer(i) => i.as_u64().or_else(|| i.as_i64().map(|i| i as u64)),
        Value::Binary(b) => Some(xxhash_rust::xxh3::xxh3_64(b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    fn stored_positional() -> Value {
        Value::Array(vec![
            s("BlockStored"),
            Value::Array(vec![Value::from(11u64), Value::from(-12i64)]),
            Value::Nil,
            Value::Array((0..4u32).map(Value::from).collect()),
            Value::from(2u32),
            Value::Nil,
            s("GPU"),
        ])
    }

    #[test]
    fn vllm_positional_batch() {
        let batch = Value::Array(vec![
            Value::F64(1.5),
            Value::Array(vec![
                stored_positional(),
                Value::Array(vec![
                    s("BlockRemoved"),
                    Value::Array(vec![Value::from(11u64)]),
                    s("cpu"),
                ]),
                Value::Array(vec![s("AllBlocksCleared")]),
                Value::Array(vec![s("SomethingNew"), Value::from(1)]),
            ]),
            Value::from(3u32),
        ]);
        let b = decode_batch(&encode(&batch)).unwrap();
        assert_eq!(b.data_parallel_rank, Some(3));
        assert_eq!(b.skipped, 1);
        assert_eq!(
            b.events[0],
            KvEvent::BlockStored {
                block_hashes: vec![11, (-12i64) as u64],
                parent: None,
                token_ids: vec![0, 1, 2, 3],
                block_size: 2,
                lora: false,
                lora_name: None,
                special: false,
                extra: vec![],
                medium: Some(Medium::Device),
            }
        );
        assert_eq!(
            b.events[1],
            KvEvent::BlockRemoved {
                block_hashes: vec![11],
                medium: Some(Medium::Host)
            }
        );
        assert_eq!(b.events[2], KvEvent::AllBlocksCleared);
    }

    #[test]
    fn map_tagged_batch_with_bytes_hashes_and_unknown_fields() {
        let digest = Value::Binary(vec![7; 32]);
        let event = Value::Map(vec![
            (s("type"), s("BlockStored")),
            (s("block_hashes"), Value::Array(vec![digest.clone()])),
            (s("parent_block_hash"), Value::from(5u64)),
            (
                s("token_ids"),
                Value::Array(vec![Value::from(9u32), Value::from(8u32)]),
            ),
            (s("block_size"), Value::from(2u32)),
            (s("medium"), s("NVME")),
            (s("ownership"), s("whatever")),
        ]);
        let batch = Value::Map(vec![
            (s("ts"), Value::F64(0.0)),
            (s("events"), Value::Array(vec![event])),
        ]);
        let b = decode_batch(&encode(&batch)).unwrap();
        let KvEvent::BlockStored {
            block_hashes,
            parent,
            medium,
            ..
        } = &b.events[0]
        else {
            panic!("{b:?}");
        };
        assert_eq!(block_hashes[0], xxhash_rust::xxh3::xxh3_64(&[7; 32]));
        assert_eq!((*parent, *medium), (Some(5), None));
        assert_eq!(b.data_parallel_rank, None);
    }

    #[test]
    fn external_ownership_or_medium_is_the_external_tier() {
        let m = |medium: Option<&str>, ownership: Option<&str>| {
            parse_medium(medium.map(s).as_ref(), ownership.map(s).as_ref())
        };
        assert_eq!(m(None, None), Some(Medium::Device));
        assert_eq!(m(Some("cpu"), Some("local")), Some(Medium::Host));
        assert_eq!(m(Some("GPU"), Some("External")), Some(Medium::External));
        assert_eq!(m(Some("remote"), None), Some(Medium::External));
        assert_eq!(m(Some("NVME"), None), None);
    }

    #[test]
    fn adapters_and_multimodal_blocks_are_marked() {
        let mut e = stored_positional();
        if let Value::Array(a) = &mut e {
            a[5] = Value::from(1u32); // lora_id
        }
        let batch = Value::Array(vec![Value::F64(0.0), Value::Array(vec![e])]);
        let b = decode_batch(&encode(&batch)).unwrap();
        assert!(matches!(
            b.events[0],
            KvEvent::BlockStored { lora: true, .. }
        ));
    }

    #[test]
    fn extra_keys_name_each_block_and_must_line_up() {
        let with = |extra: Value| {
            let mut e = stored_positional();
            if let Value::Array(a) = &mut e {
                a.push(Value::Nil); // lora_name
                a.push(extra);
            }
            let batch = Value::Array(vec![Value::F64(0.0), Value::Array(vec![e])]);
            match decode_batch(&encode(&batch)).unwrap().events.remove(0) {
                KvEvent::BlockStored { special, extra, .. } => (special, extra),
                e => panic!("{e:?}"),
            }
        };
        // A salted request's first store: the salt on the first block only.
        let salt = extra_key_hash([ExtraKeyItem::Text("tenant-a")]);
        let salted = Value::Array(vec![Value::Array(vec![s("tenant-a")]), Value::Nil]);
        assert_eq!(with(salted), (false, vec![salt, 0]));
        // Every block nil, or none given: plain blocks.
        assert_eq!(
            with(Value::Array(vec![Value::Nil, Value::Nil])),
            (false, vec![])
        );
        assert_eq!(with(Value::Nil), (false, vec![]));
        // Not one entry per block: not indexed.
        assert!(with(Value::Array(vec![Value::Nil])).0);
        // An image's identifier names the block too (no request will match it).
        let mm = Value::Array(vec![
            Value::Nil,
            Value::Array(vec![s("img-1"), Value::from(3)]),
        ]);
        let (special, extra) = with(mm);
        assert!(!special && extra[0] == 0 && extra[1] != 0 && extra[1] != salt);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for payload in [
            &b""[..],
            b"\xc1",
            b"\x93\x01",
            &encode(&Value::from(5)),
            &encode(&Value::Array(vec![Value::F64(0.0), Value::from(1)])),
            &encode(&Value::Array(vec![
                Value::F64(0.0),
                Value::Array(vec![Value::from(1)]),
            ])),
            &encode(&Value::Array(vec![
                Value::F64(0.0),
                Value::Array(vec![Value::Array(vec![s("BlockStored"), Value::from("x")])]),
            ])),
        ] {
            assert!(decode_batch(payload).is_err(), "{payload:?}");
        }
        let mut trailing = encode(&Value::Array(vec![Value::F64(0.0), Value::Array(vec![])]));
        trailing.push(0);
        assert!(decode_batch(&trailing).is_err());
    }

    #[test]
    fn frames() {
        let seq = 7i64.to_be_bytes();
        assert_eq!(split_message(&[b"", &seq, b"p"]), Ok((7, &b"p"[..])));
        assert!(split_message(&[b"", &seq[..7], b"p"]).is_err());
        assert!(split_message(&[b"", &seq]).is_err());
    }
}
