//! A million-character word, one piece for the pre-tokenizer and one long merge for BPE or
//! SentencePiece, tokenizes with each packaged model and decodes back to itself. The
//! tokenizer is O(n log n), so this finishes in seconds; no time is asserted.

use weft_models::gguf::GgufFile;
use weft_models::tokenizer::Tokenizer;

/// A million random lowercase letters (xorshift with a fixed seed).
fn long_word() -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

fn check(model_file: &str) {
    let Some(path) = weft_test_support::model_path(model_file) else {
        return;
    };
    let file = GgufFile::open(path).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let word = long_word();
    let ids = tokenizer.encode(&word, false, false);
    assert!(ids.len() > 1, "{model_file}: {} ids", ids.len());
    // Not assert_eq: a failure would print two megabytes.
    assert!(
        tokenizer.decode(&ids, false) == word,
        "{model_file}: the ids do not decode back to the word"
    );
}

#[test]
fn smollm2_tokenizes_a_million_character_word() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_tokenizes_a_million_character_word() {
    check("gemma-3-270m-q4_k_m.gguf");
}

#[test]
fn qwen2_tokenizes_a_million_character_word() {
    check("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}
