//! Prompt tokens computed on the shard (`--tokenizer-path`, kv_aware): the model's own
//! `tokenizer.json` (Hugging Face `tokenizers`) and chat template (`template`), so no
//! worker is asked. CPU work only: the files are read once at start.
//!
//! A chat's rendered text is cut at the tokenizer's special tokens (`<|im_start|>`,
//! ...), which the tokenizer never merges with their neighbours, and each piece's
//! tokens are cached: turn n+1 of a conversation tokenizes only what is new. At load
//! the cut is checked against tokenizing the whole text; a tokenizer for which they
//! differ is used whole. A byte-level BPE tokenizer's new pieces are tokenized word by
//! word (`words`), checked the same way.

mod template;
mod words;

pub use words::MAX_WORD_BYTES;

use crate::token_cache::TokenCache;
use serde_json::Value;
use std::path::Path;
use std::rc::Rc;
use template::{ChatTemplate, MessageValues};
use tokenizers::Tokenizer;
use words::{Words, WordsShape};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The cache seed of texts tokenized with the tokenizer's special tokens added.
const WITH_SPECIAL_TOKENS: u64 = 1;

/// Text a shard tokenizes for one request, past what its cache already holds: about
/// 8k tokens, 2 ms of the shard's CPU cold word by word (`--bench tokenize`: 0.8 ms
/// for 12.9 KB; 4-5 ms through the whole `tokenizers` pipeline).
/// A request with more new text asks a worker's `/tokenize` instead, which waits
/// without holding the shard.
pub const MAX_NEW_TEXT_BYTES: usize = 32 * 1024;

/// A conversation the load-time check renders and tokenizes both ways.
const PROBE: &str = r#"{"messages": [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Hello, how are you? 123 + 456 = ?"},
    {"role": "assistant", "content": " Fine, thanks.\n\n579."},
    {"role": "user", "content": "Tell me more  about   tokenizers."}]}"#;

/// Text the load-time check also tokenizes word by word: what a word pattern decides.
const WORD_PROBE: &str = "It's 2024: we'll see, they've said I'd go; 12345 + 0.5 = x_y?\n\n  \tTabs,\r\n\
    trailing   \n\u{a0}non-breaking, caf\u{e9} na\u{ef}ve \u{6771}\u{4eac} \u{1f600}! ---> <| |> end  ";

/// A model's tokenizer and chat template, as loaded (each shard clones it).
#[derive(Clone)]
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    /// Special tokens a rendered chat is cut at, by first byte, longest first; empty
    /// when cutting would change the tokens.
    cuts: Vec<Vec<(String, u32)>>,
    /// Bytes that may begin a special token (ChatML's all begin with `<`).
    begins: Vec<u8>,
    /// How pieces are split into words when the tokenizer is byte-level BPE (`words`);
    /// None: pieces go through the whole `tokenizers` pipeline.
    words: Option<WordsShape>,
}

