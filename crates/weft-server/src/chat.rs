//! `POST /v1/chat/completions`, whole and streamed.

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
use weft_vision::{PreparedPrompt, ProcessorKwargs};

use crate::error::ApiError;
use crate::generate::{
    collect, engine_stopped, error_event, failed, finish_reason_name, sse_chunk, submit,
    usage_json, Choice, ConstraintFactory,
};
use crate::limits::Limits;
use crate::logprobs_format::chat_entries;
use crate::media::{self, FetchedMedia, MediaSource};
use crate::openai::ChatRequest;
use crate::params::{choice_params, ChoiceParams};
use crate::prompt::{content_bytes, render_chat};
use crate::shaper::{Shaper, ToolMode};
use crate::state::{new_id, unix_now, PromptContext, SharedState, TextService};
use crate::structured::{constraint, Tools};
use crate::{parse_json, ApiJson};
use weft_vision::MediaKind;

/// What every chunk or choice of one response shares.
struct Meta {
    id: String,
    created: u64,
    model: String,
    tools: ToolMode,
    state: SharedState,
    text: Arc<TextService>,
}

pub async fn chat_completions(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    state.check_model(req.sampling.model.as_deref())?;
    state.check_accepting()?;
    let text = Arc::clone(state.text()?);
    let limits = &state.config.limits;
    precheck(&text.prompt, limits, &req)?;
    let sources = request_media_sources(&text.prompt, limits, &req)?;
    let fetched = media::fetch(&state.media_client, sources, &limits.media).await?;
    let prepared = state
        .prep
        .run({
            let (text, limits) = (Arc::clone(&text), limits.clone());
            move || prepare(&text.prompt, &limits, req, &fetched)
        })
        .await?;
    let Prepared {
        req,
        prompt,
        media,
        params,
        tools,
        constraint,
    } = prepared;
    let meta = Meta {
        id: new_id("chatcmpl"),
        created: unix_now(),
        model: state.model_name().to_owned(),
        tools,
        state: Arc::clone(&state),
        text: Arc::clone(&text),
    };
    let choices = submit(
        &state,
        &[(&prompt, &media, &params)],
        constraint.as_ref(),
        started,
    )?;
    if req.sampling.stream {
        let usage = req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream(meta, choices, prompt.len(), usage).into_response());
    }
    whole(meta, choices, prompt.len()).await
}

/// A chat request turned into what the engine needs.
struct Prepared {
    req: ChatRequest,
    prompt: Vec<u32>,
    /// The prompt's images and videos, placed and waiting for the vision tower.
    media: RequestMedia,
    params: ChoiceParams,
    tools: ToolMode,
    constraint: Option<ConstraintFactory>,
}

/// Runs a chat request's body through everything the server does to it before the engine
/// (parsing, limits, media given inline, grammars, template, tokens, parameters) and returns
/// the prompt tokens: the entry point of the request fuzz target.
pub fn prepare_chat_body(
    ctx: &PromptContext,
    limits: &Limits,
    body: &[u8],
) -> Result<Vec<u32>, ApiError> {
    let req: ChatRequest = parse_json(body)?;
    precheck(ctx, limits, &req)?;
    let mut fetched = FetchedMedia::default();
    for (kind, source) in request_media_sources(ctx, limits, &req)? {
        let MediaSource::Inline(bytes) = source else {
            return Err(ApiError::bad_request("only data: URLs are read here"));
        };
        fetched.of(kind).push(bytes);
    }
    prepare(ctx, limits, req, &fetched).map(|p| p.prompt)
}

/// What can be refused from the request's size alone, before any work is queued.
fn precheck(ctx: &PromptContext, limits: &Limits, req: &ChatRequest) -> Result<(), ApiError> {
    limits.check_messages(&req.messages)?;
    limits.check_tools(req.tools.as_deref())?;
    ctx.check_text_fits(content_bytes(&req.messages), "messages")
}

/// Where the request's images and videos come from; refused at once, before anything is
/// fetched, for a model without a vision tower.
fn request_media_sources(
    ctx: &PromptContext,
    limits: &Limits,
    req: &ChatRequest,
) -> Result<Vec<(MediaKind, MediaSource)>, ApiError> {
    let sources = media::media_sources(&req.messages, &limits.media)?;
    if let Some((kind, _)) = sources.iter().find(|(kind, _)| !ctx.accepts(*kind)) {
        let why = match (&ctx.vision, kind) {
            (_, MediaKind::Audio) => "it has no audio tower",
            (None, _) => "it has no vision tower",
            (Some(_), _) => "its vision tower reads only images",
        };
        return Err(ApiError::invalid(
            "messages",
            format!("this model does not accept {}s ({why})", kind.name()),
        ));
    }
    Ok(sources)
}

