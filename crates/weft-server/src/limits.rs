//! Bounds on what one request may ask of the server, so that no request, however written,
//! costs more than a bounded amount of memory and CPU. Each is a flag of `weft serve`
//! (vLLM's name where vLLM has the limit) and each refusal is a 400 naming the field; a limit
//! that is about load (the queue, the preparation pool) answers 503 instead.

use serde_json::Value;

use crate::error::ApiError;
use crate::media::MediaLimits;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Most messages in one chat request.
    pub max_messages: usize,
    /// Most stop strings per request (OpenAI allows 4). Each is matched against the
    /// generated text on the engine thread after every token.
    pub max_stop_strings: usize,
    /// Longest stop string, in bytes.
    pub max_stop_bytes: usize,
    /// Most `logit_bias` entries per request.
    pub max_logit_bias: usize,
    /// Most alternatives per token in log-probabilities (vLLM's `--max-logprobs`).
    pub max_logprobs: usize,
    /// Most tools per chat request.
    pub max_tools: usize,
    /// Requests being tokenized, rendered or compiled at once (each on a blocking thread).
    pub max_concurrent_preparations: usize,
    /// Requests that may wait for a preparation slot; beyond, 503.
    pub max_waiting_preparations: usize,
    /// Images: how many, how large, from where.
    pub media: MediaLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_messages: 2048,
            max_stop_strings: 16,
            max_stop_bytes: 256,
            max_logit_bias: 1024,
            max_logprobs: 20,
            max_tools: 128,
            max_concurrent_preparations: 2,
            max_waiting_preparations: 64,
            media: MediaLimits::default(),
        }
    }
}

impl Limits {
    pub fn check_messages(&self, messages: &[Value]) -> Result<(), ApiError> {
        at_most("messages", "messages", messages.len(), self.max_messages)
    }

    pub fn check_tools(&self, tools: Option<&[Value]>) -> Result<(), ApiError> {
        at_most(
            "tools",
            "tools",
            tools.map_or(0, <[Value]>::len),
            self.max_tools,
        )
    }

    pub fn check_stop(&self, stop: &[String]) -> Result<(), ApiError> {
        at_most("stop", "stop strings", stop.len(), self.max_stop_strings)?;
        match stop.iter().find(|s| s.len() > self.max_stop_bytes) {
            Some(long) => Err(ApiError::invalid(
                "stop",
                format!(
                    "stop strings may be at most {} bytes long, got one of {}",
                    self.max_stop_bytes,
                    long.len()
                ),
            )),
            None => Ok(()),
        }
    }

    pub fn check_logit_bias(&self, entries: usize) -> Result<(), ApiError> {
        at_most(
            "logit_bias",
            "logit_bias entries",
            entries,
            self.max_logit_bias,
        )
    }

    pub fn check_logprobs(&self, top: usize) -> Result<(), ApiError> {
        at_most(
            "top_logprobs",
            "log-probabilities per token",
            top,
            self.max_logprobs,
        )
    }
}

fn at_most(param: &str, what: &str, count: usize, limit: usize) -> Result<(), ApiError> {
    if count > limit {
        return Err(ApiError::invalid(
            param,
            format!("at most {limit} {what} per request, got {count}"),
        ));
    }
    Ok(())
}
