//! `--reasoning-parser`: splits `<think>…</think>` out of the generated text into
//! `reasoning_content`, incrementally for streams.
//!
//! `qwen3`: reasoning only when the output opens with `<think>` (the model decides).
//! `deepseek_r1`: the template already opened `<think>`, so everything up to `</think>` is
//! reasoning (an output without `</think>` is all reasoning, as in vLLM).

use crate::tags::{scan, Scan};

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningParser {
    Qwen3,
    DeepseekR1,
}

impl ReasoningParser {
    pub fn from_name(name: &str) -> Option<ReasoningParser> {
        match name {
            "qwen3" => Some(ReasoningParser::Qwen3),
            "deepseek_r1" => Some(ReasoningParser::DeepseekR1),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not yet known whether the output opens with `<think>`.
    Start,
    Thinking,
    Answer,
}

/// Reasoning and answer text released by one push.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

pub struct ReasoningSplitter {
    phase: Phase,
    pending: String,
}

impl ReasoningSplitter {
    pub fn new(parser: ReasoningParser) -> ReasoningSplitter {
        ReasoningSplitter {
            phase: match parser {
                ReasoningParser::Qwen3 => Phase::Start,
                ReasoningParser::DeepseekR1 => Phase::Thinking,
            },
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Split {
        self.pending.push_str(text);
        let mut out = Split::default();
        loop {
            match self.phase {
                Phase::Start => {
                    let trimmed = self.pending.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        self.pending = rest.to_owned();
                        self.phase = Phase::Thinking;
                    } else if OPEN.starts_with(trimmed) {
                        return out; // maybe the tag, maybe not: wait
                    } else {
                        self.phase = Phase::Answer;
                    }
                }
                Phase::Thinking => match scan(&mut self.pending, CLOSE) {
                    Scan::Found(before, after) => {
                        // A leading `<think>` written by the model itself is not reasoning.
                        out.reasoning
                            .push_str(before.strip_prefix(OPEN).unwrap_or(&before));
                        self.pending = after.trim_start().to_owned();
                        self.phase = Phase::Answer;
                    }
                    Scan::NotYet(emit) => {
                        out.reasoning.push_str(&emit);
                        return out;
                    }
                },
                Phase::Answer => {
                    out.content.push_str(&std::mem::take(&mut self.pending));
                    return out;
                }
            }
        }
    }

    /// Whatever is held back, at the end of generation.
    pub fn finish(&mut self) -> Split {
        let rest = std::mem::take(&mut self.pending);
        match self.phase {
            Phase::Thinking => Split {
                reasoning: rest,
                content: String::new(),
            },
            Phase::Start | Phase::Answer => Split {
                reasoning: String::new(),
                content: rest,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a whole output at once.
    fn split_all(parser: ReasoningParser, text: &str) -> Split {
        let mut s = ReasoningSplitter::new(parser);
        let mut a = s.push(text);
        let b = s.finish();
        a.reasoning.push_str(&b.reasoning);
        a.content.push_str(&b.content);
        a
    }

    #[test]
    fn qwen3_splits_only_when_the_output_thinks() {
        let s = split_all(
            ReasoningParser::Qwen3,
            "<think>\nplan it\n</think>\n\nThe answer.",
        );
        assert_eq!(s.reasoning, "\nplan it\n");
        assert_eq!(s.content, "The answer.");
        let s = split_all(ReasoningParser::Qwen3, "No thoughts <think> here");
        assert_eq!(
            (s.reasoning.as_str(), s.content.as_str()),
            ("", "No thoughts <think> here")
        );
    }

    #[test]
    fn streamed_pieces_give_the_same_split() {
        let text = "<think>a b</think>c d";
        let mut s = ReasoningSplitter::new(ReasoningParser::Qwen3);
        let (mut r, mut c) = (String::new(), String::new());
        for ch in text.chars() {
            let o = s.push(&ch.to_string());
            r.push_str(&o.reasoning);
            c.push_str(&o.content);
        }
        let o = s.finish();
        r.push_str(&o.reasoning);
        c.push_str(&o.content);
        assert_eq!((r.as_str(), c.as_str()), ("a b", "c d"));
    }

    #[test]
    fn deepseek_r1_starts_inside_reasoning() {
        let s = split_all(ReasoningParser::DeepseekR1, "thinking</think>answer");
        assert_eq!(
            (s.reasoning.as_str(), s.content.as_str()),
            ("thinking", "answer")
        );
        let s = split_all(ReasoningParser::DeepseekR1, "never closed");
        assert_eq!(
            (s.reasoning.as_str(), s.content.as_str()),
            ("never closed", "")
        );
    }
}
