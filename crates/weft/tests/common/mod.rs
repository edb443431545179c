//! What the vision tests of `weft run` and `weft chat` share: golden files of the tiny
//! checkpoints, the binary run on them, and greedy generation through the library.

// Each test binary uses its own part of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use serde_json::Value;
use weft_engine::sampler::SamplingParams;
use weft_engine::session::{GenerateParams, Session, SessionConfig};
use weft_kernels::pool::ThreadPool;
use weft_models::chat_template::RenderOptions;
use weft_models::media::PromptMedia;
use weft_models::TextModel;
use weft_vision::Vision;

/// The tiny checkpoint `name` under tests/data.
pub fn data_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(name)
}

/// `golden.json` of the checkpoint in `dir`.
pub fn golden(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// The golden images `names` (a JSON list) of the checkpoint in `dir`, decoded.
pub fn decoded_images(dir: &Path, golden: &Value, names: &Value) -> Vec<weft_vision::RgbImage> {
    names
        .as_array()
        .unwrap()
        .iter()
        .map(|name| {
            let bytes = std::fs::read(image_file(dir, golden, name)).unwrap();
            weft_vision::decode(&bytes, &Default::default()).unwrap()
        })
        .collect()
}

/// The file of golden image `name` of the checkpoint in `dir`.
pub fn image_file(dir: &Path, golden: &Value, name: &Value) -> PathBuf {
    dir.join(
        golden["images"][name.as_str().unwrap()]["file"]
            .as_str()
            .unwrap(),
    )
}

/// `weft run` with `model_args` and `media_args` on the golden `case`'s text prints the
/// case's greedy tokens (detokenized with the tokenizer of the checkpoint in `dir`).
pub fn check_run_reply(
    dir: &Path,
    model_args: &[std::ffi::OsString],
    media_args: &[std::ffi::OsString],
    case: &Value,
) {
    let model = TextModel::load(dir).unwrap();
    let content = case["messages"][0]["content"].as_array().unwrap();
    let prompt = content.iter().find_map(|p| p["text"].as_str()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("run")
        .args(model_args)
        .args(media_args)
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

/// `weft chat DIR ARGS` given the `commands` lines and then golden `case`'s text prints the
/// case's greedy reply; returns what it wrote to stderr.
pub fn chat_replies_greedily(dir: &Path, args: &[&str], commands: &str, case: &Value) -> String {
    use std::io::Write;
    let model = TextModel::load(dir).unwrap();
    let content = case["messages"][0]["content"].as_array().unwrap();
    let prompt = content.iter().find_map(|p| p["text"].as_str()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("chat")
        .arg(dir)
        .args(["--temperature", "0", "-n", "16"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    write!(child.stdin.take().unwrap(), "{commands}\n{prompt}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let full = model.tokenizer.decode(&ids(&case["greedy_tokens"]), false);
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        got.trim_end_matches('\n'),
        full.trim_end_matches('\u{FFFD}')
    );
    err
}

/// The 16 tokens `session` generates greedily after `tokens` with `media` (none of the golden
/// continuations holds the end-of-turn token).
pub fn greedy_16(session: &mut Session, tokens: &[u32], media: PromptMedia) -> Vec<u32> {
    let params = GenerateParams {
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens: 16,
        stop: Vec::new(),
    };
    session
        .generate_with_media(tokens, media, &params, &AtomicBool::new(false), |_| {})
        .unwrap()
        .generated
}

/// The chat template's text for golden `messages` (with the media's names dropped).
pub fn render(model: &TextModel, messages: &Value) -> String {
    let mut messages = messages.clone();
    for m in messages.as_array_mut().unwrap() {
        for part in m["content"].as_array_mut().unwrap() {
            part.as_object_mut().unwrap().remove("image");
        }
    }
    let options = RenderOptions {
        add_generation_prompt: true,
        ..RenderOptions::default()
    };
    model
        .chat_template
        .as_ref()
        .unwrap()
        .render_with(messages.as_array().unwrap(), &options)
        .unwrap()
}

/// llama.cpp's llama-mtmd-cli on the GGUF + mmproj files in `gguf` (their `llama_mtmd.json`,
/// scripts/gen_mtmd_golden.py) against weft on the prompt layout it used, the image standing
/// in it as `image_text`: as many prompt tokens, the same greedy bytes.
pub fn check_llama_mtmd(gguf: &Path, image_text: &str) {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(gguf.join("llama_mtmd.json")).unwrap())
            .unwrap();
    let model = TextModel::load(&gguf.join("model-f32.gguf")).unwrap();
    let vision = Vision::load_mmproj(&gguf.join("mmproj-f32.gguf"), &model.tokenizer).unwrap();
    let text = golden["layout"]
        .as_str()
        .unwrap()
        .replace("{image}", image_text);
    let tokens = model.tokenizer.encode(&text, false, true);
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(golden["image"].as_str().unwrap());
    let image = weft_vision::decode(&std::fs::read(image).unwrap(), &Default::default()).unwrap();
    let (tokens, media) = vision
        .prepare(
            &ThreadPool::new(2),
            &tokens,
            &[image],
            &[],
            &[],
            Default::default(),
        )
        .unwrap();
    assert_eq!(
        tokens.len() as u64,
        golden["prompt_tokens"].as_u64().unwrap()
    );
    let mut session = Session::new(&model, SessionConfig::new(2, 512));
    let reply: Vec<u8> = greedy_16(&mut session, &tokens, media)
        .iter()
        .flat_map(|&t| model.tokenizer.token_bytes(t, false).to_vec())
        .collect();
    // It printed a newline, the reply, then newlines of its own.
    let printed: Vec<u8> = golden["stdout_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    let after = printed[1..]
        .strip_prefix(reply.as_slice())
        .unwrap_or_else(|| panic!("weft {reply:?}, llama.cpp {printed:?}"));
    assert!(after.iter().all(|&b| b == b'\n'), "llama.cpp {printed:?}");
}
