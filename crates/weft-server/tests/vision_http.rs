//! Images through the server over real HTTP on 127.0.0.1, with the tiny random Qwen2.5-VL
//! checkpoint of tests/data/hf-tiny-vl: replies equal transformers' greedy continuations
//! (golden.json) whether an image comes as a data: URL, from an http:// URL or as a file://
//! path; the same image again costs no encoder run and reuses its KV blocks, a different
//! image with the same placeholder tokens does not; bad images, too many images, unreachable
//! and slow URLs are 400s that leave the server serving. Videos (golden_video.json) likewise,
//! their temporal patches encoded step by step within the encoder budget.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The tiny Qwen2.5-VL checkpoint.
fn dir() -> PathBuf {
    data_dir("hf-tiny-vl")
}

fn golden_of(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap()
}

fn golden() -> Value {
    golden_of(&dir())
}

fn image_bytes_of(dir: &Path, golden: &Value, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(golden["images"][name]["file"].as_str().unwrap())).unwrap()
}

fn image_bytes(golden: &Value, name: &str) -> Vec<u8> {
    image_bytes_of(&dir(), golden, name)
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

async fn start(model: Arc<TextModel>, max_model_len: usize) -> Listening {
    start_with(&dir(), model, max_model_len, 256).await
}

/// A server for the checkpoint in `dir` (loaded as `model`) whose steps hold at most
/// `max_num_batched_tokens`.
async fn start_with(
    dir: &Path,
    model: Arc<TextModel>,
    max_model_len: usize,
    max_num_batched_tokens: usize,
) -> Listening {
    let engine = EngineHandle::start(
        Arc::clone(&model),
        EngineConfig {
            n_threads: 2,
            max_num_seqs: 8,
            max_num_batched_tokens,
            max_model_len,
            kv_cache_tokens: 4096,
            prefix_caching: true,
            max_waiting: 32,
            encoder_budget: 256,
            encoder_cache_bytes: 16 << 20,
        },
    )
    .unwrap();
    let vision = Vision::load(dir).unwrap().map(Arc::new);
    let config = ServerConfig {
        served_model_names: vec!["vl".into()],
        api_key: None,
        max_body_bytes: 1 << 20,
        reasoning_parser: None,
        shutdown_grace: Duration::from_secs(60),
        limits: Limits {
            media: MediaLimits {
                max_images: 2,
                fetch_timeout: Duration::from_secs(1),
                allowed_local_media_path: Some(
                    data_dir("hf-tiny-vl/images").canonicalize().unwrap(),
                ),
                ..MediaLimits::default()
            },
            ..Limits::default()
        },
    };
    let state = AppState::for_text(TextService::new(engine, model, vision), config);
    Listening::start(Arc::new(state)).await
}

/// A loopback HTTP server for image URLs: `/ok/NAME` serves an image, `/slow` never answers,
/// anything else is a 404.
async fn image_host(golden: &Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let small = image_bytes(golden, "small");
    let app = axum::Router::new()
        .route(
            "/ok/small.png",
            axum::routing::get(move || async move { small }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
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

/// A chat request for 16 greedy tokens after one user message of `content` parts.
fn greedy_body(content: Vec<Value>) -> Value {
    json!({
        "model": "vl",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
        "temperature": 0,
    })
}

/// A greedy chat request for golden `case`, its images given by `url(name)`.
fn request(case: &Value, url: &dyn Fn(&str) -> String) -> Value {
    let content: Vec<Value> = case["messages"][0]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|part| match part["type"].as_str().unwrap() {
            "image" => json!({"type": "image_url", "image_url": {"url": url(part["image"].as_str().unwrap())}}),
            _ => part.clone(),
        })
        .collect();
    greedy_body(content)
}

fn greedy_text(model: &TextModel, case: &Value) -> String {
    let ids: Vec<u32> = case["greedy_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    // A reply cut inside a UTF-8 character ends before it (the detokenizer never sends half
    // a character).
    let full = model.tokenizer.decode(&ids, false);
    full.trim_end_matches('\u{FFFD}').to_owned()
}

/// Posts `request` and checks that the reply is golden `case`'s greedy text and that
/// `usage.prompt_tokens` counts its prompt as transformers does.
async fn replies_greedily(server: &Listening, model: &TextModel, case: &Value, request: &Value) {
    let (status, body) = post(server, request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        greedy_text(model, case),
        "{}",
        case["name"]
    );
    assert_eq!(
        body["usage"]["prompt_tokens"],
        case["input_ids"].as_array().unwrap().len()
    );
}

fn metric(text: &str, name: &str) -> f64 {
    common::metric(text, name).unwrap_or_else(|| panic!("no metric {name}"))
}

/// A PNG of the size of golden image `wide` (so the same placeholder tokens) but other pixels.
fn other_wide_image() -> Vec<u8> {
    let image =
        image::RgbImage::from_fn(100, 60, |x, y| image::Rgb([x as u8 * 2, y as u8 * 4, 77]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_over_http_give_transformers_greedy_replies_and_are_cached() {
    let golden = golden();
    let model = Arc::new(TextModel::load(&dir()).unwrap());
    let server = start(Arc::clone(&model), 512).await;
    let host = image_host(&golden).await;
    let cases = golden["cases"].as_array().unwrap();

    let models: Value = reqwest::get(server.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        models["data"][0]["input_modalities"],
        json!(["text", "image", "video"])
    );

    // Text only, then one image as a data: URL.
    let by_data = |name: &str| data_url(&image_bytes(&golden, name));
    for case in &cases[..2] {
        replies_greedily(&server, &model, case, &request(case, &by_data)).await;
    }
    let m = server.metrics().await;
    assert_eq!(metric(&m, "weft_encoder_runs_total"), 1.0);
    assert_eq!(metric(&m, "weft_encoder_tokens_total"), 8.0);

    // The same image again: no encoder run, and every full block of the prompt is reused
    // (66 tokens: 4 full blocks of 16; the image's 8 tokens are 34..42).
    let one_image = &cases[1];
    let (status, body) = post(&server, &request(one_image, &by_data)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        greedy_text(&model, one_image)
    );
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
    let m = server.metrics().await;
    assert_eq!(metric(&m, "weft_encoder_runs_total"), 1.0);
    assert_eq!(metric(&m, "weft_encoder_cache_hits_total"), 1.0);

    // Another image with the same size: the same token ids, but only the blocks before the
    // image (tokens 0..32) are shared, and it is encoded.
    let other = data_url(&other_wide_image());
    let (status, body) = post(&server, &request(one_image, &|_| other.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 66);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 32);
    assert_eq!(
        metric(&server.metrics().await, "weft_encoder_runs_total"),
        2.0
    );

    // Two images, one fetched over HTTP and one read from the allowed directory.
    let two_images = &cases[2];
    let by_place = |name: &str| match name {
        "small" => format!("{host}/ok/small.png"),
        _ => format!(
            "file://{}",
            dir()
                .join(golden["images"][name]["file"].as_str().unwrap())
                .display()
        ),
    };
    let (status, body) = post(&server, &request(two_images, &by_place)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        greedy_text(&model, two_images)
    );
    assert_eq!(body["usage"]["prompt_tokens"], 146);

    // Streamed, with usage.
    let mut streamed = request(one_image, &by_data);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let text = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, greedy_text(&model, one_image));
    assert_eq!(events.last().unwrap()["usage"]["prompt_tokens"], 66);

    // Bad images: each a 400 that names the problem, quickly.
    let refused = |url: String, want: &'static str| (url, want);
    let outside = dir().join("config.json").canonicalize().unwrap();
    for (url, want) in [
        refused(data_url(b"not an image at all"), "image 1"),
        refused("data:image/png;base64,!!!".into(), "base64"),
        refused(format!("{host}/missing.png"), "404"),
        refused(format!("{host}/slow"), "longer than"),
        refused("http://127.0.0.1:9/x.png".into(), "fetching"),
        refused(
            format!("file://{}", outside.display()),
            "allowed local media path",
        ),
        refused("gopher://example/x.png".into(), "must be data:"),
    ] {
        let started = Instant::now();
        let (status, body) = post(&server, &request(one_image, &|_| url.clone())).await;
        assert_eq!(status, 400, "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{url}: {message}");
        assert!(started.elapsed() < Duration::from_secs(10), "{url}");
    }
    // Too many images for --limit-mm-per-prompt (2).
    let three = json!({
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": by_data("small")}},
            {"type": "image_url", "image_url": {"url": by_data("small")}},
            {"type": "image_url", "image_url": {"url": by_data("small")}},
        ]}],
    });
    let (status, body) = post(&server, &three).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 2 images"));
    // A placeholder typed as text, with no image for it.
    let typed = json!({
        "messages": [{"role": "user", "content": "<|vision_start|><|image_pad|><|vision_end|>hi"}],
    });
    let (status, body) = post(&server, &typed).await;
    assert_eq!(status, 400, "{body}");

    // Per-request processor bounds (vLLM's mm_processor_kwargs): at most 3136 pixels puts
    // the 100x60 image at 28x56 (2 tokens instead of 8); bounds that would blow the context
    // up are refused before any resizing, as are unknown keys and min > max.
    let mut small = request(one_image, &by_data);
    small["mm_processor_kwargs"] = json!({"max_pixels": 3136});
    let (status, body) = post(&server, &small).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 60);
    for (kwargs, want) in [
        (
            json!({"min_pixels": 2_000_000, "max_pixels": 4_000_000}),
            "maximum context length",
        ),
        (
            json!({"min_pixels": 5000, "max_pixels": 4000}),
            "min_pixels",
        ),
        (json!({"size": 3}), "unknown mm_processor_kwargs"),
        (json!({"max_pixels": -1}), "positive integer"),
    ] {
        let mut bad = request(one_image, &by_data);
        bad["mm_processor_kwargs"] = kwargs.clone();
        let (status, body) = post(&server, &bad).await;
        assert_eq!(status, 400, "{kwargs}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{kwargs}: {message}");
    }

    // Still serving.
    let (status, body) = post(&server, &request(one_image, &by_data)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        greedy_text(&model, one_image)
    );
    server.shutdown(Duration::from_secs(60)).await;
}

fn video_golden() -> Value {
    let text = std::fs::read_to_string(dir().join("golden_video.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A greedy chat request for golden video `case`: the video as `video_url` (vLLM's part),
/// images as data: URLs.
fn video_request(case: &Value, video_url: &str) -> Value {
    let images = golden();
    let mut names = case["images"].as_array().unwrap().iter();
    let content: Vec<Value> = case["messages"][0]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|part| match part["type"].as_str().unwrap() {
            "video" => json!({"type": "video_url", "video_url": {"url": video_url}}),
            "image" => {
                let name = names.next().unwrap().as_str().unwrap();
                json!({"type": "image_url", "image_url": {"url": data_url(&image_bytes(&images, name))}})
            }
            _ => part.clone(),
        })
        .collect();
    greedy_body(content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn videos_over_http_give_transformers_greedy_replies_and_are_cached() {
    if !weft_test_support::commands(&["ffmpeg", "ffprobe"]) {
        return;
    }
    let golden = video_golden();
    let model = Arc::new(TextModel::load(&dir()).unwrap());
    let server = start(Arc::clone(&model), 2048).await;
    let clip = std::fs::read(dir().join(golden["video"]["file"].as_str().unwrap())).unwrap();
    let data = |bytes: &[u8]| {
        format!(
            "data:video/mp4;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    };
    let url = data(&clip);
    let metrics = || async {
        reqwest::get(server.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // Each case's reply is transformers'; its nine temporal patches (135 tokens each) pass
    // the encoder budget of 256 tokens per step one or two at a time.
    for case in golden["cases"].as_array().unwrap() {
        replies_greedily(&server, &model, case, &video_request(case, &url)).await;
    }
    // The same video again: no encoder run, and its KV blocks reused.
    let before = metric(&metrics().await, "weft_encoder_runs_total");
    let video = &golden["cases"][0];
    let (status, body) = post(&server, &video_request(video, &url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(&metrics().await, "weft_encoder_runs_total"), before);
    let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 1264, "{body}");

    // One frame per second (vLLM's mm_processor_kwargs.fps): 8 of the 114 frames, 4 temporal
    // patches of 135 tokens instead of 9.
    let mut slower = video_request(video, &url);
    slower["mm_processor_kwargs"] = json!({"fps": 1});
    let (status, body) = post(&server, &slower).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 1279 - 5 * 135);

    // Bad videos: each a 400 that names the problem.
    let truncated = data(&clip[..clip.len() / 3]);
    for (url, kwargs, want) in [
        (data(b"not a video at all"), json!({}), "video 1"),
        (truncated, json!({}), "video 1"),
        (
            url.clone(),
            json!({"min_pixels": 602112, "max_pixels": 602112}),
            "maximum context length",
        ),
        (url.clone(), json!({"fps": 0}), "positive number"),
    ] {
        let mut request = video_request(video, &url);
        request["mm_processor_kwargs"] = kwargs;
        let started = Instant::now();
        let (status, body) = post(&server, &request).await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{message}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // Two videos where --limit-mm-per-prompt allows one.
    let part = json!({"type": "video_url", "video_url": {"url": url}});
    let two = json!({"messages": [{"role": "user", "content": [part, part]}]});
    let (status, body) = post(&server, &two).await;
    assert_eq!(status, 400);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("at most 1 videos"), "{message}");

    // Still serving.
    let (status, body) = post(&server, &video_request(video, &url)).await;
    assert_eq!(status, 200, "{body}");
    server.shutdown(Duration::from_secs(60)).await;
}

/// Gemma 3 (tests/data/hf-tiny-gemma3-vl): images as data: URLs give transformers' greedy
/// replies, in steps of 20 tokens, so that the scheduler must keep each image's 16 tokens,
/// which attend to each other both ways, in one step, also after a prefix-cache hit that ends
/// inside an image; the model lists only text and images and refuses a video with a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemma3_images_over_http_give_transformers_greedy_replies() {
    let dir = data_dir("hf-tiny-gemma3-vl");
    let golden = golden_of(&dir);
    let model = Arc::new(TextModel::load(&dir).unwrap());
    let server = start_with(&dir, Arc::clone(&model), 512, 20).await;
    let models: Value = reqwest::get(server.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        models["data"][0]["input_modalities"],
        json!(["text", "image"])
    );
    let url = |name: &str| data_url(&image_bytes_of(&dir, &golden, name));
    // First the one-image case with other text: its first KV block (tokens 0..16) ends
    // inside the image (tokens 8..24). The golden case then reuses that block and computes
    // the rest of the image in one step, its first tokens seeing the cached ones.
    let one_image = &golden["cases"][1];
    let mut other_text = request(one_image, &url);
    other_text["messages"][0]["content"][1]["text"] = json!("What is this?");
    let (status, body) = post(&server, &other_text).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        one_image["image_token_positions"][0].as_u64(),
        Some(8),
        "the image starts inside the first block"
    );
    let (status, body) = post(&server, &request(one_image, &url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 16);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        greedy_text(&model, one_image)
    );
    assert_eq!(
        metric(&server.metrics().await, "weft_encoder_cache_hits_total"),
        1.0
    );
    for case in &golden["cases"].as_array().unwrap()[1..3] {
        replies_greedily(&server, &model, case, &request(case, &url)).await;
    }
    let video = json!({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}});
    let (status, body) = post(&server, &greedy_body(vec![video])).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not accept videos"), "{message}");
    server.shutdown(Duration::from_secs(60)).await;
}
