//! Chat messages as OpenAI clients send them -> the model's prompt tokens.

use serde_json::{json, Map, Value};
use weft_models::chat_template::RenderOptions;

use crate::error::ApiError;
use weft_models::TextModel;

/// Checks one message and rewrites it into what chat templates expect: `content` as a
/// string, `tool_calls[].function.arguments` as an object (transformers' convention).
fn normalize_message(i: usize, m: &Value) -> Result<Value, ApiError> {
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
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            &param,
                            format!(
                                "{param}.content: only text parts are supported, got {}",
                                kind.unwrap_or("a part without a type")
                            ),
                        ))
                    }
                }
            }
            text
        }
        Some(_) => {
            return Err(ApiError::invalid(
                &param,
                format!("{param}.content must be a string or a list of parts"),
            ))
        }
    };
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    out.insert("content".into(), json!(content));
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
    model: &TextModel,
    messages: &[Value],
    tools: Option<&[Value]>,
    extra: Option<&Map<String, Value>>,
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let template = model.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template (a base model): use /v1/completions")
    })?;
    let messages = messages
        .iter()
        .enumerate()
        .map(|(i, m)| normalize_message(i, m))
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