impl ChatTokenizer {
    /// Reads `dir/tokenizer.json` and `dir/tokenizer_config.json` (the template).
    pub fn load(dir: &Path) -> Result<ChatTokenizer, String> {
        let file = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let config_file = dir.join("tokenizer_config.json");
        let config: Value = match std::fs::read(&config_file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}", config_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => return Err(format!("cannot read {}: {e}", config_file.display())),
        };
        let mut t = ChatTokenizer::new(tokenizer, ChatTemplate::from_config(&config)?);
        if !t.cut_matches_whole() {
            crate::warn!(
                "{}: cutting a chat at special tokens changes its tokens; chats are tokenized whole",
                file.display()
            );
            t.no_cuts();
        }
        if t.words.is_some() && !t.words_match_whole() {
            crate::warn!(
                "{}: tokenizing word by word changes its tokens; the whole pipeline is used",
                file.display()
            );
            t.words = None;
        }
        Ok(t)
    }

    fn new(tokenizer: Tokenizer, template: Option<ChatTemplate>) -> Self {
        let cuts = cuts_of(&tokenizer);
        let begins = (0..=255u8)
            .filter(|b| !cuts[*b as usize].is_empty())
            .collect();
        ChatTokenizer {
            cuts,
            begins,
            words: WordsShape::of(&tokenizer),
            tokenizer,
            template,
        }
    }

    /// Chats are tokenized whole from now on.
    fn no_cuts(&mut self) {
        self.cuts.iter_mut().for_each(Vec::clear);
        self.begins.clear();
    }

    /// Whether the tokenizer has the chat template a chat request needs.
    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    /// Whether chats are cut at special tokens (else tokenized whole).
    pub fn cuts_chats(&self) -> bool {
        self.cuts.iter().any(|c| !c.is_empty())
    }

    /// Whether pieces are tokenized word by word (`words`).
    pub fn splits_words(&self) -> bool {
        self.words.is_some()
    }

    /// The text vLLM's `/tokenize` would tokenize for the request, and whether the
    /// tokenizer adds its special tokens (a completion: yes; a rendered chat: no).
    pub fn prompt(&self, body: &Value) -> Option<(String, bool)> {
        self.prompt_with(body, &mut MessageValues::default())
    }

    /// [`ChatTokenizer::prompt`], with messages converted before taken from `known`.
    fn prompt_with(&self, body: &Value, known: &mut MessageValues) -> Option<(String, bool)> {
        if body.get("messages").is_some() {
            let text = self.template.as_ref()?.render(body, known).ok()?;
            return Some((text, false));
        }
        Some((body.get("prompt")?.as_str()?.to_string(), true))
    }

    /// The text's tokens, tokenized whole (what vLLM does).
    pub fn whole(&self, text: &str, add_special: bool) -> Option<Vec<u32>> {
        let e = self.tokenizer.encode_fast(text, add_special).ok()?;
        Some(e.get_ids().to_vec())
    }

    /// The text's tokens, piece by piece through `cache` (a new piece word by word
    /// with `words`), into `out` (cleared first); None when more than `budget` bytes
    /// of it are not cached.
    fn by_pieces(
        &self,
        text: &str,
        cache: &mut TokenCache,
        mut words: Option<&mut Words>,
        budget: usize,
        out: &mut Vec<u32>,
    ) -> Option<()> {
        out.clear();
        let mut left = budget;
        let mut piece = |s: &str, out: &mut Vec<u32>| -> Option<()> {
            if s.is_empty() {
                return Some(());
            }
            let key = xxh3_64(s.as_bytes());
            if let Some(t) = cache.get(key) {
                out.extend_from_slice(&t);
                return Some(());
            }
            left = left.checked_sub(s.len())?;
            let from = out.len();
            match words.as_deref_mut() {
                Some(w) => w.encode(self.tokenizer.get_model(), s, out)?,
                None => out.extend_from_slice(&self.whole(s, false)?),
            }
            cache.put(key, Rc::from(&out[from..]));
            Some(())
        };
        let bytes = text.as_bytes();
        let (mut start, mut at) = (0, 0);
        while let Some(skip) = self.next_begin(&bytes[at..]) {
            at += skip;
            let cands = &self.cuts[bytes[at] as usize];
            match cands
                .iter()
                .find(|(s, _)| bytes[at..].starts_with(s.as_bytes()))
            {
                Some((s, id)) => {
                    piece(&text[start..at], out)?;
                    out.push(*id);
                    at += s.len();
                    start = at;
                }
                None => at += 1,
            }
        }
        piece(&text[start..], out)?;
        Some(())
    }

    /// Where the next byte that may begin a special token is: a SIMD search for up to
    /// three first bytes (a 4k-token chat is 13 KB, scanned per request).
    fn next_begin(&self, bytes: &[u8]) -> Option<usize> {
        match self.begins[..] {
            [] => None,
            [a] => memchr::memchr(a, bytes),
            [a, b] => memchr::memchr2(a, b, bytes),
            [a, b, c] => memchr::memchr3(a, b, c, bytes),
            _ => bytes.iter().position(|x| self.begins.contains(x)),
        }
    }

    fn cut_matches_whole(&self) -> bool {
        let text = self.probe_text();
        let mut cache = TokenCache::default();
        let mut pieces = Vec::new();
        let cut = self.by_pieces(&text, &mut cache, None, usize::MAX, &mut pieces);
        cut.is_some() && self.whole(&text, false) == Some(pieces)
    }

    /// Whether word by word gives the whole pipeline's tokens on the probe and on texts
    /// that try its pattern (contractions, numbers, runs of spaces and newlines, bytes
    /// outside ASCII).
    fn words_match_whole(&self) -> bool {
        let Some(mut words) = self.words.as_ref().and_then(Words::new) else {
            return false;
        };
        let texts = [
            self.probe_text(),
            WORD_PROBE.to_string(),
            WORD_PROBE.replace(' ', "  "),
        ];
        texts.iter().all(|text| {
            let mut out = Vec::new();
            let mut cache = TokenCache::default();
            let cut = self.by_pieces(text, &mut cache, Some(&mut words), usize::MAX, &mut out);
            cut.is_some() && self.whole(text, false) == Some(out)
        })
    }

    /// The probe conversation, rendered (or its contents joined without a template).
    fn probe_text(&self) -> String {
        let body: Value = serde_json::from_str(PROBE).expect("the probe is JSON");
        match self.prompt(&body) {
            Some((text, _)) => text,
            None => body["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("template", &self.template.is_some())
            .finish_non_exhaustive()
    }
}

/// Special tokens that are cut at: matched exactly as written (not normalized, no
/// stripping of neighbouring spaces), by first byte, longest first.
fn cuts_of(tokenizer: &Tokenizer) -> Vec<Vec<(String, u32)>> {
    let mut cuts: Vec<Vec<(String, u32)>> = vec![Vec::new(); 256];
    for (id, t) in tokenizer.get_added_tokens_decoder() {
        let plain = t.special && !t.normalized && !t.lstrip && !t.rstrip && !t.single_word;
        if plain && !t.content.is_empty() {
            cuts[t.content.as_bytes()[0] as usize].push((t.content.clone(), id));
        }
    }
    for c in &mut cuts {
        c.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    }
    cuts
}

/// One shard's tokenizer and its cache of pieces.
pub struct ShardTokenizer {
    model: ChatTokenizer,
    pieces: TokenCache,
    /// Messages of earlier turns, converted for the template.
    known: MessageValues,
    /// A chat's tokens as they are put together (kept: a long chat's 16 KiB are not
    /// allocated and faulted in again per request).
    scratch: Vec<u32>,
    /// Word tokens, when the tokenizer is byte-level BPE.
    words: Option<Words>,
    /// Tokenized here, and not (no template, a failed render, not text).
    pub counts: [u64; 2],
}

impl ShardTokenizer {
    pub fn new(model: ChatTokenizer) -> Self {
        ShardTokenizer {
            words: model.words.as_ref().and_then(Words::new),
            model,
            pieces: TokenCache::default(),
            known: MessageValues::default(),
            scratch: Vec::new(),
            counts: [0; 2],
        }
    }

    /// The request's prompt tokens; None when they cannot be computed here, or would
    /// cost more than [`MAX_NEW_TEXT_BYTES`] of new text.
    pub fn tokens(&mut self, body: &Value) -> Option<Rc<[u32]>> {
        let prompt = self.model.prompt_with(body, &mut self.known);
        let tokens = prompt.and_then(|(text, add_special)| {
            if add_special {
                self.completion(&text)
            } else {
                let (pieces, out) = (&mut self.pieces, &mut self.scratch);
                let words = self.words.as_mut();
                let t = self
                    .model
                    .by_pieces(&text, pieces, words, MAX_NEW_TEXT_BYTES, out);
                t.map(|()| Rc::from(&out[..]))
            }
        });
        self.counts[usize::from(tokens.is_none())] += 1;
        tokens
    }

    /// A completion's prompt with the tokenizer's special tokens, whole, cached like a
    /// chat's pieces (under another seed: the same text tokenizes otherwise there).
    fn completion(&mut self, text: &str) -> Option<Rc<[u32]>> {
        let key = xxh3_64_with_seed(text.as_bytes(), WITH_SPECIAL_TOKENS);
        if let Some(t) = self.pieces.get(key) {
            return Some(t);
        }
        if text.len() > MAX_NEW_TEXT_BYTES {
            return None;
        }
        let t: Rc<[u32]> = self.model.whole(text, true)?.into();
        self.pieces.put(key, t.clone());
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Words of a tiny vocabulary, split on whitespace; `<s>` is special.
    const WORDS: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 3, "content": "<s>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"hello": 0, "world": 1, "[UNK]": 2, "<s>": 3},
            "unk_token": "[UNK]"}}"#;

    fn words(cut: bool) -> ChatTokenizer {
        let mut t = ChatTokenizer::new(WORDS.parse().unwrap(), None);
        if !cut {
            t.no_cuts();
        }
        t
    }

    #[test]
    fn pieces_equal_the_whole_with_or_without_cuts_and_within_the_budget() {
        let text = "hello<s>world hello <s><s>bye";
        for cut in [true, false] {
            let t = words(cut);
            assert_eq!(t.cuts_chats(), cut);
            let whole = t.whole(text, false).unwrap();
            assert_eq!(whole, [0, 3, 1, 0, 3, 3, 2]);
            let mut cache = TokenCache::default();
            let mut out = Vec::new();
            t.by_pieces(text, &mut cache, None, usize::MAX, &mut out)
                .unwrap();
            assert_eq!(out, whole);
            t.by_pieces(text, &mut cache, None, 0, &mut out).unwrap();
            assert_eq!(out, whole, "all cached");
            assert!(
                (t.by_pieces("world world", &mut cache, None, 5, &mut out)).is_none(),
                "over budget"
            );
        }
        // Without a template a chat cannot be rendered here; a text prompt can, and its
        // tokens are kept for the next time.
        let t = words(true);
        assert!(t.prompt(&json!({"messages": []})).is_none());
        assert_eq!(
            t.prompt(&json!({"prompt": "hello"})),
            Some(("hello".into(), true))
        );
        let mut shard = ShardTokenizer::new(t);
        let completion = json!({"prompt": "hello world"});
        assert_eq!(&*shard.tokens(&completion).unwrap(), &[0, 1]);
        let key = xxh3_64_with_seed(b"hello world", WITH_SPECIAL_TOKENS);
        assert!(shard.pieces.get(key).is_some(), "cached");
        assert_eq!(&*shard.tokens(&completion).unwrap(), &[0, 1]);
        assert_eq!(shard.counts, [2, 0]);
    }
}
