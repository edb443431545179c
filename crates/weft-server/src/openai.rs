//! Request bodies of the OpenAI API as clients send them, plus the common extensions of
//! vLLM and llama.cpp (`top_k`, `min_p`, `repetition_penalty`, `ignore_eos`). Unknown fields
//! are ignored, as vLLM does.

use serde::Deserialize;
use serde_json::Value;

/// `stop`: one string or a list.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by chat and legacy completions.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct SamplingFields {
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub n: Option<usize>,
    pub stop: Option<StopSpec>,
    pub max_tokens: Option<usize>,
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub response_format: Option<Value>,
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<usize>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    /// Extra template variables (vLLM's extension), e.g. `enable_thinking`.
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    /// Image processor settings for this request (vLLM's extension): `min_pixels`,
    /// `max_pixels`.
    pub mm_processor_kwargs: Option<serde_json::Map<String, Value>>,
}

/// `prompt` of a legacy completion: text, texts, token ids or lists of token ids.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: PromptSpec,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Legacy format: how many top alternatives per token (0 = only the chosen one).
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub echo: bool,
    pub best_of: Option<usize>,
    pub suffix: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Value>>,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    #[serde(default = "yes")]
    pub add_generation_prompt: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug, Clone)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}
