//! Chat messages as OpenAI clients send them -> the model's prompt tokens.

use serde_json::{json, Map, Value};
use weft_models::chat_template::RenderOptions;

use crate::error::ApiError;
use weft_models::TextModel;

use crate::state::PromptContext;

/// Checks one message and rewrites it into what chat templates expect: `content` as a
/// string, or, when it holds media, as a list of `{"type": "text", "text": ...}`,
/// `{"type": "image"}` and `{"type": "video"}` parts (transformers' convention, which
/// multimodal templates read to place their placeholders); `tool_calls[].function.arguments` as an object.
fn normalize_message(i: usize, m: &Value, accepts_media: bool) -> Result<Value, ApiError> {
    let param = format!("messages[{i}]");
    let obj = m
        .as_object()
        .ok_or_else(|| ApiError::invalid(&param, format!("{param} must be an object")))?;
    let role = obj
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(&param, format!("{param}.role is missing")))?;
    let role = match role {
        "system" | "user" | "assistant" | "tool" => role,
        "developer" => "system",
        other => {
            return Err(ApiError::invalid(
                &param,
                format!(
                "{param}.role must be system, developer, user, assistant or tool, got `{other}`"
            ),
            ))
        }
    };
    let content = match obj.get("content") {
        None | Some(Value::Null) => json!(""),
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(parts)) => content_parts(&param, parts, accepts_media)?,
        Some(_) => {
            return Err(ApiError::invalid(
                &param,
                format!("{param}.content must be a string or a list of parts"),
            ))
        }
    };
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    out.insert("content".into(), content);
    for key in ["name", "tool_call_id"] {
        if let Some(v) = obj.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(calls) = obj.get("tool_calls").and_then(Value::as_array) {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if let Some(args) = c.pointer_mut("/function/arguments") {
                    if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str(s).ok()) {
                        *args = parsed;
                    }
                }
                c
            })
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(out))
}

/// A list of content parts as the template gets it: one string when all are text, else the
/// parts with each `image_url` as `{"type": "image"}`, each `video_url` as
/// `{"type": "video"}` and each `input_audio` or `audio_url` as `{"type": "audio"}`.
fn content_parts(param: &str, parts: &[Value], accepts_media: bool) -> Result<Value, ApiError> {
    let mut text = String::new();
    let mut out = Vec::new();
    for part in parts {
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(t))) => {
                text.push_str(t);
                out.push(json!({"type": "text", "text": t}));
            }
            (Some(kind @ ("image_url" | "video_url")), _) if accepts_media => {
                out.push(json!({"type": kind.trim_end_matches("_url")}))
            }
            (Some("input_audio" | "audio_url"), _) if accepts_media => {
                out.push(json!({"type": "audio"}))
            }
            (Some("image_url" | "video_url" | "input_audio" | "audio_url"), _) => {
                return Err(ApiError::invalid(
                    param,
                    "this model does not accept images, videos or audio (it has no vision or \
                     audio tower)",
                ))
            }
            (kind, _) => {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "{param}.content: parts must be text, image_url, video_url, input_audio \
                         or audio_url, got {}",
                        kind.unwrap_or("a part without a type")
                    ),
                ))
            }
        }
    }
    match out.iter().any(|p| p["type"] != "text") {
        true => Ok(Value::Array(out)),
        false => Ok(json!(text)),
    }
}

/// Bytes of text in the messages' contents: the prompt holds at least these.
pub fn content_bytes(messages: &[Value]) -> usize {
    messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => s.len(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(str::len)
                .sum(),
            _ => 0,
        })
        .sum()
}

/// Renders the conversation with the model's template (the text to [`encode_prompt`]).
pub fn render_chat(
    ctx: &PromptContext,
    messages: &[Value],
    tools: Option<&[Value]>,
    extra: Option<&Map<String, Value>>,
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let template = ctx.model.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template (a base model): use /v1/completions")
    })?;
    let messages = messages
        .iter()
        .enumerate()
        .map(|(i, m)| normalize_message(i, m, ctx.vision.is_some()))
        .collect::<Result<Vec<_>, _>>()?;
    let options = RenderOptions {
        add_generation_prompt,
        tools: tools.map(|t| Value::Array(t.to_vec())),
        documents: None,
        extra: extra.cloned().unwrap_or_default(),
    };
    template
        .render_with(&messages, &options)
        .map_err(|e| ApiError::bad_request(format!("chat template: {}", e.message())))
}

/// Tokenizes rendered template text: special-token text is parsed, and a BOS that the
/// template wrote itself is not doubled.
pub fn encode_prompt(model: &TextModel, text: &str) -> Vec<u32> {
    let tokenizer = &model.tokenizer;
    let mut tokens = tokenizer.encode(text, true, true);
    if let Some(bos) = tokenizer.bos() {
        if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
            tokens.remove(0);
        }
    }
    tokens
}
