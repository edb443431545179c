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
    /// `required` or a named function: the whole output is one call's JSON object,
    /// enforced by constrained decoding.
    Forced,
}

pub struct Shaper {
    reasoning: Option<ReasoningSplitter>,
    detector: Option<ToolCallDetector>,
    /// Output of a forced call, parsed at the end.
    forced: Option<String>,
}

impl Shaper {
    pub fn new(parser: Option<ReasoningParser>, tools: &ToolMode) -> Shaper {
        Shaper {
            reasoning: parser.map(ReasoningSplitter::new),
            detector: (*tools == ToolMode::Auto).then(ToolCallDetector::default),
            forced: (*tools == ToolMode::Forced).then(String::new),
        }
    }

    fn route_content(&mut self, content: String) -> String {
        if let Some(buf) = &mut self.forced {
            buf.push_str(&content);
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
        if let Some(buf) = self.forced.take() {
            match serde_json::from_str(buf.trim())
                .ok()
                .and_then(|v| ToolCall::from_json(&v))
            {
                Some(call) => calls.push(call),
                // Cut off (length) before the call was complete: return what there is.
                None => content.push_str(&buf),
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
