//! Audio, images and video through the server over real HTTP on 127.0.0.1, with the tiny
//! random Qwen2.5-Omni checkpoint of tests/data/hf-tiny-omni: replies equal transformers'
//! greedy continuations (golden.json) for OpenAI's `input_audio` parts, vLLM's `audio_url`
//! and `video_url` parts and `mm_processor_kwargs.use_audio_in_video`; the same video asked
//! about again costs no encoder run and reuses its KV blocks; bad audio is a 400 that leaves
//! the server serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use weft_engine::engine::{EngineConfig, EngineHandle};
use weft_models::TextModel;
use weft_server::{AppState, Limits, MediaLimits, ServerConfig, TextService};
use weft_vision::Vision;

mod common;
use common::Listening;

fn data_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(name)
}

fn dir() -> PathBuf {
    data_dir("hf-tiny-omni")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap()
}

fn case(golden: &Value, name: &str) -> Value {
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn media_file(name: &str) -> PathBuf {
    dir().join(name).canonicalize().unwrap()
}

async fn start(model: Arc<TextModel>) -> Listening {
    let engine = EngineHandle::start(
        Arc::clone(&model),
        EngineConfig {
            n_threads: 2,
            max_num_seqs: 4,
            max_num_batched_tokens: 256,
            max_model_len: 1024,
            kv_cache_tokens: 4096,
            prefix_caching: true,
            max_waiting: 16,
            encoder_budget: 256,
            encoder_cache_bytes: 16 << 20,
        },
    )
    .unwrap();
    let vision = Vision::load(&dir()).unwrap().map(Arc::new);
    let config = ServerConfig {
        served_model_names: vec!["omni".into()],
        api_key: None,
        max_body_bytes: 4 << 20,
        reasoning_parser: None,
        shutdown_grace: Duration::from_secs(60),
        limits: Limits {
            media: MediaLimits {
                allowed_local_media_path: Some(media_file("media")),
                ..MediaLimits::default()
            },
            ..Limits::default()
        },
    };
    let state = AppState::for_text(TextService::new(engine, model, vision), config);
    Listening::start(Arc::new(state)).await
}

async fn post(server: &Listening, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A greedy chat request for golden `case`, each medium given by `part(type, file)`.
fn request(case: &Value, part: &dyn Fn(&str, &str) -> Value) -> Value {
    let content: Vec<Value> = case["messages"][0]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| match p["type"].as_str().unwrap() {
            "text" => p.clone(),
            kind => part(kind, p[kind].as_str().unwrap()),
        })
        .collect();
    let mut body = json!({
        "model": "omni",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
        "temperature": 0,
    });
    if case["use_audio_in_video"].as_bool().unwrap() {
        body["mm_processor_kwargs"] = json!({"use_audio_in_video": true});
    }
    body
}

/// Inline where the OpenAI API has a way (`input_audio`, data: URLs), else file:// URLs.
fn inline(kind: &str, file: &str) -> Value {
    let bytes = std::fs::read(dir().join(file)).unwrap();
    match kind {
        "audio" => json!({"type": "input_audio",
                          "input_audio": {"data": base64(&bytes), "format": "wav"}}),
        "image" => json!({"type": "image_url",
                          "image_url": {"url": format!("data:image/png;base64,{}", base64(&bytes))}}),
        _ => json!({"type": "video_url",
                    "video_url": {"url": format!("data:video/x-matroska;base64,{}", base64(&bytes))}}),
    }
}

fn by_file(kind: &str, file: &str) -> Value {
    let url = format!("file://{}", media_file(file).display());
    json!({"type": format!("{kind}_url"), format!("{kind}_url"): {"url": url}})
}

/// transformers' greedy reply, cut where weft stops: at an end-of-generation token.
fn greedy_text(model: &TextModel, case: &Value) -> String {
    let ids: Vec<u32> = case["greedy_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .take_while(|&t| !model.tokenizer.is_eog(t))
        .collect();
    model.tokenizer.decode(&ids, false)
}

async fn replies_greedily(server: &Listening, model: &TextModel, case: &Value, body: &Value) {
    let (status, reply) = post(server, body).await;
    assert_eq!(status, 200, "{}: {reply}", case["name"]);
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        greedy_text(model, case),
        "{}",
        case["name"]
    );
    assert_eq!(
        reply["usage"]["prompt_tokens"],
        case["input_ids"].as_array().unwrap().len(),
        "{}",
        case["name"]
    );
}

fn metric(text: &str, name: &str) -> f64 {
    common::metric(text, name).unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_video_over_http_give_transformers_greedy_replies() {
    let golden = golden();
    let model = Arc::new(TextModel::load(&dir()).unwrap());
    let server = start(Arc::clone(&model)).await;

    let models: Value = reqwest::get(server.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        models["data"][0]["input_modalities"],
        json!(["text", "image", "video", "audio"])
    );

    let audio = case(&golden, "audio");
    replies_greedily(&server, &model, &audio, &request(&audio, &inline)).await;
    let image_audio = case(&golden, "image_audio");
    replies_greedily(
        &server,
        &model,
        &image_audio,
        &request(&image_audio, &by_file),
    )
    .await;
    let video = case(&golden, "video");
    replies_greedily(&server, &model, &video, &request(&video, &inline)).await;

    // The video with its own audio track: 4 temporal patches and 3 audio chunks encoded.
    let video_audio = case(&golden, "video_audio");
    let runs = |m: &str| metric(m, "weft_encoder_runs_total");
    let before = runs(&server.metrics().await);
    replies_greedily(
        &server,
        &model,
        &video_audio,
        &request(&video_audio, &inline),
    )
    .await;
    let after = runs(&server.metrics().await);
    assert_eq!(
        after - before,
        3.0,
        "the video's patches were cached; its audio was not"
    );
    // Asked again: nothing encoded, every full block of the 309-token prompt reused.
    let (status, reply) = post(&server, &request(&video_audio, &inline)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["usage"]["prompt_tokens_details"]["cached_tokens"],
        304
    );
    assert_eq!(runs(&server.metrics().await), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_audio_is_refused_and_the_server_goes_on() {
    let golden = golden();
    let model = Arc::new(TextModel::load(&dir()).unwrap());
    let server = start(Arc::clone(&model)).await;
    let audio = case(&golden, "audio");
    let with_audio = |part: Value| {
        let mut body = request(&audio, &inline);
        body["messages"][0]["content"][0] = part;
        body
    };
    let wav = base64(&std::fs::read(dir().join("media/speech.wav")).unwrap());
    for (body, want) in [
        (
            with_audio(json!({"type": "input_audio",
                              "input_audio": {"data": base64(b"RIFF not a wave"), "format": "wav"}})),
            "audio 1",
        ),
        (
            with_audio(
                json!({"type": "input_audio", "input_audio": {"data": wav, "format": "aac"}}),
            ),
            "input_audio.format",
        ),
        (
            with_audio(json!({"type": "input_audio", "input_audio": {"format": "wav"}})),
            "input_audio.data",
        ),
        (
            with_audio(json!({"type": "audio_url", "audio_url": {"url": "gopher://x/a.wav"}})),
            "must be data:",
        ),
        (
            {
                let mut b = request(&audio, &inline);
                b["mm_processor_kwargs"] = json!({"use_audio_in_video": "yes"});
                b
            },
            "use_audio_in_video must be a boolean",
        ),
        (
            // A video without an audio track, asked for its audio.
            {
                let clip = std::fs::read(data_dir("hf-tiny-vl/videos/clip.mp4")).unwrap();
                let part = json!({"type": "video_url", "video_url":
                    {"url": format!("data:video/mp4;base64,{}", base64(&clip))}});
                let mut b = with_audio(part);
                b["mm_processor_kwargs"] = json!({"use_audio_in_video": true});
                b
            },
            "no audio track",
        ),
    ] {
        let (status, reply) = post(&server, &body).await;
        assert_eq!(status, 400, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{want}: {message}");
    }
    replies_greedily(&server, &model, &audio, &request(&audio, &inline)).await;
}
