//! The small routes: models, health, metrics, tokenize, detokenize.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openai::{DetokenizeRequest, TokenizeRequest};
use crate::prompt::chat_prompt;
use crate::state::SharedState;
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

pub async fn health(State(state): State<SharedState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok"})).into_response()
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
    let model = state.text()?;
    let tokens = match (req.prompt, req.messages) {
        (Some(text), None) => model
            .model
            .tokenizer
            .encode(&text, req.add_special_tokens, false),
        (None, Some(messages)) => chat_prompt(
            &model.model,
            &messages,
            None,
            None,
            req.add_generation_prompt,
        )?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `prompt` and `messages`",
            ))
        }
    };
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": model.max_model_len(),
        "tokens": tokens,
    })))
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
