//! The audio routes over real HTTP on 127.0.0.1 with the packaged whisper-base
//! (`$WEFT_TEST_MODELS/whisper-base`, as scripts/test.sh pulls it) and speech spoken here by
//! espeak-ng: every response format (checked against faster-whisper's transcript of the same
//! speech, tests/golden/whisper/transcripts.json), translations, bad input, limits, silence,
//! and a client that leaves while its request waits. Without the model or espeak-ng the tests
//! say so and pass.

use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use weft_audio::{Transcriber, Whisper};
use weft_server::{AppState, AudioConfig, AudioService, Limits, ServerConfig};

mod common;
use common::Listening;

fn transcriber() -> Option<Arc<Transcriber>> {
    static T: OnceLock<Option<Arc<Transcriber>>> = OnceLock::new();
    T.get_or_init(|| {
        let path = weft_test_support::model_path("whisper-base/model.bin")?;
        let path = path
            .parent()
            .expect("model.bin is in a folder")
            .to_path_buf();
        if !weft_test_support::commands(&["espeak-ng"]) {
            return None;
        }
        let model = Whisper::load(&path).expect("whisper-base loads");
        Some(Arc::new(Transcriber::new(model, 2)))
    })
    .clone()
}

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/golden/whisper/transcripts.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("json")
    })
}

/// WAV bytes of `text` spoken by espeak-ng with `voice` at `wpm` words per minute. The file
/// goes through a directory of this call's own, removed afterwards.
fn speak(text: &str, voice: &str, wpm: u64) -> Vec<u8> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weft-audio-http-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("speech.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &wpm.to_string(), "-w"])
        .arg(&out)
        .arg(text)
        .status()
        .unwrap();
    assert!(status.success());
    let wav = std::fs::read(&out).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    wav
}

/// The golden "kitchen" sentence as faster-whisper heard it.
fn kitchen() -> (Vec<u8>, &'static Value) {
    let g = &golden()["kitchen"];
    let wav = speak(
        g["text"].as_str().unwrap(),
        g["voice"].as_str().unwrap(),
        g["wpm"].as_u64().unwrap(),
    );
    (wav, &g["beam1"])
}

/// A 16-bit mono 16 kHz WAV file of `seconds` of digital silence.
fn silent_wav(seconds: f64) -> Vec<u8> {
    let samples = (seconds * 16_000.0) as u32;
    let data = samples * 2;
    let mut out = Vec::new();
    out.extend(b"RIFF");
    out.extend((36 + data).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes()); // PCM
    out.extend(1u16.to_le_bytes()); // mono
    out.extend(16_000u32.to_le_bytes());
    out.extend(32_000u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend(data.to_le_bytes());
    out.resize(out.len() + data as usize, 0);
    out
}

enum Part<'a> {
    Text(&'a str, &'a str),
    File(&'a str, &'a [u8]),
}

