//! Tool calls in the Hermes / Qwen format the models are trained on:
//! `<tool_call>\n{"name": "...", "arguments": {...}}\n</tool_call>`, possibly several, after
//! optional text. Parsed into OpenAI's `tool_calls`.

use serde_json::{json, Value};

use crate::state::new_id;
use crate::tags::{scan, Scan};

pub const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// JSON text of the arguments object.
    pub arguments: String,
}

impl ToolCall {
    /// OpenAI's shape; `index` is used by stream deltas.
    pub fn to_json(&self, index: Option<usize>) -> Value {
        let mut v = json!({
            "id": new_id("call"),
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        });
        if let Some(i) = index {
            v["index"] = json!(i);
        }
        v
    }

    /// A call from its JSON object `{"name": ..., "arguments": {...}}` (arguments may also
    /// be given as `parameters`, or as a JSON string).
    pub fn from_json(v: &Value) -> Option<ToolCall> {
        let name = v.get("name")?.as_str()?.to_owned();
        let args = v.get("arguments").or_else(|| v.get("parameters"));
        let arguments = match args {
            None => "{}".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        Some(ToolCall { name, arguments })
    }

    /// A forced call (`{"name": ..., "arguments": ...}`, keys in that order) that was cut
    /// off by `max_tokens`: its name, and its arguments as far as they were written. OpenAI
    /// and vLLM return such a call with `finish_reason: length` rather than dropping it.
    /// `None` when the output stopped before the name was complete.
    pub fn from_truncated(text: &str) -> Option<ToolCall> {
        let rest = text.trim_start().strip_prefix('{')?;
        let rest = after_key(rest, "name")?;
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let name = values.next()?.ok()?.as_str()?.to_owned();
        let rest = rest[values.byte_offset()..].trim_start();
        let arguments = rest
            .strip_prefix(',')
            .and_then(|r| after_key(r, "arguments"))
            .map_or_else(String::new, |a| a.trim().to_owned());
        Some(ToolCall { name, arguments })
    }
}

/// The text after `"key":` at the start of `text` (whitespace allowed around both).
fn after_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let quoted = text.trim_start().strip_prefix('"')?.strip_prefix(key)?;
    quoted.strip_prefix('"')?.trim_start().strip_prefix(':')
}

/// Text before the first call (if any), and the calls. `None` when the output holds no
/// well-formed call: then it is plain content, as vLLM's Hermes parser treats it.
pub fn parse(text: &str) -> Option<(Option<String>, Vec<ToolCall>)> {
    let start = text.find(OPEN)?;
    let content = text[..start].trim();
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(at) = rest.find(OPEN) {
        let body_start = at + OPEN.len();
        let (body, next) = match rest[body_start..].find(CLOSE) {
            Some(end) => (
                &rest[body_start..body_start + end],
                &rest[body_start + end + CLOSE.len()..],
            ),
            // The last call may be cut off by end-of-generation before its closing tag.
            None => (&rest[body_start..], ""),
        };
        let value: Value = serde_json::from_str(body.trim()).ok()?;
        calls.push(ToolCall::from_json(&value)?);
        rest = next;
    }
    Some(((!content.is_empty()).then(|| content.to_owned()), calls))
}

/// Streams content until a tool call starts, then holds everything back for [`parse`].
#[derive(Default)]
pub struct ToolCallDetector {
    pending: String,
    in_call: bool,
    /// All text seen from the first `<tool_call>` on.
    held: String,
}

impl ToolCallDetector {
    /// Content that can be sent now.
    pub fn push(&mut self, text: &str) -> String {
        if self.in_call {
            self.held.push_str(text);
            return String::new();
        }
        self.pending.push_str(text);
        match scan(&mut self.pending, OPEN) {
            Scan::Found(before, after) => {
                self.in_call = true;
                self.held = format!("{OPEN}{after}");
                before
            }
            Scan::NotYet(emit) => emit,
        }
    }

    /// At the end: remaining content and the calls (an unparsable call is returned as
    /// content).
    pub fn finish(&mut self) -> (String, Vec<ToolCall>) {
        if !self.in_call {
            return (std::mem::take(&mut self.pending), Vec::new());
        }
        let held = std::mem::take(&mut self.held);
        match parse(&held) {
            Some((_, calls)) => (String::new(), calls),
            None => (held, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hermes_calls_with_leading_text() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}";
        let (content, calls) = parse(text).unwrap();
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, "{\"city\":\"Paris\"}");
        assert_eq!(calls[1].arguments, "{}");
        assert!(parse("no calls here").is_none());
        assert!(parse("<tool_call>{not json}</tool_call>").is_none());
    }

    #[test]
    fn truncated_calls_keep_name_and_partial_arguments() {
        let cut = ToolCall::from_truncated(
            "{\"name\": \"get_weather\",\n  \"arguments\": {\"city\": \"Par",
        );
        assert_eq!(
            cut,
            Some(ToolCall {
                name: "get_weather".into(),
                arguments: "{\"city\": \"Par".into()
            })
        );
        let no_arguments = ToolCall::from_truncated("{ \"name\" : \"f\" ").unwrap();
        assert_eq!(
            (no_arguments.name.as_str(), no_arguments.arguments.as_str()),
            ("f", "")
        );
        assert_eq!(ToolCall::from_truncated("{\"name\": \"get_wea"), None);
        assert_eq!(ToolCall::from_truncated("{\"na"), None);
    }

    #[test]
    fn detector_streams_text_then_holds_the_call() {
        let mut d = ToolCallDetector::default();
        let mut out = d.push("Sure <tool");
        out.push_str(&d.push("_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>"));
        assert_eq!(out, "Sure ");
        let (rest, calls) = d.finish();
        assert_eq!(rest, "");
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "f".into(),
                arguments: "{\"x\":1}".into()
            }]
        );
    }
}
