//! A small model tokenizer for tests and benchmarks, built on the spot (nothing is
//! downloaded): byte-level BPE as GPT-2 and Qwen use, trained on a few English
//! sentences, with ChatML's special tokens and chat template in
//! `tokenizer_config.json`, as a model directory has them.

use std::collections::HashSet;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

/// ChatML, as Qwen's `tokenizer_config.json` writes it (trimmed of tool calls).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

const CORPUS: &str = "You are a helpful assistant. Answer the question briefly and well.
The router sends each request to the worker that already holds its prefix.
A shard is one core with its own listener, its own pool and its own policy.
Tokens are cut into blocks of sixteen, and each block is named by a hash.
Please explain more about caches, workers, routers, prompts and answers.
What is a prefix cache? Why does it save time on the GPU? How large is it?
";

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
pub fn write(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, CORPUS.repeat(4)).map_err(|e| e.to_string())?;
    let specials: Vec<AddedToken> = SPECIAL.iter().map(|s| AddedToken::from(*s, true)).collect();
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(700)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(alphabet)
        .build();
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(BPE::default())
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(|e| e.to_string())?;
    let files = vec![corpus.to_string_lossy().into_owned()];
    tokenizer
        .train_from_files(&mut trainer, files)
        .map_err(|e| e.to_string())?;
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&corpus);
    let config = serde_json::json!({
        "chat_template": CHATML,
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "model_max_length": 32768,
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).map_err(|e| e.to_string())
}
