//! Shapes a choice's generated text into what the chat API returns: reasoning split off by
//! the reasoning parser, tool calls parsed out of the content. The same code serves whole
//! responses (one push) and streams (a push per token).

use crate::reasoning::{ReasoningParser, ReasoningSplitter, Split};
use crate::tool_calls::{ToolCall, ToolCallDetector};

/// How a request uses tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolMode {
    /// No tools, or `tool_choice: none`: all output is content.
    Off,
    /// `auto`: the model may write `<tool_call>` blocks.
    Auto,
    /// `required`: the whole output is one call's `{"name": ..., "arguments": ...}` object,
    /// enforced by constrained decoding.
    Required,
    /// A named function: the whole output is that function's arguments object, enforced by
    /// constrained decoding (as in vLLM; the model does not spend tokens on the name).
    Named(String),
}

pub struct Shaper {
    reasoning: Option<ReasoningSplitter>,
    detector: Option<ToolCallDetector>,
    /// Output of a forced call, parsed at the end.
    forced: Option<Forced>,
}

/// A call the grammar forces, collected until the end.
struct Forced {
    /// The function's name when `tool_choice` named it (the output is then the arguments).
    name: Option<String>,
    output: String,
}

impl Forced {
    fn new(name: Option<String>) -> Forced {
        Forced {
            name,
            output: String::new(),
        }
    }

    /// The call, also when `max_tokens` cut it off: then the arguments are as far as they
    /// were written, as OpenAI and vLLM return them. `Err` gives the output back as content
    /// when not even a `required` call's name was complete.
    fn into_call(self) -> Result<ToolCall, String> {
        if let Some(name) = self.name {
            let output = self.output.trim();
            let arguments = serde_json::from_str::<serde_json::Value>(output)
                .map_or_else(|_| output.to_owned(), |v| v.to_string());
            return Ok(ToolCall { name, arguments });
        }
        serde_json::from_str(self.output.trim())
            .ok()
            .and_then(|v| ToolCall::from_json(&v))
            .or_else(|| ToolCall::from_truncated(&self.output))
            .ok_or(self.output)
    }
}

impl Shaper {
    pub fn new(parser: Option<ReasoningParser>, tools: &ToolMode) -> Shaper {
        Shaper {
            reasoning: parser.map(ReasoningSplitter::new),
            detector: (*tools == ToolMode::Auto).then(ToolCallDetector::default),
            forced: match tools {
                ToolMode::Off | ToolMode::Auto => None,
                ToolMode::Required => Some(Forced::new(None)),
                ToolMode::Named(name) => Some(Forced::new(Some(name.clone()))),
            },
        }
    }

    fn route_content(&mut self, content: String) -> String {
        if let Some(forced) = &mut self.forced {
            forced.output.push_str(&content);
            return String::new();
        }
        match &mut self.detector {
            Some(d) => d.push(&content),
            None => content,
        }
    }

    /// Text that can be sent now, split into reasoning and content.
    pub fn push(&mut self, text: &str) -> Split {
        let split = match &mut self.reasoning {
            Some(r) => r.push(text),
            None => Split {
                reasoning: String::new(),
                content: text.to_owned(),
            },
        };
        Split {
            content: self.route_content(split.content),
            reasoning: split.reasoning,
        }
    }

    /// The rest at the end of generation, plus the tool calls found.
    pub fn finish(&mut self) -> (Split, Vec<ToolCall>) {
        let tail = match &mut self.reasoning {
            Some(r) => r.finish(),
            None => Split::default(),
        };
        let mut content = self.route_content(tail.content);
        let mut calls = Vec::new();
        if let Some(d) = &mut self.detector {
            let (rest, found) = d.finish();
            content.push_str(&rest);
            calls = found;
        }
        if let Some(forced) = self.forced.take() {
            match forced.into_call() {
                Ok(call) => calls.push(call),
                Err(output) => content.push_str(&output),
            }
        }
        (
            Split {
                reasoning: tail.reasoning,
                content,
            },
            calls,
        )
    }
}
