//! Qwen2.5-Omni's thinker against transformers on the tiny random checkpoint of
//! tests/data/hf-tiny-omni (the full released layout: thinker, talker and speech decoder in
//! one file; scripts/gen_hf_tiny_omni.py): text only, audio, image + audio, a video, and the
//! same video with its own audio track interleaved (`use_audio_in_video`). Each case must
//! give transformers' prompt tokens and 3-component positions exactly, its audio tower output
//! within 1e-4, its log-probabilities within 0.02 nats and its greedy tokens.

use std::path::{Path, PathBuf};

use serde_json::Value;
use weft_engine::session::{Session, SessionConfig};
use weft_kernels::pool::ThreadPool;
use weft_models::media::PromptMedia;
use weft_models::TextModel;
use weft_test_support::{floats, floats_f32, log_softmax, logprob_diff, relative_diff};
use weft_vision::video::VideoLimits;
use weft_vision::{PreparedPrompt, ProcessorKwargs, RgbImage, TowerPixels, Video, Vision};

mod common;

use common::{chat_replies_greedily, check_run_reply, greedy_16, ids, render};

/// Bounds of the issue: tower rows (f32), and log-probabilities at the first position.
/// Later positions read more of the f16 KV cache (transformers keeps f32), whose rounding the
/// checkpoint's x8 final norm magnifies (already 0.009 nats at position 0, where attention
/// returns the one f16 V row): 0.05 at the first media token, 0.1 further on, as for
/// Qwen2.5-VL (tests/vision_run.rs). Measured (AVX2): 0.014-0.020 at the first media token,
/// at most 0.05 elsewhere.
const MAX_TOWER_DIFF: f32 = 1e-4;
const MAX_FIRST_DIFF: f64 = 0.02;
const MAX_FIRST_MEDIA_DIFF: f64 = 0.05;
const MAX_DIFF: f64 = 0.1;
/// transformers' log-mel runs in f64 numpy; weft's in f32.
const MAX_MEL_DIFF: f32 = 1e-4;

fn dir() -> PathBuf {
    common::data_dir("hf-tiny-omni")
}

fn golden() -> Value {
    common::golden(&dir())
}

fn read_audio(path: &Path) -> Vec<f32> {
    weft_audio::audio::decode(&std::fs::read(path).unwrap(), 600.0).unwrap()
}

/// A case's media, from the files its messages name, and the processor settings it used.
struct CaseMedia {
    images: Vec<RgbImage>,
    videos: Vec<Video>,
    audios: Vec<Vec<f32>>,
    kwargs: ProcessorKwargs,
}

fn case_media(vision: &Vision, case: &Value) -> CaseMedia {
    case_media_with(vision, case, None)
}

/// [`case_media`] with the videos read within `(min_pixels, max_pixels)`.
fn case_media_with(vision: &Vision, case: &Value, pixels: Option<(u64, u64)>) -> CaseMedia {
    let kwargs = ProcessorKwargs {
        use_audio_in_video: case["use_audio_in_video"].as_bool().unwrap(),
        min_pixels: pixels.map(|p| p.0),
        max_pixels: pixels.map(|p| p.1),
        ..ProcessorKwargs::default()
    };
    let mut media = CaseMedia {
        images: Vec::new(),
        videos: Vec::new(),
        audios: Vec::new(),
        kwargs,
    };
    for part in case["messages"][0]["content"].as_array().unwrap() {
        let file = |key: &str| part[key].as_str().map(|f| dir().join(f));
        if let Some(path) = file("image") {
            let bytes = std::fs::read(path).unwrap();
            media
                .images
                .push(weft_vision::decode(&bytes, &Default::default()).unwrap());
        } else if let Some(path) = file("audio") {
            media.audios.push(read_audio(&path));
        } else if let Some(path) = file("video") {
            let (plan, video) = vision
                .open_video(&path, kwargs, &VideoLimits::default())
                .unwrap();
            let want: Vec<usize> = ids(&golden()["video"]["sampled_indices"])
                .iter()
                .map(|&i| i as usize)
                .collect();
            assert_eq!(plan.indices, want, "sampled frames");
            media.videos.push(video);
        }
    }
    media
}

fn plan(vision: &Vision, tokens: &[u32], m: &CaseMedia) -> PreparedPrompt {
    vision
        .plan_with(tokens, &m.images, &m.videos, &m.audios, m.kwargs)
        .unwrap()
}

