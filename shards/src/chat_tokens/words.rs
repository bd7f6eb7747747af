//! Byte-level BPE tokens without the `tokenizers` pipeline's bookkeeping: split a text
//! into words with the tokenizer's own pattern, look each word up in a cache of word
//! tokens, and ask the BPE model only for words not seen before.
//!
//! `Tokenizer::encode_fast` keeps offsets and a string per token, a normalized copy of
//! each word with an alignment per byte, and an `Encoding` of eight vectors: at 4k
//! tokens, 40% of its 2 ms went to `malloc` and `free` (`--bench tokenize`, perf). The
//! ids are the same: the words are the pre-tokenizer's (its regex, isolated), each
//! mapped to GPT-2's byte alphabet, and each word's tokens are the model's. Only
//! tokenizers of exactly that shape take this path ([`WordsShape::of`]: no normalizer,
//! a byte-level pre-tokenizer without an added prefix space, BPE without dropout, only
//! special tokens added, no truncation or padding), and a load-time probe compares it
//! with the whole pipeline (`ChatTokenizer::load`).

use crate::prehashed::PrehashedMap;
use serde_json::Value;
use smallvec::SmallVec;
use tokenizers::utils::SysRegex;
use tokenizers::{Model, ModelWrapper, Tokenizer};
use xxhash_rust::xxh3::xxh3_64;

/// GPT-2's word pattern, which `ByteLevel` with `use_regex` splits by.
const GPT2_WORDS: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Words a shard keeps the tokens of: a language's working vocabulary fits many times
/// over, at about 40 bytes a word (2.5 MiB). Past it the cache starts again: a shard
/// that meets this many different words is tokenizing unlike texts, which no
/// eviction order would make cheap.
pub const MAX_WORDS: usize = 1 << 16;

/// The longest word tokenized on the shard. BPE on one word grows faster than its
/// length: a 21 KB word of letters took 5.9 ms, a 20 KB run of spaces 2.8 ms (release,
/// `bench/tests/chat_tokens.rs`), where natural words are some bytes. A request with a
/// longer word asks a worker's `/tokenize`, which waits without holding the shard.
pub const MAX_WORD_BYTES: usize = 1024;

/// How a tokenizer splits words, when it is byte-level BPE (shared by the shards).
#[derive(Clone, Debug)]
pub struct WordsShape {
    pattern: String,
}

impl WordsShape {
    /// The word pattern of a tokenizer of the shape this module handles.
    pub fn of(t: &Tokenizer) -> Option<WordsShape> {
        let plain_bpe = matches!(t.get_model(), ModelWrapper::BPE(b) if b.dropout.is_none());
        let only_specials = t
            .get_added_tokens_decoder()
            .values()
            .all(|a| a.special && !a.normalized && !a.lstrip && !a.rstrip && !a.single_word);
        let plain = t.get_normalizer().is_none()
            && t.get_truncation().is_none()
            && t.get_padding().is_none();
        if !(plain_bpe && only_specials && plain) {
            return None;
        }
        let pre = serde_json::to_value(t.get_pre_tokenizer()?).ok()?;
        let pattern = match pre["type"].as_str()? {
            "ByteLevel" if byte_level(&pre, true) => GPT2_WORDS.to_string(),
            // Llama 3, Qwen 2: a regex split (isolated), then bytes mapped.
            "Sequence" => match pre["pretokenizers"].as_array()?.as_slice() {
                [split, bytes] if byte_level(bytes, false) => {
                    let isolated = split["type"] == "Split"
                        && split["behavior"] == "Isolated"
                        && split["invert"] == false;
                    isolated
                        .then(|| split["pattern"]["Regex"].as_str())??
                        .to_string()
                }
                _ => return None,
            },
            _ => return None,
        };
        Some(WordsShape { pattern })
    }
}

/// A `ByteLevel` pre-tokenizer that adds no prefix space and splits (or not) by
/// GPT-2's pattern.
fn byte_level(v: &Value, splits: bool) -> bool {
    v["type"] == "ByteLevel" && v["add_prefix_space"] == false && v["use_regex"] == splits
}

/// One shard's word splitter and cache of word tokens.
pub struct Words {
    /// Compiled per shard: a regex shared between threads takes a lock for its
    /// scratch space.
    regex: SysRegex,
    known: WordTokens,
}