/// The CPU-heavy part of a chat request, run off the async executor: tool and response
/// grammars, the template, tokenization, and the parameters that depend on the prompt.
fn prepare(
    ctx: &PromptContext,
    limits: &Limits,
    req: ChatRequest,
    fetched: &FetchedMedia,
) -> Result<Prepared, ApiError> {
    if req.top_logprobs.is_some() && !req.logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    let tools = Tools::from_request(req.tools.as_deref(), req.tool_choice.as_ref())?;
    let rendered = render_chat(
        ctx,
        &req.messages,
        tools.render.as_deref(),
        req.chat_template_kwargs.as_ref(),
        true,
    )?;
    ctx.check_text_fits(rendered.len(), "messages")?;
    let prompt = ctx.encode_prompt(&rendered);
    let bounds = media::processor_kwargs(req.mm_processor_kwargs.as_ref())?;
    let (prompt, media) = with_media(ctx, limits, prompt, fetched, bounds)?;
    let logprobs = req.logprobs.then(|| req.top_logprobs.unwrap_or(0));
    let max_tokens = req.max_completion_tokens.or(req.sampling.max_tokens);
    let params = choice_params(
        &req.sampling,
        max_tokens,
        logprobs,
        prompt.len(),
        ctx,
        limits,
    )?;
    let mode = tools.mode.clone();
    let constraint = constraint(ctx, Some(tools), req.sampling.response_format.as_ref())?;
    Ok(Prepared {
        req,
        prompt,
        media,
        params,
        tools: mode,
        constraint,
    })
}

/// The prompt with its images and videos placed (each placeholder repeated once per media
/// token) and waiting for the vision tower; unchanged for a model without one.
fn with_media(
    ctx: &PromptContext,
    limits: &Limits,
    prompt: Vec<u32>,
    fetched: &FetchedMedia,
    bounds: ProcessorKwargs,
) -> Result<(Vec<u32>, RequestMedia), ApiError> {
    let Some(vision) = &ctx.vision else {
        return Ok((prompt, RequestMedia::default()));
    };
    let invalid = |e: &dyn std::fmt::Display| ApiError::invalid("messages", e.to_string());
    let images = media::decode_images(&fetched.images, &limits.media)?;
    let audios = media::decode_audios(&fetched.audios, &limits.media)?;
    let videos = media::probe_videos(vision, &fetched.videos, bounds, &limits.media)?;
    // Refuse a prompt its media would push past the context before resizing or decoding any.
    let mut tokens = prompt.len();
    for image in &images {
        tokens += vision
            .added_tokens_for(image.height(), image.width(), bounds)
            .map_err(|e| invalid(&e))?;
    }
    for video in &videos {
        tokens += vision
            .video_tokens_for(&video.plan, bounds)
            .map_err(|e| invalid(&e))?;
    }
    for audio in &audios {
        tokens += vision
            .audio_tokens_for(audio.len())
            .map_err(|e| invalid(&e))?;
    }
    let max_model_len = ctx.max_model_len();
    let too_long = |tokens: usize| {
        ApiError::invalid(
            "messages",
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, your \
                 request has {tokens} input tokens with its media. Please reduce the length of \
                 the input or the media's size (mm_processor_kwargs.max_pixels)."
            ),
        )
    };
    if tokens >= max_model_len {
        return Err(too_long(tokens));
    }
    let videos = media::read_videos(vision, &videos, bounds, &limits.media)?;
    let PreparedPrompt {
        tokens,
        inputs,
        positions,
    } = vision
        .plan_with(&prompt, &images, &videos, &audios, bounds)
        .map_err(|e| invalid(&e))?;
    // A video's own audio track (use_audio_in_video) is counted only once it is read.
    if tokens.len() >= max_model_len {
        return Err(too_long(tokens.len()));
    }
    Ok((tokens, media::request_media(vision, inputs, positions)))
}

async fn whole(
    meta: Meta,
    choices: Vec<Choice>,
    prompt_tokens: usize,
) -> Result<Response, ApiError> {
    let tokenizer = &meta.text.model.tokenizer;
    let parser = meta.state.config.reasoning_parser;
    let mut out = Vec::new();
    let (mut completion_tokens, mut cached) = (0, 0);
    // Choices run concurrently in the engine; collecting them in order only orders output.
    for choice in choices {
        let c = collect(choice).await?;
        completion_tokens += c.finished.completion_tokens;
        cached = c.finished.cached_tokens;
        let mut shaper = Shaper::new(parser, &meta.tools);
        let mut split = shaper.push(&c.text);
        let (tail, calls) = shaper.finish();
        split.reasoning.push_str(&tail.reasoning);
        split.content.push_str(&tail.content);
        let mut message = json!({"role": "assistant", "content": split.content});
        if parser.is_some() {
            message["reasoning_content"] =
                json!((!split.reasoning.is_empty()).then_some(split.reasoning));
        }
        let mut finish = finish_reason_name(c.finished.reason);
        if !calls.is_empty() {
            if message["content"].as_str().is_some_and(str::is_empty) {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = Value::Array(calls.iter().map(|t| t.to_json(None)).collect());
            if finish == "stop" {
                finish = "tool_calls";
            }
        }
        let logprobs = if c.logprobs.is_empty() {
            Value::Null
        } else {
            json!({"content": chat_entries(tokenizer, &c.logprobs)})
        };
        out.push(json!({
            "index": c.index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish,
            "stop_reason": c.finished.stop,
        }));
    }
    Ok(Json(json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": out,
        "usage": usage_json(prompt_tokens, completion_tokens, cached),
    }))
    .into_response())
}

