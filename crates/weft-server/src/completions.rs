//! `POST /v1/completions` (legacy text completions), whole and streamed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_engine::engine::Event;
use weft_engine::media::RequestMedia;

use crate::error::ApiError;
use crate::generate::{
    collect, engine_stopped, error_event, failed, finish_reason_name, sse_chunk, submit,
    usage_json, Choice, ConstraintFactory,
};
use crate::limits::Limits;
use crate::logprobs_format::completion_logprobs;
use crate::openai::{CompletionRequest, PromptSpec};
use crate::params::{choice_params, ChoiceParams};
use crate::state::{new_id, unix_now, PromptContext, SharedState, TextService};
use crate::structured::constraint;
use crate::ApiJson;

/// One prompt of the request: its tokens and text (for `echo`).
struct Prompt {
    tokens: Vec<u32>,
    text: String,
}

/// Tokenizes the request's prompts (run off the async executor). Text that cannot fit in
/// the context is refused before it is tokenized.
fn prompts(ctx: &PromptContext, spec: PromptSpec) -> Result<Vec<Prompt>, ApiError> {
    let tokenizer = &ctx.model.tokenizer;
    let from_text = |prompt: String| -> Result<Prompt, ApiError> {
        ctx.check_text_fits(prompt.len(), "prompt")?;
        Ok(Prompt {
            tokens: tokenizer.encode(&prompt, true, false),
            text: prompt,
        })
    };
    let from_tokens = |tokens: Vec<u32>| {
        let vocab = tokenizer.vocab_size();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid(
                "prompt",
                format!("token id {bad} is outside the vocabulary ({vocab} tokens)"),
            ));
        }
        Ok(Prompt {
            text: tokenizer.decode(&tokens, false),
            tokens,
        })
    };
    let list = match spec {
        PromptSpec::Text(t) => vec![from_text(t)?],
        PromptSpec::Texts(ts) => ts.into_iter().map(from_text).collect::<Result<_, _>>()?,
        PromptSpec::Tokens(t) => vec![from_tokens(t)?],
        PromptSpec::TokenLists(ls) => ls.into_iter().map(from_tokens).collect::<Result<_, _>>()?,
    };
    if list.is_empty() || list.iter().any(|p| p.tokens.is_empty()) {
        return Err(ApiError::invalid("prompt", "the prompt must not be empty"));
    }
    Ok(list)
}

/// How many prompts `spec` holds.
fn prompt_count(spec: &PromptSpec) -> usize {
    match spec {
        PromptSpec::Text(_) | PromptSpec::Tokens(_) => 1,
        PromptSpec::Texts(ts) => ts.len(),
        PromptSpec::TokenLists(ls) => ls.len(),
    }
}

/// A completion request turned into what the engine needs.
struct Prepared {
    prompts: Vec<Prompt>,
    params: Vec<ChoiceParams>,
    constraint: Option<ConstraintFactory>,
}

fn prepare(
    ctx: &PromptContext,
    limits: &Limits,
    req: &CompletionRequest,
) -> Result<Prepared, ApiError> {
    let prompts = prompts(ctx, req.prompt.clone())?;
    let params = prompts
        .iter()
        .map(|prompt| {
            choice_params(
                &req.sampling,
                req.sampling.max_tokens.or(Some(16)),
                req.logprobs,
                prompt.tokens.len(),
                ctx,
                limits,
            )
        })
        .collect::<Result<_, _>>()?;
    let constraint = constraint(ctx, None, req.sampling.response_format.as_ref())?;
    Ok(Prepared {
        prompts,
        params,
        constraint,
    })
}