/// Word tokens by a hash of the word.
struct WordTokens {
    /// Byte -> GPT-2's stand-in character.
    alphabet: [char; 256],
    tokens: PrehashedMap<SmallVec<[u32; 3]>>,
    /// A word in the byte alphabet, for the model (kept).
    mapped: String,
}

impl Words {
    pub fn new(shape: &WordsShape) -> Option<Words> {
        Some(Words {
            regex: SysRegex::new(&shape.pattern).ok()?,
            known: WordTokens {
                alphabet: gpt2_alphabet(),
                tokens: PrehashedMap::default(),
                mapped: String::new(),
            },
        })
    }

    /// Appends the tokens of `text` (which holds no special token) to `out`; None for
    /// a word over [`MAX_WORD_BYTES`].
    pub fn encode(&mut self, model: &ModelWrapper, text: &str, out: &mut Vec<u32>) -> Option<()> {
        let mut at = 0;
        for (start, end) in self.regex.find_iter(text) {
            // Isolated: the text between two matches is a word too.
            if start > at {
                self.known.word(model, &text[at..start], out)?;
            }
            self.known.word(model, &text[start..end], out)?;
            at = end;
        }
        if at < text.len() {
            self.known.word(model, &text[at..], out)?;
        }
        Some(())
    }

    /// Words whose tokens are kept.
    #[cfg(test)]
    pub fn cached(&self) -> usize {
        self.known.tokens.len()
    }
}

impl WordTokens {
    fn word(&mut self, model: &ModelWrapper, word: &str, out: &mut Vec<u32>) -> Option<()> {
        let key = xxh3_64(word.as_bytes());
        if let Some(ids) = self.tokens.get(&key) {
            out.extend_from_slice(ids);
            return Some(());
        }
        if word.len() > MAX_WORD_BYTES {
            return None;
        }
        self.mapped.clear();
        let alphabet = &self.alphabet;
        self.mapped
            .extend(word.bytes().map(|b| alphabet[usize::from(b)]));
        let tokens = model.tokenize(&self.mapped).ok()?;
        let ids: SmallVec<[u32; 3]> = tokens.iter().map(|t| t.id).collect();
        out.extend_from_slice(&ids);
        if self.tokens.len() >= MAX_WORDS {
            self.tokens.clear();
        }
        self.tokens.insert(key, ids);
        Some(())
    }
}

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, the rest
/// for the characters from U+0100 on, in byte order.
fn gpt2_alphabet() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[usize::from(b)] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are characters")
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    #[test]
    fn the_alphabet_is_byte_levels() {
        let ours: std::collections::HashSet<char> = gpt2_alphabet().into_iter().collect();
        assert_eq!(ours, ByteLevel::alphabet().into_iter().collect());
        assert_eq!(gpt2_alphabet()[usize::from(b' ')], 'Ġ');
        assert_eq!(gpt2_alphabet()[usize::from(b'\n')], 'Ċ');
    }

    /// BPE over the byte alphabet without merges: a byte's id is the byte.
    fn bytes_model() -> ModelWrapper {
        let vocab: tokenizers::models::bpe::Vocab = (gpt2_alphabet().iter().enumerate())
            .map(|(b, c)| (c.to_string(), b as u32))
            .collect();
        let bpe = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, Vec::new())
            .build()
            .unwrap();
        ModelWrapper::BPE(bpe)
    }

    #[test]
    fn words_are_split_by_the_pattern_mapped_to_bytes_and_kept_within_bounds() {
        let model = bytes_model();
        let shape = WordsShape {
            pattern: GPT2_WORDS.into(),
        };
        let mut words = Words::new(&shape).unwrap();
        let mut out = Vec::new();
        words.encode(&model, "it's é\n", &mut out).unwrap();
        let bytes: Vec<u32> = "it's é\n".bytes().map(u32::from).collect();
        assert_eq!(out, bytes);
        // "it", "'s", " é", "\n"
        assert_eq!(words.cached(), 4);
        for i in 0..MAX_WORDS + 10 {
            out.clear();
            words.encode(&model, &format!("w{i}"), &mut out).unwrap();
            assert_eq!(out.len(), 1 + format!("{i}").len());
            assert!(words.cached() <= MAX_WORDS);
        }
    }
}
