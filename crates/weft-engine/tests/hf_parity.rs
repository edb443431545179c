//! Parity with Hugging Face transformers on tiny random checkpoints in the Hugging Face layout
//! (tests/data/hf-tiny, made by scripts/gen_hf_tiny.py): Llama in f32 (one safetensors file),
//! Qwen2 in bf16 (sharded, with an index), Gemma 3 in f16 (sliding and global layers, (1 + w)
//! norms). Each directory is loaded as users load one (`TextModel::load(dir)`), and for every
//! prompt weft must give transformers' prompt token ids, its log-probabilities at the first
//! and last prompt positions, and its 16 greedy tokens (teacher-forced, so one step's
//! difference does not hide the others).

use std::path::PathBuf;

use serde_json::Value;
use weft_engine::session::{Session, SessionConfig};
use weft_models::chat_template::ChatMessage;
use weft_models::TextModel;
use weft_test_support::{log_softmax, logprob_diff};

/// Largest accepted |weft - transformers| log-probability of any likely token, in nats, at
/// the first prompt position and at the last. Both compute in f32 from the same rounded
/// weights, but weft's KV cache holds f16 (as llama.cpp's and vLLM's do by default), which
/// rounds each K and V element by up to 2^-11 relative: at position 0, where attention
/// returns V itself, that moves these deliberately peaked logits (spanning 60 nats) by up to
/// about 0.02 nats; at the last position, where rounded keys also move the attention
/// weights, by up to about 0.08. Measured (AVX2): at most 0.021 and 0.078. Every loader error
/// tried when these checkpoints were made (a wrong RoPE base, window, norm offset, bias or
/// embedding scale) moves them by 10 nats or more.
const MAX_FIRST_DIFF: f64 = 0.03;
const MAX_LAST_DIFF: f64 = 0.1;

/// Tokens below this log-probability (e^-20 ≈ 2e-9) carry no probability mass; their
/// log-probabilities, 30 to 70 nats down in these deliberately peaked models, magnify the
/// last-bit differences of the large logits they come from.
const MIN_LOGPROB: f64 = -20.0;

/// Largest transformers top-two logit margin at which weft may rank another token first.
const NEAR_TIE: f64 = 0.05;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/hf-tiny")
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    numbers(v).into_iter().map(|x| x as u32).collect()
}

fn argmax(logits: &[f32]) -> u32 {
    (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best }) as u32
}

fn check(model_key: &str) {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir().join("golden.json")).unwrap())
            .unwrap();
    let entry = &golden["models"][model_key];
    let dir = data_dir().join(entry["dir"].as_str().unwrap());
    let model = TextModel::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let arch = entry["model_type"]
        .as_str()
        .unwrap()
        .trim_end_matches("_text");
    assert_eq!(model.decoder.config().arch.name(), arch);
    let mut session = Session::new(&model, SessionConfig::new(2, 256));
    let mut worst = 0.0f64;
    for case in entry["cases"].as_array().unwrap() {
        let name = case["prompt"].as_str().unwrap();
        let prompt = ids(&case["input_ids"]);
        let text = prompt_text(&golden, name, &model);
        assert_eq!(
            model.tokenizer.encode(&text, false, true),
            prompt,
            "{model_key} {name}: prompt token ids"
        );
        let greedy = ids(&case["greedy_tokens"]);
        let margins = numbers(&case["greedy_margins"]);
        let sequence: Vec<u32> = prompt.iter().chain(&greedy).copied().collect();
        let mut rows: Vec<Vec<f32>> = Vec::new();
        session
            .score(&sequence, |_, logits| rows.push(logits.to_vec()))
            .unwrap();
        let last = prompt.len() - 1;
        for (position, key, bound) in [
            (0, "logprobs_first", MAX_FIRST_DIFF),
            (last, "logprobs_last", MAX_LAST_DIFF),
        ] {
            let (d, all) = logprob_diff(
                &log_softmax(&rows[position]),
                &numbers(&case[key]),
                MIN_LOGPROB,
            );
            eprintln!("{model_key} {name} {key}: {d:.5} ({all:.5} over the vocabulary)");
            assert!(
                d <= bound,
                "{model_key} {name}: {key} differ by {d:.5} nats"
            );
            worst = worst.max(d);
        }
        // Position p's logits choose token p + 1.
        for (k, (&token, &margin)) in greedy.iter().zip(&margins).enumerate() {
            let ours = argmax(&rows[prompt.len() - 1 + k]);
            assert!(
                ours == token || margin <= NEAR_TIE,
                "{model_key} {name}: greedy step {k}: weft {ours}, transformers {token} \
                 (margin {margin:.4})"
            );
        }
    }
    eprintln!("{model_key}: largest log-probability difference {worst:.6} nats");
}

/// The text of a golden prompt (golden.json's `prompts`). The chat prompt is transformers'
/// rendering of `chat_messages`, which weft's rendering must equal.
fn prompt_text(golden: &Value, name: &str, model: &TextModel) -> String {
    let prompts = golden["prompts"].as_array().unwrap();
    let entry = prompts.iter().find(|p| p["name"] == name).unwrap();
    let text = entry["text"].as_str().unwrap().to_string();
    if name == "chat" {
        let messages: Vec<ChatMessage> =
            serde_json::from_value(golden["chat_messages"].clone()).unwrap();
        let template = model.chat_template.as_ref().expect("a chat template");
        assert_eq!(
            template.render(&messages, true).unwrap(),
            text,
            "chat template"
        );
    }
    text
}

#[test]
fn llama_f32_matches_transformers() {
    check("llama");
}

#[test]
fn qwen2_bf16_sharded_matches_transformers() {
    check("qwen2");
}

#[test]
fn gemma3_f16_matches_transformers() {
    check("gemma3");
}

#[test]
fn a_directory_without_weights_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("weft-hf-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        data_dir().join("llama/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let err = TextModel::load(&dir).err().expect("no weights").to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
