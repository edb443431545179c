//! Submits choices to the engine and follows their events: each choice has a channel fed
//! by the engine thread, a guard that aborts it if the HTTP side goes away first, and
//! timers for the latency metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::response::sse::Event as SseEvent;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use weft_engine::engine::{Event, Finished, Request};
use weft_engine::generation::{FinishReason, TokenConstraint};
use weft_engine::media::RequestMedia;

use crate::error::ApiError;
use crate::params::ChoiceParams;
use crate::state::{AppState, TextService};

/// Builds a fresh constraint for each choice (each has its own position in the grammar).
pub type ConstraintFactory = Box<dyn Fn() -> Box<dyn TokenConstraint> + Send + Sync>;

/// One choice in flight.
pub struct Choice {
    pub index: usize,
    rx: mpsc::UnboundedReceiver<Event>,
    guard: AbortOnDrop,
    started: Instant,
    last_token: Option<Instant>,
}

/// Aborts the engine request when dropped before its end (client gone, handler cancelled).
struct AbortOnDrop {
    state: Arc<AppState>,
    text: Arc<TextService>,
    id: u64,
    done: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.text.engine.abort(self.id);
        }
    }
}

/// Submits `n` choices of each prompt, all of them or none (see
/// `EngineHandle::submit_all`). Choices are numbered across prompts, in order.
pub fn submit(
    state: &Arc<AppState>,
    prompts: &[(&[u32], &RequestMedia, &ChoiceParams)],
    constraint: Option<&ConstraintFactory>,
    started: Instant,
) -> Result<Vec<Choice>, ApiError> {
    let text = state.text()?;
    let mut requests = Vec::new();
    let mut receivers = Vec::new();
    for &(prompt, media, p) in prompts {
        for i in 0..p.n {
            let (tx, rx) = mpsc::unbounded_channel();
            requests.push(Request {
                prompt: prompt.to_vec(),
                media: media.clone(),
                params: p.for_choice(i),
                options: p.options.clone(),
                constraint: constraint.map(|f| f()),
                sink: Box::new(move |e| tx.send(e).is_ok()),
            });
            receivers.push(rx);
        }
    }
    let ids = text.engine.submit_all(requests)?;
    Ok(ids
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(index, (id, rx))| Choice {
            index,
            rx,
            guard: AbortOnDrop {
                state: Arc::clone(state),
                text: Arc::clone(text),
                id,
                done: false,
            },
            started,
            last_token: None,
        })
        .collect())
}

/// The name OpenAI uses for a finish reason.
pub fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
        FinishReason::Cancelled => "abort",
    }
}

impl Choice {
    /// The next event; `None` only if the engine stopped without finishing the request.
    pub async fn next(&mut self) -> Option<Event> {
        let event = self.rx.recv().await;
        let metrics = &self.guard.state.metrics;
        match &event {
            Some(Event::Token { .. }) => {
                let now = Instant::now();
                match self.last_token {
                    None => metrics.time_to_first_token((now - self.started).as_secs_f64()),
                    Some(t) => metrics.inter_token((now - t).as_secs_f64()),
                }
                self.last_token = Some(now);
            }
            Some(Event::Finished(f)) => {
                self.guard.done = true;
                metrics.finished(
                    finish_reason_name(f.reason),
                    f.prompt_tokens,
                    f.completion_tokens,
                    self.started.elapsed().as_secs_f64(),
                );
            }
            Some(Event::Failed(_)) | None => self.guard.done = true,
        }
        event
    }
}

/// A request the engine failed: 500 with the engine's message.
pub fn failed(message: String) -> ApiError {
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, message)
}

/// A choice whose events stopped without an end: the engine thread is gone.
pub fn engine_stopped() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "the engine stopped before the request finished",
    )
}

/// The SSE event that ends a stream which failed midway (as vLLM sends it).
pub fn error_event(error: &ApiError) -> SseEvent {
    SseEvent::default().data(error.body().to_string())
}

/// Everything one choice produced, for non-streaming responses.
pub struct Collected {
    pub index: usize,
    pub text: String,
    pub logprobs: Vec<weft_engine::logprobs::TokenLogprobs>,
    pub finished: Finished,
}

/// Runs a choice to its end.
pub async fn collect(mut choice: Choice) -> Result<Collected, ApiError> {
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while let Some(event) = choice.next().await {
        match event {
            Event::Token {
                text: t,
                logprobs: l,
                ..
            } => {
                text.push_str(&t);
                logprobs.extend(l);
            }
            Event::Finished(f) => {
                text.push_str(&f.text);
                return Ok(Collected {
                    index: choice.index,
                    text,
                    logprobs,
                    finished: f,
                });
            }
            Event::Failed(message) => return Err(failed(message)),
        }
    }
    Err(engine_stopped())
}

/// OpenAI's `usage` object.
pub fn usage_json(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// One streamed event of an OpenAI response whose `object` is `object`
/// (`chat.completion.chunk`, `text_completion`), with `usage` when given.
pub fn sse_chunk(
    object: &str,
    id: &str,
    created: u64,
    model: &str,
    choices: Value,
    usage: Option<Value>,
) -> SseEvent {
    let mut v = json!({
        "id": id,
        "object": object,
        "created": created,
        "model": model,
        "choices": choices,
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    SseEvent::default().data(v.to_string())
}
