//! The server over real HTTP on 127.0.0.1 (ephemeral ports) with a real model: responses,
//! streams, errors and their status codes, limits, disconnects and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use weft_engine::engine::{EngineConfig, EngineHandle};
use weft_models::TextModel;
use weft_server::{AppState, Limits, ReasoningParser, ServerConfig};

mod common;
use common::Listening;

fn model() -> Option<Arc<TextModel>> {
    let path = weft_test_support::model_path("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    Some(Arc::new(TextModel::load(&path).unwrap()))
}

struct Server {
    net: Listening,
    state: Arc<AppState>,
}

impl std::ops::Deref for Server {
    type Target = Listening;
    fn deref(&self) -> &Listening {
        &self.net
    }
}

struct Options {
    max_num_seqs: usize,
    max_waiting: usize,
    api_key: Option<String>,
    max_model_len: usize,
    grace: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_num_seqs: 8,
            max_waiting: 32,
            api_key: None,
            max_model_len: 512,
            // Long enough for a short request on a busy machine.
            grace: Duration::from_secs(120),
        }
    }
}

async fn start(model: Arc<TextModel>, o: Options) -> Server {
    let engine = EngineHandle::start(
        Arc::clone(&model),
        EngineConfig {
            n_threads: 2,
            max_num_seqs: o.max_num_seqs,
            max_num_batched_tokens: 256,
            max_model_len: o.max_model_len,
            kv_cache_tokens: 4096,
            prefix_caching: true,
            max_waiting: o.max_waiting,
            encoder_budget: 2048,
            encoder_cache_bytes: 64 << 20,
        },
    )
    .unwrap();
    let config = ServerConfig {
        served_model_names: vec!["smol".into(), "alias".into()],
        api_key: o.api_key,
        max_body_bytes: 64 * 1024,
        reasoning_parser: Some(ReasoningParser::Qwen3),
        shutdown_grace: o.grace,

        limits: Limits::default(),
    };
    let state = Arc::new(AppState::new(engine, model, config));
    Server {
        net: Listening::start(Arc::clone(&state)).await,
        state,
    }
}

impl Server {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn shutdown(self) {
        self.net.shutdown(Duration::from_secs(60)).await
    }
}

/// The value of a metric that must be there.
fn metric(text: &str, name: &str) -> f64 {
    common::metric(text, name).unwrap_or_else(|| panic!("no metric {name}"))
}

/// Reads an SSE response to its end: the JSON payloads, and whether `[DONE]` came.
async fn sse(r: reqwest::Response) -> (Vec<Value>, bool) {
    parse_sse(&r.text().await.unwrap())
}