/// A multipart/form-data body built by hand, so that malformed ones can be sent too.
fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "weft-test-boundary-7d1f";
    let mut body = Vec::new();
    for part in parts {
        body.extend(format!("--{boundary}\r\n").as_bytes());
        match part {
            Part::Text(name, value) => {
                body.extend(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                        .as_bytes(),
                );
            }
            Part::File(name, bytes) => {
                body.extend(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"a.wav\"\r\n\
                         Content-Type: audio/wav\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend(*bytes);
                body.extend(b"\r\n");
            }
        }
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

type Server = Listening;

fn audio_config() -> AudioConfig {
    AudioConfig {
        served_model_names: vec!["whisper-base".into(), "whisper-1".into()],
        max_upload_bytes: 4 << 20,
        max_audio_seconds: 60.0,
        max_concurrent: 1,
        max_waiting: 8,
        // Greedy keeps the tests short; beam search is covered by weft-audio's tests.
        beam_size: 1,
    }
}

async fn start(transcriber: Arc<Transcriber>, audio: AudioConfig) -> Server {
    let config = ServerConfig {
        served_model_names: Vec::new(),
        api_key: None,
        max_body_bytes: 64 * 1024,
        reasoning_parser: None,
        shutdown_grace: Duration::from_secs(120),

        limits: Limits::default(),
    };
    let state = Arc::new(AppState::audio_only(
        AudioService::new(transcriber, audio),
        config,
    ));
    Listening::start(state).await
}

impl Listening {
    /// Posts a form; returns the status, the content type and the body.
    async fn form(&self, path: &str, parts: &[Part<'_>]) -> (u16, String, String) {
        let (content_type, body) = multipart(parts);
        let r = reqwest::Client::new()
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, r.text().await.unwrap())
    }

    /// Expects a 400 in OpenAI's error shape; returns its message.
    async fn bad(&self, parts: &[Part<'_>], param: Option<&str>) -> String {
        let (status, _, body) = self.form("/v1/audio/transcriptions", parts).await;
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"].as_str(), param, "{body}");
        v["error"]["message"].as_str().unwrap().to_owned()
    }
}

/// The value of a metric, 0 when absent (a labelled series appears with its first sample).
fn metric(text: &str, name: &str) -> f64 {
    common::metric(text, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_format_carries_faster_whispers_transcript() {
    let Some(t) = transcriber() else { return };
    let s = start(t, audio_config()).await;
    let (wav, want) = kitchen();
    let want_text = want["text"].as_str().unwrap();
    let file = Part::File("file", &wav);
    let en = Part::Text("language", "en");
    let path = "/v1/audio/transcriptions";

    // json is the default.
    let (status, ct, body) = s
        .form(path, &[Part::Text("model", "whisper-1"), en, file])
        .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({ "text": want_text }));

    let file = Part::File("file", &wav);
    let en = Part::Text("language", "en");
    let (status, ct, body) = s
        .form(
            path,
            &[
                file,
                en,
                Part::Text("response_format", "verbose_json"),
                Part::Text("timestamp_granularities[]", "segment"),
            ],
        )
        .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["task"], "transcribe");
    assert_eq!(v["language"], "english");
    assert_eq!(v["text"], want_text);
    let duration = v["duration"].as_f64().unwrap();
    assert!((5.0..10.0).contains(&duration), "{duration}");
    let segments = v["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    let tokens: Vec<Value> = segments
        .iter()
        .flat_map(|s| s["tokens"].as_array().unwrap().clone())
        .collect();
    assert_eq!(&tokens, want["tokens"].as_array().unwrap());
    for (i, seg) in segments.iter().enumerate() {
        assert_eq!(seg["id"], i);
        for key in [
            "seek",
            "start",
            "end",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        ] {
            assert!(seg[key].is_number(), "segment {i} lacks {key}: {seg}");
        }
        assert!(seg["text"].is_string());
        assert!(seg["start"].as_f64() <= seg["end"].as_f64());
    }

    let (status, ct, body) = s
        .form(
            path,
            &[
                Part::File("file", &wav),
                Part::Text("language", "en"),
                Part::Text("response_format", "text"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert_eq!(body, format!("{want_text}\n"));

    let (status, ct, body) = s
        .form(
            path,
            &[
                Part::File("file", &wav),
                Part::Text("language", "en"),
                Part::Text("response_format", "srt"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert!(body.starts_with("1\n00:00:00,000 --> 00:00:0"), "{body}");
    assert!(body.contains("kitchen window"), "{body}");

    let metrics = s.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "weft_http_requests_total{route=\"/v1/audio/transcriptions\",status=\"200\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(&metrics, "weft_transcription_latency_seconds_count"),
        4.0
    );
    assert!(metric(&metrics, "weft_audio_seconds_total") > 4.0 * 5.0);
    s.shutdown(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translations_answer_in_english_with_the_translate_task() {
    let Some(t) = transcriber() else { return };
    let s = start(t, audio_config()).await;
    let wav = speak("Good morning, my friend.", "en-us", 150);
    let (status, _, body) = s
        .form(
            "/v1/audio/translations",
            &[
                Part::File("file", &wav),
                Part::Text("model", "whisper-base"),
                Part::Text("prompt", "A greeting."),
                Part::Text("response_format", "verbose_json"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["task"], "translate");
    let text = v["text"].as_str().unwrap().to_lowercase();
    assert!(text.contains("morning"), "{text}");
    s.shutdown(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_and_silence_is_empty_text() {
    let Some(t) = transcriber() else { return };
    let s = start(
        t,
        AudioConfig {
            max_upload_bytes: 200 * 1024,
            max_audio_seconds: 2.0,
            ..audio_config()
        },
    )
    .await;
    let wav = speak("Testing the limits.", "en-us", 150);
    let wav_too_long = silent_wav(2.5);

    let m = s
        .bad(&[Part::File("file", b"{\"not\": \"audio\"}")], Some("file"))
        .await;
    assert!(m.contains("not a supported audio file"), "{m}");
    // Cut inside the header.
    let m = s.bad(&[Part::File("file", &wav[..30])], Some("file")).await;
    assert!(m.contains("not a supported audio file"), "{m}");
    let m = s.bad(&[Part::File("file", b"")], Some("file")).await;
    assert!(m.contains("empty"), "{m}");
    let m = s
        .bad(&[Part::Text("model", "whisper-base")], Some("file"))
        .await;
    assert!(m.contains("no `file`"), "{m}");
    let with = |name, value| [Part::File("file", &wav), Part::Text(name, value)];
    let m = s
        .bad(&with("response_format", "xml"), Some("response_format"))
        .await;
    assert!(m.contains("xml"), "{m}");
    let m = s
        .bad(
            &with("timestamp_granularities[]", "word"),
            Some("timestamp_granularities"),
        )
        .await;
    assert!(m.contains("word"), "{m}");
    s.bad(&with("temperature", "1.5"), Some("temperature"))
        .await;
    s.bad(&with("temperature", "warm"), Some("temperature"))
        .await;
    s.bad(&with("language", "klingon"), Some("language")).await;
    let m = s
        .bad(&[Part::File("file", &wav_too_long)], Some("file"))
        .await;
    assert!(m.contains("limit is 2 s"), "{m}");

    // Not multipart at all.
    let r = reqwest::Client::new()
        .post(s.url("/v1/audio/transcriptions"))
        .json(&serde_json::json!({"file": "a.wav"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Malformed multipart: the closing boundary never comes.
    let (ct, body) = multipart(&[Part::File("file", &wav)]);
    let r = reqwest::Client::new()
        .post(s.url("/v1/audio/transcriptions"))
        .header("content-type", ct)
        .body(body[..body.len() - 40].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Over the upload limit: 413.
    let big = vec![0u8; 300 * 1024];
    let (status, _, body) = s
        .form("/v1/audio/transcriptions", &[Part::File("file", &big)])
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limit of 204800 bytes"), "{body}");

    let (status, _, body) = s
        .form(
            "/v1/audio/transcriptions",
            &[Part::File("file", &wav), Part::Text("model", "gpt-9")],
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // Silence: 200 with no text, like OpenAI's API.
    let quiet = silent_wav(1.5);
    let (status, _, body) = s
        .form("/v1/audio/transcriptions", &[Part::File("file", &quiet)])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"text": ""})
    );
    let (status, _, body) = s
        .form(
            "/v1/audio/transcriptions",
            &[
                Part::File("file", &quiet),
                Part::Text("response_format", "text"),
            ],
        )
        .await;
    assert_eq!((status, body.as_str()), (200, ""));

    // This server has no text model: /v1/models lists the speech model's names only, and
    // the text routes say why they cannot answer.
    let models: Value = reqwest::get(s.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["whisper-base", "whisper-1"]);
    let r = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no text model"));

    let metrics = s.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "weft_http_requests_total{route=\"/v1/audio/transcriptions\",status=\"400\"}"
        ),
        12.0
    );
    // Nothing above reached the model.
    assert_eq!(metric(&metrics, "weft_audio_requests_running"), 0.0);
    s.shutdown(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_take_turns_and_one_whose_client_left_while_waiting_never_runs() {
    let Some(t) = transcriber() else { return };
    let s = start(t, audio_config()).await;
    let (wav, want) = kitchen();
    let first = {
        let (ct, body) = multipart(&[Part::File("file", &wav), Part::Text("language", "en")]);
        let url = s.url("/v1/audio/transcriptions");
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let wait_for = |name: &'static str, value: f64| {
        let s = &s;
        async move {
            for _ in 0..600 {
                if metric(&s.metrics().await, name) == value {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{name} never became {value}");
        }
    };
    wait_for("weft_audio_requests_running", 1.0).await;
    // A second request waits for the first; its client gives up while it waits (the
    // aborted task drops the connection).
    let (ct, body) = multipart(&[Part::File("file", &wav)]);
    let second = tokio::spawn(
        reqwest::Client::new()
            .post(s.url("/v1/audio/transcriptions"))
            .header("content-type", ct)
            .body(body)
            .send(),
    );
    wait_for("weft_audio_requests_waiting", 1.0).await;
    second.abort();
    wait_for("weft_audio_requests_waiting", 0.0).await;
    assert_eq!(
        metric(&s.metrics().await, "weft_audio_requests_running"),
        1.0,
        "the first request is still running: the second left the queue by itself"
    );
    let (status, body) = first.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["text"], want["text"]);
    // The abandoned request is not run after the first one ends.
    for _ in 0..20 {
        let m = s.metrics().await;
        assert_eq!(metric(&m, "weft_audio_requests_running"), 0.0);
        assert_eq!(metric(&m, "weft_transcription_latency_seconds_count"), 1.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.shutdown(Duration::from_secs(120)).await;
}