fn chunk(meta: &Meta, choices: Value, usage: Option<Value>) -> SseEvent {
    sse_chunk(
        "chat.completion.chunk",
        &meta.id,
        meta.created,
        &meta.model,
        choices,
        usage,
    )
}

type Tx = mpsc::Sender<Result<SseEvent, Infallible>>;

/// Streams every choice's deltas as they come. Each choice runs in its own task; when the
/// client goes away the channel closes, the tasks end and their requests are aborted.
fn stream(
    meta: Meta,
    choices: Vec<Choice>,
    prompt_tokens: usize,
    include_usage: bool,
) -> impl IntoResponse {
    let (tx, rx) = mpsc::channel(64);
    let meta = Arc::new(meta);
    let tasks: Vec<_> = choices
        .into_iter()
        .map(|c| tokio::spawn(stream_choice(Arc::clone(&meta), c, tx.clone())))
        .collect();
    tokio::spawn(async move {
        let (mut completion, mut cached) = (0, 0);
        for t in tasks {
            if let Ok(Some((n, c))) = t.await {
                completion += n;
                cached = c;
            } else {
                return;
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

/// Sends one choice's chunks; returns (completion tokens, cached prompt tokens), or `None`
/// when the client went away.
async fn stream_choice(meta: Arc<Meta>, mut choice: Choice, tx: Tx) -> Option<(usize, usize)> {
    let index = choice.index;
    let tokenizer = &meta.text.model.tokenizer;
    let mut shaper = Shaper::new(meta.state.config.reasoning_parser, &meta.tools);
    let send = |delta: Value, logprobs: Value, finish: Option<&str>, stop: Option<String>| {
        let mut c =
            json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish});
        if finish.is_some() {
            c["stop_reason"] = json!(stop);
        }
        tx.send(Ok(chunk(&meta, json!([c]), None)))
    };
    send(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        None,
        None,
    )
    .await
    .ok()?;
    while let Some(event) = choice.next().await {
        match event {
            Event::Token { text, logprobs, .. } => {
                let split = shaper.push(&text);
                let logprobs = match logprobs {
                    Some(l) => json!({"content": chat_entries(tokenizer, &[l])}),
                    None => Value::Null,
                };
                if split.reasoning.is_empty() && split.content.is_empty() && logprobs.is_null() {
                    continue;
                }
                send(delta(split.reasoning, split.content), logprobs, None, None)
                    .await
                    .ok()?;
            }
            Event::Finished(f) => {
                let mut tail = shaper.push(&f.text);
                let (rest, calls) = shaper.finish();
                tail.reasoning.push_str(&rest.reasoning);
                tail.content.push_str(&rest.content);
                if !tail.reasoning.is_empty() || !tail.content.is_empty() {
                    send(delta(tail.reasoning, tail.content), Value::Null, None, None)
                        .await
                        .ok()?;
                }
                let mut finish = finish_reason_name(f.reason);
                if !calls.is_empty() {
                    let calls: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .map(|(i, c)| c.to_json(Some(i)))
                        .collect();
                    send(json!({"tool_calls": calls}), Value::Null, None, None)
                        .await
                        .ok()?;
                    if finish == "stop" {
                        finish = "tool_calls";
                    }
                }
                send(json!({}), Value::Null, Some(finish), f.stop)
                    .await
                    .ok()?;
                return Some((f.completion_tokens, f.cached_tokens));
            }
            Event::Failed(message) => {
                let _ = tx.send(Ok(error_event(&failed(message)))).await;
                return None;
            }
        }
    }
    let _ = tx.send(Ok(error_event(&engine_stopped()))).await;
    None
}

fn delta(reasoning: String, content: String) -> Value {
    let mut d = json!({});
    if !reasoning.is_empty() {
        d["reasoning_content"] = json!(reasoning);
    }
    if !content.is_empty() {
        d["content"] = json!(content);
    }
    d
}