pub async fn completions(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    state.check_model(req.sampling.model.as_deref())?;
    state.check_accepting()?;
    if req.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    let n = req.sampling.n.unwrap_or(1);
    if req.best_of.is_some_and(|b| b != n) {
        return Err(ApiError::invalid(
            "best_of",
            "best_of must equal n (no ranking of extra samples)",
        ));
    }
    let text = Arc::clone(state.text()?);
    // Refuse a request for more completions than the queue holds before tokenizing it.
    let engine = text.engine.config();
    let queue = engine.max_num_seqs + engine.max_waiting;
    let count = n.saturating_mul(prompt_count(&req.prompt));
    if count > queue {
        return Err(weft_engine::EngineError::TooManyRequests {
            count,
            limit: queue,
        }
        .into());
    }
    let req = Arc::new(req);
    let Prepared {
        prompts,
        params,
        constraint,
    } = state
        .prep
        .run({
            let (text, limits, req) = (
                Arc::clone(&text),
                state.config.limits.clone(),
                Arc::clone(&req),
            );
            move || prepare(&text.prompt, &limits, &req)
        })
        .await?;
    let text_only = RequestMedia::default();
    let jobs: Vec<(&[u32], &RequestMedia, &ChoiceParams)> = prompts
        .iter()
        .zip(&params)
        .map(|(p, params)| (p.tokens.as_slice(), &text_only, params))
        .collect();
    let all = submit(&state, &jobs, constraint.as_ref(), started)?;
    let prompt_tokens = prompts.iter().map(|p| p.tokens.len()).sum();
    let echoes: Vec<String> = prompts
        .iter()
        .flat_map(|p| {
            let echo = if req.echo {
                p.text.clone()
            } else {
                String::new()
            };
            std::iter::repeat_n(echo, n)
        })
        .collect();
    let meta = Meta {
        id: new_id("cmpl"),
        created: unix_now(),
        model: state.model_name().to_owned(),
        text,
    };
    if req.sampling.stream {
        let usage = req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream(meta, all, echoes, prompt_tokens, usage).into_response());
    }
    let tokenizer = &meta.text.model.tokenizer;
    let (mut completion, mut cached) = (0, 0);
    let mut out = Vec::new();
    for (choice, echo) in all.into_iter().zip(echoes) {
        let c = collect(choice).await?;
        completion += c.finished.completion_tokens;
        cached += c.finished.cached_tokens;
        let logprobs = if req.logprobs.is_some() {
            completion_logprobs(tokenizer, &c.logprobs, echo.chars().count())
        } else {
            Value::Null
        };
        out.push(json!({
            "index": c.index,
            "text": format!("{echo}{}", c.text),
            "logprobs": logprobs,
            "finish_reason": finish_reason_name(c.finished.reason),
            "stop_reason": c.finished.stop,
        }));
    }
    Ok(Json(json!({
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": out,
        "usage": usage_json(prompt_tokens, completion, cached),
    }))
    .into_response())
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    text: Arc<TextService>,
}

fn chunk(meta: &Meta, choices: Value, usage: Option<Value>) -> SseEvent {
    sse_chunk(
        "text_completion",
        &meta.id,
        meta.created,
        &meta.model,
        choices,
        usage,
    )
}

fn stream(
    meta: Meta,
    choices: Vec<Choice>,
    echoes: Vec<String>,
    prompt_tokens: usize,
    include_usage: bool,
) -> impl IntoResponse {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let meta = std::sync::Arc::new(meta);
    let tasks: Vec<_> = choices
        .into_iter()
        .zip(echoes)
        .map(|(mut choice, echo)| {
            let (meta, tx) = (std::sync::Arc::clone(&meta), tx.clone());
            tokio::spawn(async move {
                let tokenizer = &meta.text.model.tokenizer;
                let index = choice.index;
                let mut offset = echo.chars().count();
                let mut pending_text = echo;
                while let Some(event) = choice.next().await {
                    let (text, logprobs, finish) = match event {
                        Event::Token { text, logprobs, .. } => {
                            let lp = logprobs.map(|l| completion_logprobs(tokenizer, &[l], offset));
                            (text, lp, None)
                        }
                        Event::Finished(f) => (f.text.clone(), None, Some(f)),
                        Event::Failed(message) => {
                            let _ = tx.send(Ok(error_event(&failed(message)))).await;
                            return None;
                        }
                    };
                    pending_text.push_str(&text);
                    if pending_text.is_empty() && logprobs.is_none() && finish.is_none() {
                        continue;
                    }
                    offset += text.chars().count();
                    let c = json!({
                        "index": index,
                        "text": std::mem::take(&mut pending_text),
                        "logprobs": logprobs,
                        "finish_reason": finish.as_ref().map(|f| finish_reason_name(f.reason)),
                        "stop_reason": finish.as_ref().and_then(|f| f.stop.clone()),
                    });
                    tx.send(Ok(chunk(&meta, json!([c]), None))).await.ok()?;
                    if let Some(f) = finish {
                        return Some((f.completion_tokens, f.cached_tokens));
                    }
                }
                let _ = tx.send(Ok(error_event(&engine_stopped()))).await;
                None
            })
        })
        .collect();
    tokio::spawn(async move {
        let (mut completion, mut cached) = (0, 0);
        for t in tasks {
            match t.await {
                Ok(Some((n, c))) => {
                    completion += n;
                    cached += c;
                }
                _ => return,
            }
        }
        if include_usage {
            let usage = usage_json(prompt_tokens, completion, cached);
            let _ = tx.send(Ok(chunk(&meta, json!([]), Some(usage)))).await;
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(rx))
}
