//! Gemma 3 with images, against transformers on the tiny random checkpoint of
//! tests/data/hf-tiny-gemma3-vl (scripts/gen_hf_tiny_gemma3_vl.py): through the library as
//! `weft run` uses it (template, the processor's text expansion, tokens, tower, a session),
//! and through `weft run` and `weft chat` on the Hugging Face directory and on llama.cpp's
//! GGUF + mmproj conversion of it. The image tokens of one image attend to each other both
//! ways; with plain causal attention the tiny model's last-position log-probabilities move by
//! 1.8 to 2.5 nats (golden.json's `causal`), so these checks fail without it.

mod common;

use std::path::PathBuf;

use serde_json::Value;
use weft_engine::session::{Session, SessionConfig};
use weft_kernels::pool::ThreadPool;
use weft_models::TextModel;
use weft_test_support::{floats, log_softmax, logprob_diff};
use weft_vision::Vision;

use common::{
    chat_replies_greedily, check_run_reply, decoded_images, greedy_16, ids, image_file, render,
};

/// Largest log-probability difference allowed (nats), over tokens with any probability.
const MAX_LOGPROB_DIFF: f64 = 0.02;

fn dir() -> PathBuf {
    common::data_dir("hf-tiny-gemma3-vl")
}

fn golden() -> Value {
    common::golden(&dir())
}

/// Every golden conversation (text only, one image, two images between texts, a system
/// prompt and an image): prompt tokens equal, log-probabilities at the first position, after
/// the first image and at the last within 0.02 nats, greedy tokens identical.
#[test]
fn conversations_with_images_match_transformers() {
    let golden = golden();
    let model = TextModel::load(&dir()).unwrap();
    let vision = Vision::load(&dir()).unwrap().expect("a vision tower");
    let pool = ThreadPool::new(2);
    let mut session = Session::new(&model, SessionConfig::new(2, 512));
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let text = render(&model, &case["messages"]);
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}");
        let tokens = model
            .tokenizer
            .encode(&vision.prompt_text(&text), true, true);
        let images = decoded_images(&dir(), &golden, &case["images"]);
        let (tokens, media) = vision
            .prepare(&pool, &tokens, &images, &[], &[], Default::default())
            .unwrap();
        assert_eq!(tokens, ids(&case["input_ids"]), "{name}");
        let mut checks = vec![(0, "logprobs_first"), (tokens.len() - 1, "logprobs_last")];
        if let Some(eoi) = case["first_eoi_position"].as_u64() {
            checks.push((eoi as usize, "logprobs_first_eoi"));
        }
        let mut seen = 0;
        session
            .score_with_media(&tokens, media.clone(), |i, logits| {
                for &(at, key) in &checks {
                    if at == i {
                        let (d, _) = logprob_diff(&log_softmax(logits), &floats(&case[key]), -20.0);
                        eprintln!("{name} {key}: {d:.5}");
                        assert!(d <= MAX_LOGPROB_DIFF, "{name}: {key} differ by {d:.5} nats");
                        seen += 1;
                    }
                }
            })
            .unwrap();
        assert_eq!(seen, checks.len(), "{name}: positions scored");
        // The smallest top-1 / top-2 margin of the golden continuations is 0.095 nats: no near
        // ties to excuse.
        assert_eq!(
            greedy_16(&mut session, &tokens, media),
            ids(&case["greedy_tokens"]),
            "{name}"
        );
    }
}

/// `weft run DIR --image PATH PROMPT` and the same on the GGUF + mmproj files print
/// transformers' greedy reply.
#[test]
fn run_with_an_image_prints_transformers_greedy_reply() {
    let golden = golden();
    let case = &golden["cases"][1];
    let image = image_file(&dir(), &golden, &case["images"][0]);
    let gguf = dir().join("../hf-tiny-gemma3-vl-gguf");
    for model_args in [
        vec![dir().into_os_string()],
        vec![
            gguf.join("model-f32.gguf").into_os_string(),
            "--mmproj".into(),
            gguf.join("mmproj-f32.gguf").into_os_string(),
        ],
    ] {
        check_run_reply(
            &dir(),
            &model_args,
            &["--image".into(), image.clone().into_os_string()],
            case,
        );
    }
}

/// `weft chat DIR` with `/image PATH` replies as transformers does; `/video` is refused with
/// a reason (Gemma 3 reads no video) and the conversation goes on.
#[test]
fn chat_attaches_images_and_refuses_videos() {
    let golden = golden();
    let case = &golden["cases"][1];
    let image = image_file(&dir(), &golden, &case["images"][0]);
    let err = chat_replies_greedily(
        &dir(),
        &[],
        &format!("/video clip.mp4\n/image {}", image.display()),
        case,
    );
    assert!(err.contains("does not accept videos"), "{err}");
}

/// llama.cpp's llama-mtmd-cli on the GGUF + mmproj files lays the prompt out its own way (no
/// BOS, no blank lines around the image); weft on that layout evaluates as many prompt tokens
/// and prints the same greedy bytes.
#[test]
fn llama_mtmd_cli_agrees_on_its_own_prompt_layout() {
    common::check_llama_mtmd(
        &dir().join("../hf-tiny-gemma3-vl-gguf"),
        &"<image_soft_token>".repeat(16),
    );
}
