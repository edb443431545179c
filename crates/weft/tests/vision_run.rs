//! `weft run DIR --image PATH… PROMPT` end to end on the tiny random Qwen2.5-VL checkpoint of
//! tests/data/hf-tiny-vl (and on its GGUF + mmproj conversion): the reply at temperature 0 must be transformers' greedy
//! continuation of the same conversation (golden.json, scripts/gen_hf_tiny_vl.py), which
//! covers the chat template with image parts, image decoding and preprocessing, the tower,
//! placeholder expansion, M-RoPE and the embeddings in the batch.

use std::path::PathBuf;
use std::process::Command;

use std::sync::atomic::AtomicBool;

use serde_json::Value;
use weft_engine::sampler::SamplingParams;
use weft_engine::session::{GenerateParams, Session, SessionConfig};
use weft_kernels::pool::ThreadPool;
use weft_models::chat_template::RenderOptions;
use weft_models::TextModel;
use weft_vision::qwen25vl::Qwen25VlVision;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/hf-tiny-vl")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn image_file(golden: &Value, name: &Value) -> PathBuf {
    dir().join(
        golden["images"][name.as_str().unwrap()]["file"]
            .as_str()
            .unwrap(),
    )
}

/// Every golden conversation (text only, one image, two images between texts) through the
/// library as `weft run` uses it: template, tokens, `Qwen25VlVision::prepare`, a session.
#[test]
fn conversations_with_images_give_transformers_greedy_tokens() {
    let golden = golden();
    let model = TextModel::load(&dir()).unwrap();
    let vision = Qwen25VlVision::load(&dir()).unwrap().unwrap();
    let template = model.chat_template.as_ref().unwrap();
    let pool = ThreadPool::new(2);
    let mut session = Session::new(&model, SessionConfig::new(2, 512));
    for case in golden["cases"].as_array().unwrap() {
        // transformers' messages name each image; the template only needs its place.
        let mut messages = case["messages"].clone();
        for m in messages.as_array_mut().unwrap() {
            for part in m["content"].as_array_mut().unwrap() {
                part.as_object_mut().unwrap().remove("image");
            }
        }
        let options = RenderOptions {
            add_generation_prompt: true,
            ..RenderOptions::default()
        };
        let text = template
            .render_with(messages.as_array().unwrap(), &options)
            .unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{}", case["name"]);
        let images: Vec<_> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|name| {
                let bytes = std::fs::read(image_file(&golden, name)).unwrap();
                weft_vision::decode(&bytes, &Default::default()).unwrap()
            })
            .collect();
        let tokens = model.tokenizer.encode(&text, true, true);
        let (tokens, media) = vision.prepare(&pool, &tokens, &images).unwrap();
        assert_eq!(tokens, ids(&case["input_ids"]), "{}", case["name"]);
        // None of these continuations holds the end-of-turn token.
        let params = GenerateParams {
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            max_tokens: 16,
            stop: Vec::new(),
        };
        let outcome = session
            .generate_with_media(&tokens, media, &params, &AtomicBool::new(false), |_| {})
            .unwrap();
        assert_eq!(
            outcome.generated,
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

fn run_prints_transformers_greedy_reply(model_args: &[std::ffi::OsString]) {
    let golden = golden();
    let model = TextModel::load(&dir()).unwrap();
    let case = &golden["cases"][1];
    let content = case["messages"][0]["content"].as_array().unwrap();
    let prompt = content.iter().find_map(|p| p["text"].as_str()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("run")
        .args(model_args)
        .arg("--image")
        .arg(image_file(&golden, &case["images"][0]))
        .args([prompt, "--temperature", "0", "-n", "16"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A reply cut inside a UTF-8 character ends before it (the detokenizer never prints
    // half a character).
    let full = model.tokenizer.decode(&ids(&case["greedy_tokens"]), false);
    let want = full.trim_end_matches('\u{FFFD}');
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got.trim_end_matches('\n'), want);
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
    use std::io::Write;
    let golden = golden();
    let model = TextModel::load(&dir()).unwrap();
    let case = &golden["cases"][1];
    let prompt = case["messages"][0]["content"][1]["text"].as_str().unwrap();
    let image = image_file(&golden, &case["images"][0]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("chat")
        .arg(dir())
        .args(["--temperature", "0", "-n", "16"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    write!(
        child.stdin.take().unwrap(),
        "/image missing.png\n/image {}\n{prompt}\n",
        image.display()
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("reading missing.png"), "{err}");
    let full = model.tokenizer.decode(&ids(&case["greedy_tokens"]), false);
    let want = full.trim_end_matches('\u{FFFD}');
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got.trim_end_matches('\n'), want);
}