fn parse_sse(text: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for line in text.lines() {
        if let Some(data) = line.strip_prefix("data: ") {
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    (events, done)
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "smol",
        "messages": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": content}],
        "max_tokens": 16,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_whole_and_streamed_agree() {
    let Some(model) = model() else { return };
    let s = start(model, Options::default()).await;
    let (status, whole) = s
        .post("/v1/chat/completions", chat("Name a fruit.", json!({})))
        .await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], "smol");
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty());
    assert_eq!(whole["usage"]["completion_tokens"], 16);
    assert_eq!(whole["choices"][0]["finish_reason"], "length");

    let r = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&chat(
            "Name a fruit.",
            json!({"stream": true, "stream_options": {"include_usage": true}, "model": "alias"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (events, done) = sse(r).await;
    assert!(done);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, content, "greedy stream equals the whole reply");
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 16);
    assert!(
        last["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let finish: Vec<&Value> = events
        .iter()
        .map(|e| &e["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("length")]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_logprobs_n_seed_and_stop() {
    let Some(model) = model() else { return };
    let s = start(model, Options::default()).await;
    let body = json!({
        "model": "smol", "prompt": "The capital of France is", "max_tokens": 6,
        "logprobs": 3, "n": 2, "temperature": 0.9, "seed": 42,
    });
    let (status, a) = s.post("/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{a}");
    let (_, b) = s.post("/v1/completions", body).await;
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    for i in 0..2 {
        assert_eq!(
            a["choices"][i]["text"], b["choices"][i]["text"],
            "same seed, same text"
        );
        let lp = &a["choices"][i]["logprobs"];
        assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
        assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 3);
        assert!(lp["token_logprobs"][0].as_f64().unwrap() <= 0.0);
        let joined: String = lp["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(joined, a["choices"][i]["text"].as_str().unwrap());
    }

    // Greedy continuation, then the same with a stop string taken from it.
    let greedy = json!({"prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0});
    let (_, full) = s.post("/v1/completions", greedy.clone()).await;
    let text = full["choices"][0]["text"].as_str().unwrap().to_owned();
    let stop = text[text.len() / 2..].chars().take(2).collect::<String>();
    let mut stopped = greedy;
    stopped["stop"] = json!([stop.clone()]);
    let (_, cut) = s.post("/v1/completions", stopped).await;
    let cut_text = cut["choices"][0]["text"].as_str().unwrap();
    assert!(
        !cut_text.contains(&stop),
        "{cut_text:?} holds stop {stop:?}"
    );
    assert!(text.starts_with(cut_text));
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    assert_eq!(cut["choices"][0]["stop_reason"], json!(stop));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_and_forced_tool_calls_are_valid() {
    let Some(model) = model() else { return };
    let s = start(model, Options::default()).await;
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "population": {"type": "integer"},
            "coastal": {"type": "boolean"}
        },
        "required": ["city", "population", "coastal"]
    });
    for seed in 0..3 {
        let (status, r) = s
            .post(
                "/v1/chat/completions",
                chat(
                    "Describe a city as JSON.",
                    json!({"max_tokens": 80, "temperature": 1.0, "seed": seed,
                           "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        let content = r["choices"][0]["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content}: {e}"));
        assert!(v["city"].is_string() && v["population"].is_i64() && v["coastal"].is_boolean());
    }

    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    }}]);
    let (status, r) = s
        .post(
            "/v1/chat/completions",
            chat(
                "What is the weather in Paris?",
                json!({"max_tokens": 60, "tools": tools, "tool_choice": "required"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());

    // A named function: the output is its arguments, also when max_tokens cuts them off.
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    for (max_tokens, finish) in [(40, "tool_calls"), (4, "length")] {
        let (status, r) = s
            .post(
                "/v1/chat/completions",
                chat(
                    "What is the weather in Paris?",
                    json!({"max_tokens": max_tokens, "temperature": 0, "tools": tools, "tool_choice": named}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        let choice = &r["choices"][0];
        assert_eq!(choice["finish_reason"], finish, "{r}");
        assert_eq!(choice["message"]["content"], Value::Null, "{r}");
        let call = &choice["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather", "{r}");
        let arguments = call["arguments"].as_str().unwrap();
        if finish == "tool_calls" {
            let args: Value = serde_json::from_str(arguments).unwrap();
            assert!(args["city"].is_string(), "{r}");
        } else {
            assert!(arguments.starts_with('{'), "{r}");
        }
    }

    let (status, r) = s
        .post(
            "/v1/chat/completions",
            chat("hi", json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": tools})),
        )
        .await;
    assert_eq!(status, 400, "{r}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_openai_shape_and_status() {
    let Some(model) = model() else { return };
    let s = start(
        model,
        Options {
            api_key: Some("sekret".into()),
            max_model_len: 64,
            ..Options::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let send = |body: reqwest::Body, key: Option<&str>, path: &str| {
        let mut r = client
            .post(s.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let ok = chat("hi", json!({})).to_string();

    let r = send(ok.clone().into(), None, "/v1/chat/completions")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = send(ok.clone().into(), Some("wrong"), "/v1/chat/completions")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error");
    // Health and metrics stay open.
    assert_eq!(reqwest::get(s.url("/health")).await.unwrap().status(), 200);

    let cases: Vec<(Value, u16, &str)> = vec![
        (chat("hi", json!({"model": "gpt-4"})), 404, "does not exist"),
        (chat("hi", json!({"temperature": -1})), 400, "temperature"),
        (chat("hi", json!({"top_p": 0})), 400, "top_p"),
        (chat("hi", json!({"n": 0})), 400, "n must be"),
        (chat("hi", json!({"top_logprobs": 3})), 400, "logprobs"),
        (chat("hi", json!({"max_tokens": 0})), 400, "max_tokens"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            400,
            "role",
        ),
        (json!({"messages": "hello"}), 400, "invalid request body"),
        (
            chat(&"word ".repeat(100), json!({})),
            400,
            "maximum context length is 64",
        ),
        (
            chat("hi", json!({"max_tokens": 60})),
            400,
            "in the completion",
        ),
        (
            chat(
                "hi",
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "x"}}}}),
            ),
            400,
            "pattern",
        ),
    ];
    for (body, status, needle) in cases {
        let r = send(
            body.to_string().into(),
            Some("sekret"),
            "/v1/chat/completions",
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert_eq!(e["error"]["code"], status);
    }
    // The overflow message names both numbers.
    let r = send(
        chat(&"word ".repeat(100), json!({})).to_string().into(),
        Some("sekret"),
        "/v1/chat/completions",
    )
    .await
    .unwrap();
    let e: Value = r.json().await.unwrap();
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("64") && msg.contains("input tokens"), "{msg}");

    let r = send("{not json".into(), Some("sekret"), "/v1/completions")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let big = json!({"prompt": "x".repeat(100 * 1024)}).to_string();
    let r = send(big.into(), Some("sekret"), "/v1/completions")
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], 413);
    let r = send(ok.into(), Some("sekret"), "/v1/nothing")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let m = s.metrics().await;
    assert!(
        m.contains("weft_http_requests_total{route=\"/v1/chat/completions\",status=\"401\"} 2"),
        "{m}"
    );
    assert!(m.contains("status=\"413\"} 1"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_gets_503_with_retry_after() {
    let Some(model) = model() else { return };
    let s = start(
        model,
        Options {
            max_num_seqs: 1,
            max_waiting: 0,
            ..Options::default()
        },
    )
    .await;
    // A long streamed request holds the only slot.
    let long = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = long.bytes_stream();
    body.next().await.unwrap().unwrap();
    let r = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "Hello", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    drop(body);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_aborts_and_frees_blocks() {
    let Some(model) = model() else { return };
    let s = start(model, Options::default()).await;
    let r = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&chat(
            "Tell a long story.",
            json!({"max_tokens": 400, "ignore_eos": true, "stream": true}),
        ))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    for _ in 0..3 {
        body.next().await.unwrap().unwrap();
    }
    let m = s.metrics().await;
    assert_eq!(metric(&m, "weft_num_requests_running"), 1.0);
    assert!(metric(&m, "weft_kv_cache_blocks_used") > 0.0);
    drop(body);
    let mut freed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = s.metrics().await;
        if metric(&m, "weft_requests_aborted_total") == 1.0
            && metric(&m, "weft_kv_cache_blocks_used") == 0.0
        {
            freed = true;
            assert_eq!(metric(&m, "weft_num_requests_running"), 0.0);
            break;
        }
    }
    assert!(freed, "the aborted request's blocks were not freed");
    assert_eq!(s.state.in_flight(), 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_then_aborts_after_the_grace_period() {
    let Some(model) = model() else { return };
    // Generous grace: the short request finishes.
    let s = start(model.clone(), Options::default()).await;
    let client = reqwest::Client::new();
    let pending = client
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "Hello", "max_tokens": 24, "ignore_eos": true}))
        .send();
    let pending = tokio::spawn(pending);
    // Shut down once the request runs.
    while s.state.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let base = s.base.clone();
    s.shutdown().await;
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 24);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(
        reqwest::get(format!("{base}/health")).await.is_err(),
        "no longer listening"
    );

    // Tiny grace: a long stream is cut off with finish_reason "abort".
    let s = start(
        model,
        Options {
            grace: Duration::from_millis(200),
            ..Options::default()
        },
    )
    .await;
    let r = client
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "Hello", "max_tokens": 400, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    // Shut down once the stream has started.
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    let reader = tokio::spawn(async move {
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
        text
    });
    s.shutdown().await;
    let text = reader.await.unwrap();
    let (events, done) = parse_sse(&text);
    assert!(done, "{}", &text[text.len().saturating_sub(600)..]);
    let finish = &events.last().unwrap()["choices"][0]["finish_reason"];
    assert_eq!(finish, "abort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_tokenize_detokenize_health_metrics() {
    let Some(model) = model() else { return };
    let s = start(model, Options::default()).await;
    let models: Value = reqwest::get(s.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smol");
    assert_eq!(models["data"][1]["id"], "alias");
    let (status, t) = s
        .post(
            "/tokenize",
            json!({"prompt": "Hello world", "add_special_tokens": false}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(t["count"], t["tokens"].as_array().unwrap().len());
    let (_, d) = s.post("/detokenize", json!({"tokens": t["tokens"]})).await;
    assert_eq!(d["prompt"], "Hello world");
    let (status, _) = s.post("/detokenize", json!({"tokens": [99999999]})).await;
    assert_eq!(status, 400);
    let (_, t) = s
        .post(
            "/tokenize",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert!(t["count"].as_u64().unwrap() > 3);

    let (status, _) = s
        .post("/v1/completions", json!({"prompt": "Hi", "max_tokens": 3}))
        .await;
    assert_eq!(status, 200);
    let m = s.metrics().await;
    for name in [
        "weft_time_to_first_token_seconds_count",
        "weft_inter_token_latency_seconds_count",
        "weft_prompt_tokens_total",
        "weft_generation_tokens_total",
        "weft_num_requests_waiting",
        "weft_kv_cache_blocks_cached",
        "weft_prefix_cache_hit_rate",
    ] {
        metric(&m, name);
    }
    assert_eq!(metric(&m, "weft_generation_tokens_total"), 3.0);
    assert_eq!(metric(&m, "weft_time_to_first_token_seconds_count"), 1.0);
    assert_eq!(metric(&m, "weft_inter_token_latency_seconds_count"), 2.0);
    assert!(m.contains("weft_request_success_total{finished_reason=\"length\"} 1"));
    s.shutdown().await;
}

/// A panic inside the model's forward pass, on the engine thread's own share of a pool job
/// (0) or on a worker's (1), fails the request of that step with a 500 (a final error event
/// when streaming); the server goes on answering, and /health counts the failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_forward_pass_fails_one_request_and_the_server_goes_on() {
    let Some(model) = model() else { return };
    let s = start(model, Options::default()).await;
    let engine = &s.state.text.as_ref().unwrap().engine;
    let question = || chat("Name a fruit.", json!({"max_tokens": 4}));
    for share in [0, 1] {
        engine.fail_next_pool_job(share);
        let (status, body) = s.post("/v1/chat/completions", question()).await;
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["error"]["type"], "internal_server_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("fault injection"), "{message}");
        let (status, body) = s.post("/v1/chat/completions", question()).await;
        assert_eq!(status, 200, "{body}");
    }
    engine.fail_next_pool_job(1);
    let r = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&chat("Name a fruit.", json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (events, done) = sse(r).await;
    assert!(!done, "a failed stream does not end with [DONE]");
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], 500, "{last}");
    let health: Value = reqwest::get(s.url("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["engine_failures"], 3);
    assert_eq!(health["engine_restarts"], 0);
    let (status, _) = s.post("/v1/chat/completions", question()).await;
    assert_eq!(status, 200);
    s.shutdown().await;
}
