//! The language side of Qwen2.5-VL against transformers (tests/data/hf-tiny-vl, made by
//! scripts/gen_hf_tiny_vl.py): the tiny random checkpoint loads from its Hugging Face
//! directory as a Qwen2 model with multimodal RoPE; each golden prompt is run with
//! transformers' own vision-tower outputs in place of the image tokens (`Batch::embeddings`)
//! and transformers' three-component position ids, and log-probabilities and greedy tokens
//! must agree. This checks embeddings in the batch and M-RoPE apart from the vision tower,
//! from the Hugging Face directory and from its GGUF conversion.

use std::path::PathBuf;

use serde_json::Value;
use weft_kernels::pool::ThreadPool;
use weft_models::arch::ForwardScratch;
use weft_models::batch::{Batch, LogitsWanted, Position, SeqSlice, TokenEmbedding};
use weft_models::kv_cache::KvCache;
use weft_models::TextModel;
use weft_test_support::{floats, log_softmax, logprob_diff};

/// As in weft-engine's hf_parity.rs: f32 weights on both sides, weft's KV cache in f16
/// (measured here, AVX2: 0.0125 nats at the first position, at most 0.035 elsewhere).
const MAX_FIRST_DIFF: f64 = 0.03;
const MAX_DIFF: f64 = 0.1;
/// Tokens below this log-probability carry no probability mass (see hf_parity.rs).
const MIN_LOGPROB: f64 = -20.0;
const NEAR_TIE: f64 = 0.05;
const IMAGE_TOKEN: u32 = 409;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/hf-tiny-vl")
}

#[test]
fn language_model_matches_transformers_with_its_image_embeddings() {
    check(&TextModel::load(&dir()).unwrap_or_else(|e| panic!("{e}")));
}

/// The same checkpoint converted by llama.cpp's convert_hf_to_gguf.py (arch qwen2vl,
/// `rope.dimension_sections`; scripts/gen_tiny_vl_gguf.py) computes the same.
#[test]
fn its_gguf_conversion_matches_transformers_too() {
    let path = dir().join("../hf-tiny-vl-gguf/model-f32.gguf");
    check(&TextModel::load(&path).unwrap_or_else(|e| panic!("{e}")));
}

fn check(model: &TextModel) {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap();
    assert_eq!(model.decoder.config().mrope_section, Some([2, 3, 3]));
    let pool = ThreadPool::new(2);
    let mut scratch = ForwardScratch::default();
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompt: Vec<u32> = floats(&case["input_ids"])
            .iter()
            .map(|&x| x as u32)
            .collect();
        // The template writes one image token per image; the processor repeats it once per
        // merged patch.
        let mut per_image = case["images"].as_array().unwrap().iter().map(|image| {
            golden["images"][image.as_str().unwrap()]["num_merged_tokens"]
                .as_u64()
                .unwrap() as usize
        });
        let expanded: Vec<u32> = model
            .tokenizer
            .encode(case["text"].as_str().unwrap(), false, true)
            .into_iter()
            .flat_map(|t| {
                let n = if t == IMAGE_TOKEN {
                    per_image.next().unwrap()
                } else {
                    1
                };
                std::iter::repeat_n(t, n)
            })
            .collect();
        assert_eq!(expanded, prompt, "{name}: prompt token ids");
        let greedy: Vec<u32> = floats(&case["greedy_tokens"])
            .iter()
            .map(|&x| x as u32)
            .collect();
        let margins = floats(&case["greedy_margins"]);
        // transformers' positions for the prompt; generated token i sits at i + rope_delta.
        let ids = case["position_ids"].as_array().unwrap();
        let component = |c: usize, i: usize| ids[c][i].as_u64().unwrap() as u32;
        let delta = case["rope_deltas"].as_i64().unwrap();
        let mut positions: Vec<Position> = (0..prompt.len())
            .map(|i| Position([component(0, i), component(1, i), component(2, i)]))
            .collect();
        for i in prompt.len()..prompt.len() + greedy.len() {
            let p = (i as i64 + delta) as u32;
            positions.push(Position([p, p, p]));
        }
        // The image tokens, in order, take the tower outputs of the case's images in order.
        let rows: Vec<Vec<f32>> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|image| {
                golden["images"][image.as_str().unwrap()]["tower_output"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|row| floats(row).iter().map(|&x| x as f32).collect())
                    .collect::<Vec<Vec<f32>>>()
            })
            .collect();
        let slots: Vec<usize> = (0..prompt.len())
            .filter(|&i| prompt[i] == IMAGE_TOKEN)
            .collect();
        assert_eq!(
            slots.len(),
            rows.len(),
            "{name}: image tokens vs tower rows"
        );
        let embeddings: Vec<TokenEmbedding<'_>> = slots
            .iter()
            .zip(&rows)
            .map(|(&token, values)| TokenEmbedding { token, values })
            .collect();

        let tokens: Vec<u32> = prompt.iter().chain(&greedy).copied().collect();
        let block_size = 16;
        let n_blocks = tokens.len().div_ceil(block_size);
        let mut kv = KvCache::new(model.decoder.kv_shape(), block_size, n_blocks);
        let table: Vec<u32> = (0..n_blocks as u32).collect();
        let seqs = [SeqSlice {
            start: 0,
            len: tokens.len(),
            cached: 0,
            block_table: &table,
            logits: LogitsWanted::All,
            bidirectional: &[],
        }];
        let batch = Batch {
            tokens: &tokens,
            positions: &positions,
            seqs: &seqs,
            embeddings: &embeddings,
        };
        let logits = model
            .decoder
            .forward(&batch, &mut kv, &pool, &mut scratch)
            .unwrap();
        let vocab = model.decoder.vocab_size();
        let row = |i: usize| &logits[i * vocab..(i + 1) * vocab];
        let mut checks = vec![
            (0, "logprobs_first", MAX_FIRST_DIFF),
            (prompt.len() - 1, "logprobs_last", MAX_DIFF),
        ];
        if let Some(p) = case["vision_end_position"].as_u64() {
            checks.push((p as usize, "logprobs_vision_end", MAX_DIFF));
        }
        for (position, key, bound) in checks {
            let (d, _) = logprob_diff(
                &log_softmax(row(position)),
                &floats(&case[key]),
                MIN_LOGPROB,
            );
            eprintln!("{name} {key}: {d:.5}");
            assert!(d <= bound, "{name}: {key} differ by {d:.5} nats");
        }
        for (k, (&token, &margin)) in greedy.iter().zip(&margins).enumerate() {
            let r = row(prompt.len() - 1 + k);
            let ours = (0..vocab).fold(0, |b, i| if r[i] > r[b] { i } else { b }) as u32;
            assert!(
                ours == token || margin <= NEAR_TIE,
                "{name}: greedy step {k}: weft {ours}, transformers {token} (margin {margin:.3})"
            );
        }
    }
}
