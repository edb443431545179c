//! `weft run DIR --image PATH… PROMPT` end to end on the tiny random Qwen2.5-VL checkpoint of
//! tests/data/hf-tiny-vl (and on its GGUF + mmproj conversion): the reply at temperature 0 must be transformers' greedy
//! continuation of the same conversation (golden.json, scripts/gen_hf_tiny_vl.py), which
//! covers the chat template with image parts, image decoding and preprocessing, the tower,
//! placeholder expansion, M-RoPE and the embeddings in the batch.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use weft_engine::session::{Session, SessionConfig};
use weft_kernels::pool::ThreadPool;
use weft_models::TextModel;
use weft_test_support::{floats, floats_f32, log_softmax, logprob_diff, relative_diff};
use weft_vision::video::VideoLimits;
use weft_vision::{ProcessorKwargs, Vision};

mod common;

use common::{
    chat_replies_greedily, check_run_reply, decoded_images, greedy_16, ids, image_file, render,
};

fn dir() -> PathBuf {
    common::data_dir("hf-tiny-vl")
}

fn golden() -> Value {
    common::golden(&dir())
}

/// Every golden conversation (text only, one image, two images between texts) through the
/// library as `weft run` uses it: template, tokens, `Vision::prepare`, a session.
#[test]
fn conversations_with_images_give_transformers_greedy_tokens() {
    let golden = golden();
    let model = TextModel::load(&dir()).unwrap();
    let vision = Vision::load(&dir()).unwrap().unwrap();
    let pool = ThreadPool::new(2);
    let mut session = Session::new(&model, SessionConfig::new(2, 512));
    for case in golden["cases"].as_array().unwrap() {
        // transformers' messages name each image; the template only needs its place.
        let text = render(&model, &case["messages"]);
        assert_eq!(text, case["text"].as_str().unwrap(), "{}", case["name"]);
        let images = decoded_images(&dir(), &golden, &case["images"]);
        let tokens = model.tokenizer.encode(&text, true, true);
        let (tokens, media) = vision
            .prepare(&pool, &tokens, &images, &[], &[], Default::default())
            .unwrap();
        assert_eq!(tokens, ids(&case["input_ids"]), "{}", case["name"]);
        assert_eq!(
            greedy_16(&mut session, &tokens, media),
            ids(&case["greedy_tokens"]),
            "{}",
            case["name"]
        );
    }
}

/// `weft run DIR --image PATH PROMPT` prints transformers' greedy reply.
#[test]
fn run_with_an_image_prints_transformers_greedy_reply() {
    run_prints_transformers_greedy_reply(&[dir().into_os_string()]);
}

/// So does `weft run MODEL.gguf --mmproj MMPROJ.gguf --image PATH PROMPT` on the files
/// llama.cpp's converter makes of the same checkpoint (scripts/gen_tiny_vl_gguf.py).
#[test]
fn run_with_gguf_and_mmproj_prints_the_same_reply() {
    let gguf = dir().join("../hf-tiny-vl-gguf");
    run_prints_transformers_greedy_reply(&[
        gguf.join("model-f32.gguf").into_os_string(),
        "--mmproj".into(),
        gguf.join("mmproj-f32.gguf").into_os_string(),
    ]);
}

/// `weft run DIR --video PATH PROMPT` prints transformers' greedy reply to the video, from
/// the Hugging Face directory and from the GGUF + mmproj files (whose processor settings are
/// the defaults the directory also has).
#[test]
fn run_with_a_video_prints_transformers_greedy_reply() {
    if !weft_test_support::commands(&["ffmpeg", "ffprobe"]) {
        return;
    }
    let golden = video_golden();
    let clip = dir().join(golden["video"]["file"].as_str().unwrap());
    let gguf = dir().join("../hf-tiny-vl-gguf");
    for model_args in [
        vec![dir().into_os_string()],
        vec![
            gguf.join("model-f32.gguf").into_os_string(),
            "--mmproj".into(),
            gguf.join("mmproj-f32.gguf").into_os_string(),
        ],
    ] {
        // The tiny model's 512 positions would hold its 1279 prompt tokens (M-RoPE positions
        // advance more slowly than tokens), but the context defaults to that many tokens.
        let media = [
            "--video".into(),
            clip.clone().into_os_string(),
            "--ctx-size".into(),
            "2048".into(),
        ];
        check_run_reply(&dir(), &model_args, &media, &golden["cases"][0]);
    }
}

