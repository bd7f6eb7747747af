//! The router's tokenizing on the shard (`shards::chat_tokens`) against the same
//! model tokenizer used whole, as vLLM uses it: the tokens must be equal, chat after
//! chat, from a cold cache and a warm one.

use serde_json::json;
use shards::chat_tokens::{ChatTokenizer, ShardTokenizer, MAX_NEW_TEXT_BYTES, MAX_WORD_BYTES};
use vllm_router_bench::mock::test_tokenizer;

#[test]
fn cut_at_special_tokens_and_cached_the_tokens_equal_the_whole_texts() {
    let dir = std::env::temp_dir().join(format!("vr-chat-tokens-{}", std::process::id()));
    test_tokenizer::write(&dir).unwrap();
    let model = ChatTokenizer::load(&dir).unwrap();
    assert!(model.has_template());
    assert!(model.cuts_chats(), "ChatML's tokens cut a chat");
    assert!(
        model.splits_words(),
        "byte-level BPE is tokenized word by word"
    );
    let mut shard = ShardTokenizer::new(model.clone());
    let mut messages = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    let turns = [
        "What is a prefix cache?",
        "  Why does it save time on the GPU?\n\nAnswer  briefly.",
        "<|im_start|> inside a message, and <|im_end|> too",
        "Tokens are cut into blocks of sixteen; é, ü and 東京 are bytes too.",
    ];
    for (i, turn) in turns.iter().enumerate() {
        messages.push(json!({"role": "user", "content": turn}));
        let chat = json!({"model": "m", "messages": messages});
        let (text, special) = model.prompt(&chat).unwrap();
        assert!(!special, "a rendered chat gets no added special tokens");
        let whole = model.whole(&text, false).unwrap();
        // Twice: from pieces new and cached.
        for _ in 0..2 {
            assert_eq!(
                &*shard.tokens(&chat).unwrap(),
                &whole[..],
                "turn {i}: {text:?}"
            );
        }
        messages.push(json!({"role": "assistant", "content": format!("Answer {i}.")}));
    }
    let completion = json!({"model": "m", "prompt": "Please explain more."});
    let whole = model.whole("Please explain more.", true).unwrap();
    assert_eq!(&*shard.tokens(&completion).unwrap(), &whole[..]);
    assert_eq!(shard.counts, [9, 0]);
    // More new text than a shard tokenizes for one request: a worker is asked.
    let long = "Please explain more about caches. ".repeat(1 + MAX_NEW_TEXT_BYTES / 34);
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": long}]});
    assert!(shard.tokens(&chat).is_none());
    assert_eq!(shard.counts, [9, 1]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Llama 3's word pattern, split before the byte mapping as its `tokenizer.json` does
/// (Qwen 2's differs only in taking digits one at a time).
const LLAMA3_WORDS: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Word by word against the whole pipeline on random texts made of what the word
/// pattern decides on: letters, digits, contractions, punctuation, runs of spaces,
/// tabs and newlines, and characters of two, three and four bytes; with GPT-2's
/// pre-tokenizer and with Llama 3's (a regex split, then bytes mapped).
#[test]
fn word_by_word_equals_the_whole_pipeline_on_random_texts() {
    let dir = std::env::temp_dir().join(format!("vr-chat-words-{}", std::process::id()));
    test_tokenizer::write(&dir).unwrap();
    let gpt2 = ChatTokenizer::load(&dir).unwrap();
    // The same model with Llama 3's pre-tokenizer.
    let file = dir.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    json["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_WORDS}, "behavior": "Isolated",
            "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": false}]});
    // A merge only Llama 3's words allow ("(The" is two words to GPT-2): a
    // path that split by GPT-2's pattern would miss it.
    let next_id = json["model"]["vocab"].as_object().unwrap().values().chain(
        json["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| &t["id"]),
    );
    let next_id = next_id.filter_map(serde_json::Value::as_u64).max().unwrap() + 1;
    assert!(
        json["model"]["vocab"]["The"].is_u64(),
        "the test vocabulary has \"The\""
    );
    json["model"]["vocab"]["(The"] = next_id.into();
    let merge = match json["model"]["merges"][0] {
        serde_json::Value::String(_) => json!("( The"),
        _ => json!(["(", "The"]),
    };
    json["model"]["merges"].as_array_mut().unwrap().push(merge);
    std::fs::write(&file, json.to_string()).unwrap();
    let llama3 = ChatTokenizer::load(&dir).unwrap();
    let paren_the = llama3.whole("(The", false).unwrap();
    assert_eq!(paren_the, [next_id as u32], "the merge applies");
    let _ = std::fs::remove_dir_all(&dir);
    for (name, model) in [("gpt2", gpt2), ("llama3", llama3)] {
        assert!(model.splits_words(), "{name}");
        random_texts_equal_the_whole(name, &model);
    }
}

fn random_texts_equal_the_whole(name: &str, model: &ChatTokenizer) {
    // Long runs: whitespace the lookahead walks, long words, long digits, up to the
    // longest word a shard tokenizes; a longer word asks a worker.
    let long = [
        format!("{}x", " ".repeat(1_000)).repeat(20),
        format!("{} ", "routers".repeat(140)).repeat(20),
        format!("{}  x\n", "\n".repeat(1_000)).repeat(5),
        format!("{} ", "1234567890".repeat(90)).repeat(20),
    ];
    let mut shard = ShardTokenizer::new(model.clone());
    for text in &long {
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        let (rendered, _) = model.prompt(&chat).unwrap();
        let whole = model.whole(&rendered, false).unwrap();
        let ours = shard.tokens(&chat).unwrap();
        assert!(
            *ours == whole[..],
            "{name}: a long text of {} bytes",
            text.len()
        );
    }
    let word = json!({"model": "m", "messages": [{"role": "user", "content": "a".repeat(MAX_WORD_BYTES + 1)}]});
    assert!(shard.tokens(&word).is_none(), "{name}: a word too long");
    let parts = [
        "the", "router", "Prefix", "cache", "'s", "'ll", "'d", "'re", "'t", " ", "  ", "   ", "\n",
        "\n\n", "\t", "\r\n", "42", "2024", "0.5", "!", "?", "--", "->", "_", "é", "ü", "東京",
        "😀", "\u{a0}", "x", "GPU", ".", ",", "(", ")", "\"", "<|", "|>", "The",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut shard = ShardTokenizer::new(model.clone());
    for round in 0..400 {
        let n = 1 + next() % 40;
        let text: String = (0..n)
            .map(|_| parts[(next() % parts.len() as u64) as usize])
            .collect();
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        let (rendered, _) = model.prompt(&chat).unwrap();
        let whole = model.whole(&rendered, false).unwrap();
        assert_eq!(
            &*shard.tokens(&chat).unwrap(),
            &whole[..],
            "{name} round {round}: {text:?}"
        );
    }
}