/// The log-mel the tower reads for the WAV (its chunks joined) is transformers' input
/// features, and the tower's rows for both clips are transformers'.
#[test]
fn audio_tower_matches_transformers() {
    let golden = golden();
    let vision = Vision::load(&dir()).unwrap().unwrap();
    let pool = ThreadPool::new(2);
    let model = TextModel::load(&dir()).unwrap();
    for case in ["audio", "video_audio"] {
        let case = golden["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == case)
            .unwrap();
        let media = case_media(&vision, case);
        let text = render(&model, &case["messages"]);
        let tokens = model.tokenizer.encode(&text, true, true);
        let plan = plan(&vision, &tokens, &media);
        let audio: Vec<_> = plan
            .inputs
            .iter()
            .filter_map(|i| match &i.pixels {
                TowerPixels::Audio(mel) => Some((i, mel)),
                _ => None,
            })
            .collect();
        let key = match case["name"].as_str().unwrap() {
            "audio" => "wav",
            _ => "video_audio",
        };
        let want = &golden["audio"][key];
        let frames: usize = audio.iter().map(|(_, mel)| mel.frames).sum();
        assert_eq!(
            frames as u64,
            want["frames"].as_u64().unwrap(),
            "{key}: frames"
        );
        let chunk_frames: Vec<u32> = audio.iter().map(|(_, m)| m.frames as u32).collect();
        assert_eq!(chunk_frames, ids(&want["chunk_lengths"]), "{key}: chunks");
        if key == "wav" {
            let bytes = std::fs::read(dir().join(want["mel_file"].as_str().unwrap())).unwrap();
            let theirs: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let mut ours = Vec::with_capacity(theirs.len());
            for bin in 0..128 {
                for (_, mel) in &audio {
                    ours.extend_from_slice(&mel.data[bin * mel.frames..(bin + 1) * mel.frames]);
                }
            }
            let d = relative_diff(&ours, &theirs);
            eprintln!("{key} log-mel: {d:.2e}");
            assert!(d <= MAX_MEL_DIFF, "{key}: log-mel differs by {d:.2e}");
        }
        let rows: Vec<f32> = audio
            .iter()
            .flat_map(|(input, _)| vision.encode(&pool, input))
            .collect();
        let theirs: Vec<f32> = want["tower_output"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats_f32)
            .collect();
        let d = relative_diff(&rows, &theirs);
        eprintln!("{key} audio tower: {d:.2e}");
        assert!(d <= MAX_TOWER_DIFF, "{key}: audio tower differs by {d:.2e}");
    }
}

/// The vision tower's rows of the case's image or video are transformers'.
fn check_vision_rows(golden: &Value, name: &str, plan: &PreparedPrompt, rows: &[Vec<f32>]) {
    let ours: Vec<f32> = plan
        .inputs
        .iter()
        .zip(rows)
        .filter(|(i, _)| !matches!(i.pixels, TowerPixels::Audio(_)))
        .flat_map(|(_, r)| r.iter().copied())
        .collect();
    let key = match name {
        "image_audio" => &golden["images"]["wide"],
        "video" | "video_audio" => &golden["video"],
        _ => return,
    };
    let theirs: Vec<f32> = key["tower_output"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(floats_f32)
        .collect();
    let d = relative_diff(&ours, &theirs);
    eprintln!("{name} vision tower: {d:.2e}");
    assert!(
        d <= MAX_TOWER_DIFF,
        "{name}: vision tower differs by {d:.2e}"
    );
}

/// Every golden case through the library as `weft run` uses it: template, tokens,
/// `Vision::plan_with`, the towers, a session.
#[test]
fn every_case_matches_transformers() {
    let golden = golden();
    let model = TextModel::load(&dir()).unwrap();
    let vision = Vision::load(&dir()).unwrap().unwrap();
    let pool = ThreadPool::new(2);
    let mut session = Session::new(&model, SessionConfig::new(2, 1024));
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let plan = planned_case(&model, &vision, case, None);
        let want = case["position_ids"].as_array().unwrap();
        for (c, theirs) in want.iter().enumerate() {
            let ours: Vec<u32> = plan.positions.prompt.iter().map(|p| p.0[c]).collect();
            assert_eq!(ours, ids(theirs), "{name}: position component {c}");
        }
        let (tokens, media) = encoded(&vision, &pool, &golden, name, plan);
        let mut checks = vec![
            (0, "logprobs_first", MAX_FIRST_DIFF),
            (tokens.len() - 1, "logprobs_last", MAX_DIFF),
        ];
        if let Some(at) = case["first_media_position"].as_u64() {
            checks.push((at as usize, "logprobs_first_media", MAX_FIRST_MEDIA_DIFF));
        }
        if let Some(end) = case["media_end_position"].as_u64() {
            checks.push((end as usize, "logprobs_media_end", MAX_DIFF));
        }
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
        assert_greedy(&model, case, greedy_16(&mut session, &tokens, media));
    }
}

/// Golden `case` laid out by `vision` (videos read within `pixels`): its template text,
/// token ids and generated tokens' position offset checked against transformers'.
fn planned_case(
    model: &TextModel,
    vision: &Vision,
    case: &Value,
    pixels: Option<(u64, u64)>,
) -> PreparedPrompt {
    let name = case["name"].as_str().unwrap();
    let text = render(model, &case["messages"]);
    assert_eq!(text, case["text"].as_str().unwrap(), "{name}: template");
    let media = case_media_with(vision, case, pixels);
    let tokens = model.tokenizer.encode(&text, true, true);
    let plan = plan(vision, &tokens, &media);
    assert_eq!(plan.tokens, ids(&case["input_ids"]), "{name}: token ids");
    assert_eq!(
        plan.positions.delta,
        case["rope_deltas"].as_i64().unwrap(),
        "{name}: rope delta"
    );
    plan
}

/// `plan` with its inputs encoded (the vision rows checked against transformers').
fn encoded(
    vision: &Vision,
    pool: &ThreadPool,
    golden: &Value,
    name: &str,
    plan: PreparedPrompt,
) -> (Vec<u32>, PromptMedia) {
    let rows: Vec<Vec<f32>> = plan.inputs.iter().map(|i| vision.encode(pool, i)).collect();
    check_vision_rows(golden, name, &plan, &rows);
    plan.into_media(rows, vision.embedding_width())
}

/// weft's greedy tokens are transformers', which ran without stopping, up to an
/// end-of-generation token, where weft stops.
fn assert_greedy(model: &TextModel, case: &Value, ours: Vec<u32>) {
    let theirs = ids(&case["greedy_tokens"]);
    let stopped = theirs
        .get(ours.len())
        .is_none_or(|&t| model.tokenizer.is_eog(t));
    assert!(
        theirs.starts_with(&ours) && stopped,
        "{}: greedy {ours:?}, transformers {theirs:?}",
        case["name"]
    );
}

fn case(name: &str) -> Value {
    golden()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

/// `weft run DIR --audio PATH PROMPT` and `weft run DIR --video PATH --use-audio-in-video
/// PROMPT` print transformers' greedy replies.
#[test]
fn run_with_audio_and_with_a_video_and_its_audio() {
    let media = |args: &[&str]| -> Vec<std::ffi::OsString> {
        args.iter()
            .map(|a| match a.strip_prefix("media/") {
                Some(_) => dir().join(a).into_os_string(),
                None => a.into(),
            })
            .collect()
    };
    let model = [dir().into_os_string()];
    check_run_reply(
        &dir(),
        &model,
        &media(&["--audio", "media/speech.wav"]),
        &case("audio"),
    );
    check_run_reply(
        &dir(),
        &model,
        &media(&["--video", "media/clip.mkv", "--use-audio-in-video"]),
        &case("video_audio"),
    );
}

/// `weft chat DIR` with `/audio PATH` attaches the clip to the next message.
#[test]
fn chat_attaches_audio_with_a_command() {
    let wav = dir().join("media/speech.wav");
    chat_replies_greedily(
        &dir(),
        &[],
        &format!("/audio {}", wav.display()),
        &case("audio"),
    );
}

/// The same cases through the files llama.cpp's converter makes of the checkpoint
/// (tests/data/hf-tiny-omni-gguf, scripts/gen_tiny_vl_gguf.py: the thinker as GGUF, both
/// towers in one mmproj, f32): the same prompt tokens and positions, the same replies. An
/// mmproj file carries no video processor settings; the checkpoint's pixel bounds are given
/// per request instead.
#[test]
fn gguf_and_mmproj_give_the_same_results() {
    let golden = golden();
    let gguf = dir().join("../hf-tiny-omni-gguf");
    let model = TextModel::load(&gguf.join("model-f32.gguf")).unwrap();
    let vision = Vision::load_mmproj(&gguf.join("mmproj-f32.gguf"), &model.tokenizer).unwrap();
    let pool = ThreadPool::new(2);
    let mut session = Session::new(&model, SessionConfig::new(2, 1024));
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let plan = planned_case(&model, &vision, case, Some((3136, 50176)));
        let (tokens, media) = encoded(&vision, &pool, &golden, name, plan);
        assert_greedy(&model, case, greedy_16(&mut session, &tokens, media));
    }
}
