//! Log-probabilities in the two shapes OpenAI uses: chat's `logprobs.content[]` and the
//! legacy completions' parallel lists.

use serde_json::{json, Map, Value};
use weft_engine::logprobs::TokenLogprobs;
use weft_models::tokenizer::Tokenizer;

fn token_entry(tokenizer: &Tokenizer, id: u32, logprob: f32) -> Value {
    let bytes = tokenizer.token_bytes(id, true);
    json!({
        "token": String::from_utf8_lossy(&bytes),
        "logprob": finite(logprob),
        "bytes": bytes,
    })
}

/// `-inf` is not JSON; OpenAI clients expect a very negative number instead.
fn finite(l: f32) -> f32 {
    if l.is_finite() {
        l
    } else {
        -9999.0
    }
}

/// Chat: one entry per generated token.
pub fn chat_entries(tokenizer: &Tokenizer, items: &[TokenLogprobs]) -> Vec<Value> {
    items
        .iter()
        .map(|t| {
            let mut e = token_entry(tokenizer, t.token, t.logprob);
            e["top_logprobs"] = Value::Array(
                t.top
                    .iter()
                    .map(|&(id, l)| token_entry(tokenizer, id, l))
                    .collect(),
            );
            e
        })
        .collect()
}

/// Legacy completions: `tokens`, `token_logprobs`, `top_logprobs` (token -> logprob maps)
/// and `text_offset` (character offset of each token in the choice's text, from `offset`).
pub fn completion_logprobs(tokenizer: &Tokenizer, items: &[TokenLogprobs], offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    let mut at = offset;
    for t in items {
        let text = String::from_utf8_lossy(&tokenizer.token_bytes(t.token, true)).into_owned();
        offsets.push(at);
        at += text.chars().count();
        tokens.push(text);
        token_logprobs.push(finite(t.logprob));
        let mut m = Map::new();
        for &(id, l) in &t.top {
            let s = String::from_utf8_lossy(&tokenizer.token_bytes(id, true)).into_owned();
            m.entry(s).or_insert(json!(finite(l)));
        }
        top.push(Value::Object(m));
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    })
}