fn run_prints_transformers_greedy_reply(model_args: &[std::ffi::OsString]) {
    let golden = golden();
    let case = &golden["cases"][1];
    let image = image_file(&dir(), &golden, &case["images"][0]);
    check_run_reply(
        &dir(),
        model_args,
        &["--image".into(), image.into_os_string()],
        case,
    );
}

#[test]
fn images_need_a_vision_model_and_a_readable_image() {
    let text_only = dir().join("../hf-tiny/qwen2");
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("run")
        .arg(&text_only)
        .args(["--image", "Cargo.toml", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no vision tower"));
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("run")
        .arg(dir())
        .args([
            "--image",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vision_run.rs"),
            "hi",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("decoding") && err.contains("not an image"),
        "{err}"
    );
}

/// `weft chat DIR` with `/image PATH` before a message replies as transformers does to that
/// conversation; an unreadable image is reported and the conversation goes on.
#[test]
fn chat_attaches_images_with_a_command() {
    let golden = golden();
    let case = &golden["cases"][1];
    let image = image_file(&dir(), &golden, &case["images"][0]);
    let err = chat_replies_greedily(
        &dir(),
        &[],
        &format!("/image missing.png\n/image {}", image.display()),
        case,
    );
    assert!(err.contains("reading missing.png"), "{err}");
}

/// `/video PATH` in `weft chat` attaches a video to the next message: the reply is
/// transformers' greedy reply to the golden video case.
#[test]
fn chat_attaches_videos_with_a_command() {
    if !weft_test_support::commands(&["ffmpeg", "ffprobe"]) {
        return;
    }
    let golden = video_golden();
    let clip = dir().join(golden["video"]["file"].as_str().unwrap());
    let err = chat_replies_greedily(
        &dir(),
        &["-c", "2048"],
        &format!("/video {}", clip.display()),
        &golden["cases"][0],
    );
    assert!(err.contains("[video attached"), "{err}");
}

fn video_golden() -> Value {
    let text = std::fs::read_to_string(dir().join("golden_video.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Both golden video conversations (a video; an image, text and a video) through the
/// library as `weft run --video` uses it: the clip read and sampled by ffmpeg, template,
/// placeholders, tower, M-RoPE, a session. Against transformers (golden_video.json,
/// scripts/gen_hf_tiny_vl_video.py): sampled frames, prompt tokens, position ids, the
/// tower's rows, log-probabilities and greedy tokens.
#[test]
fn video_conversations_match_transformers() {
    if !weft_test_support::commands(&["ffmpeg", "ffprobe"]) {
        return;
    }
    // Measured (AVX2): 3e-6 relative on the tower rows; 0.0125 nats at the first position,
    // at most 0.02 elsewhere (f16 KV cache, as in qwen25vl_language.rs).
    const MAX_TOWER_DIFF: f32 = 1e-4;
    const MAX_FIRST_DIFF: f64 = 0.02;
    const MAX_DIFF: f64 = 0.1;
    const NEAR_TIE: f64 = 0.05;
    let golden = video_golden();
    let images = self::golden();
    let model = TextModel::load(&dir()).unwrap();
    let vision = Vision::load(&dir()).unwrap().unwrap();
    let pool = ThreadPool::new(2);
    let limits = VideoLimits::default();
    let clip = dir().join(golden["video"]["file"].as_str().unwrap());
    let plan = vision
        .probe_video(&clip, ProcessorKwargs::default(), &limits)
        .unwrap();
    let video = vision
        .read_video(&clip, &plan, ProcessorKwargs::default(), &limits)
        .unwrap();
    let sampled = plan.indices;
    assert_eq!(
        sampled,
        ids(&golden["video"]["sampled_indices"])
            .iter()
            .map(|&i| i as usize)
            .collect::<Vec<_>>()
    );
    assert_eq!(video.frames.len(), sampled.len());
    let sampled_fps = golden["video"]["sampled_fps"].as_f64().unwrap();
    assert!((video.sampled_fps - sampled_fps).abs() < 1e-9);
    let mut session = Session::new(&model, SessionConfig::new(2, 2048));
    let video_token = model.tokenizer.token_id("<|video_pad|>").unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let text = render(&model, &case["messages"]);
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}");
        let pictures = decoded_images(&dir(), &images, &case["images"]);
        let tokens = model.tokenizer.encode(&text, true, true);
        let plan = vision
            .plan(&tokens, &pictures, std::slice::from_ref(&video), &[])
            .unwrap();
        assert_eq!(plan.tokens, ids(&case["input_ids"]), "{name}: token ids");
        let want = case["position_ids"].as_array().unwrap();
        for (i, p) in plan.positions.prompt.iter().enumerate() {
            for (c, (&ours, theirs)) in p.0.iter().zip(want).enumerate() {
                assert_eq!(
                    u64::from(ours),
                    theirs[i].as_u64().unwrap(),
                    "{name}: position {i}, component {c}"
                );
            }
        }
        assert_eq!(plan.positions.delta, case["rope_deltas"].as_i64().unwrap());
        let rows: Vec<Vec<f32>> = plan
            .inputs
            .iter()
            .map(|i| vision.encode(&pool, i))
            .collect();
        let patches: Vec<&Vec<f32>> = plan
            .inputs
            .iter()
            .zip(&rows)
            .filter(|(i, _)| plan.tokens[i.start] == video_token)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(patches.len(), 9, "{name}: temporal patches");
        for (ours, key) in [
            (patches[0], "tower_output_first_patch"),
            (patches[8], "tower_output_last_patch"),
        ] {
            let d = relative_diff(ours, &floats_f32(&golden["video"][key]));
            eprintln!("{name} {key}: {d:.2e}");
            assert!(d <= MAX_TOWER_DIFF, "{name}: {key} differs by {d:.2e}");
        }
        let (tokens, media) = plan.into_media(rows, vision.embedding_width());
        let vision_end = case["vision_end_position"].as_u64().unwrap() as usize;
        let checks = [
            (0, "logprobs_first", MAX_FIRST_DIFF),
            (vision_end, "logprobs_vision_end", MAX_DIFF),
            (tokens.len() - 1, "logprobs_last", MAX_DIFF),
        ];
        session
            .score_with_media(&tokens, media.clone(), |i, logits| {
                for &(at, key, bound) in &checks {
                    if at == i {
                        let (d, _) = logprob_diff(&log_softmax(logits), &floats(&case[key]), -20.0);
                        eprintln!("{name} {key}: {d:.5}");
                        assert!(d <= bound, "{name}: {key} differ by {d:.5} nats");
                    }
                }
            })
            .unwrap();
        let generated = greedy_16(&mut session, &tokens, media);
        let want = ids(&case["greedy_tokens"]);
        let margins = floats(&case["greedy_margins"]);
        // Identical up to the first step where transformers' top two were a near tie.
        let agree = generated
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            agree == want.len() || margins[agree] <= NEAR_TIE,
            "{name}: greedy {generated:?}, transformers {want:?}"
        );
    }
}

/// llama.cpp's llama-mtmd-cli on the GGUF + mmproj files lays the prompt out its own way (no
/// default system prompt, and its own resizing: the test image of 252x196 needs none);
/// weft on that layout evaluates as many prompt tokens and prints the same greedy bytes.
#[test]
fn llama_mtmd_cli_agrees_on_its_own_prompt_layout() {
    common::check_llama_mtmd(&dir().join("../hf-tiny-vl-gguf"), "<|image_pad|>");
}
