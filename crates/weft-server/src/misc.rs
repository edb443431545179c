//! The small routes: models, health, metrics, tokenize, detokenize.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openai::{DetokenizeRequest, TokenizeRequest};
use crate::prompt::render_chat;
use crate::state::{PromptContext, SharedState};
use crate::ApiJson;

/// Every served name: the text model's, then the speech model's.
pub async fn models(State(state): State<SharedState>) -> Json<Value> {
    let mut data: Vec<Value> = Vec::new();
    if let Some(text) = &state.text {
        data.extend(state.config.served_model_names.iter().map(|name| {
            json!({
                "id": name,
                "object": "model",
                "created": state.created,
                "owned_by": "weft",
                "root": text.model.name(),
                "max_model_len": text.max_model_len(),
                "input_modalities": text.prompt.input_modalities(),
            })
        }));
    }
    if let Some(audio) = &state.audio {
        data.extend(audio.names().iter().map(|name| {
            json!({
                "id": name,
                "object": "model",
                "created": state.created,
                "owned_by": "weft",
                "root": audio.name(),
            })
        }));
    }
    Json(json!({"object": "list", "data": data}))
}

/// 200 while the server takes requests; 503 when shutting down or when the engine thread is
/// gone (so that a supervisor restarts the process). Internal errors the engine survived are
/// counted in the body.
pub async fn health(State(state): State<SharedState>) -> Response {
    let unavailable = |status: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": status})),
        )
            .into_response()
    };
    if state.draining.load(Ordering::SeqCst) {
        return unavailable("shutting down");
    }
    let mut body = json!({"status": "ok"});
    if let Some(text) = &state.text {
        if !text.engine.is_running() {
            return unavailable("the engine has stopped");
        }
        let stats = text.engine.stats();
        body["engine_failures"] = json!(stats.failures.load(Ordering::Relaxed));
        body["engine_restarts"] = json!(stats.restarts.load(Ordering::Relaxed));
    }
    Json(body).into_response()
}

pub async fn metrics(State(state): State<SharedState>) -> Response {
    let text = state.metrics.render(
        state.text.as_ref().map(|t| t.engine.stats()),
        state.audio.as_deref(),
        state.model_name(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// vLLM's `/tokenize`: a text prompt, or chat messages rendered with the template.
pub async fn tokenize(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let text = Arc::clone(state.text()?);
    if let Some(messages) = &req.messages {
        state.config.limits.check_messages(messages)?;
    }
    let tokens = state
        .prep
        .run({
            let text = Arc::clone(&text);
            move || tokenize_request(&text.prompt, req)
        })
        .await?;
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": text.max_model_len(),
        "tokens": tokens,
    })))
}

fn tokenize_request(ctx: &PromptContext, req: TokenizeRequest) -> Result<Vec<u32>, ApiError> {
    let model = &ctx.model;
    match (req.prompt, req.messages) {
        (Some(prompt), None) => Ok(model
            .tokenizer
            .encode(&prompt, req.add_special_tokens, false)),
        (None, Some(messages)) => {
            let rendered = render_chat(ctx, &messages, None, None, req.add_generation_prompt)?;
            Ok(ctx.encode_prompt(&rendered))
        }
        _ => Err(ApiError::bad_request(
            "give exactly one of `prompt` and `messages`",
        )),
    }
}

pub async fn detokenize(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let tokenizer = &state.text()?.model.tokenizer;
    let vocab = tokenizer.vocab_size();
    if let Some(&bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {bad} is outside the vocabulary ({vocab} tokens)"),
        ));
    }
    Ok(Json(
        json!({"prompt": tokenizer.decode(&req.tokens, false)}),
    ))
}
