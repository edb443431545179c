//! Turns OpenAI request fields into engine parameters, rejecting values out of the ranges
//! OpenAI documents (400 with the parameter's name).

use weft_engine::generation::{GenerateParams, OutputOptions};
use weft_engine::sampler::SamplingParams;

use crate::error::ApiError;
use crate::limits::Limits;
use crate::openai::SamplingFields;
use crate::state::PromptContext;

/// Most choices per request (`n`), as vLLM's default limit.
pub const MAX_N: usize = 128;
/// Recent tokens the penalties look at (llama.cpp server's default).
const PENALTY_LAST_N: usize = 64;

/// What one request asks of each of its choices.
#[derive(Clone, Debug)]
pub struct ChoiceParams {
    pub params: GenerateParams,
    pub options: OutputOptions,
    pub n: usize,
}

impl ChoiceParams {
    /// The parameters of choice `index`: with a seed, each choice gets its own (seed +
    /// index) so that `n` choices differ but the request stays reproducible.
    pub fn for_choice(&self, index: usize) -> GenerateParams {
        let mut p = self.params.clone();
        p.sampling.seed = p.sampling.seed.map(|s| s.wrapping_add(index as u64));
        p
    }
}

fn range(name: &str, v: Option<f32>, lo: f32, hi: f32, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x),
        Some(x) => Err(ApiError::invalid(
            name,
            format!("{name} must be between {lo} and {hi}, got {x}"),
        )),
    }
}

/// Validates the shared fields. `max_tokens` is the value the request gave (chat takes it
/// from `max_completion_tokens` too); `prompt_len` is the prompt's token count, checked
/// with it against the model's context.
pub fn choice_params(
    f: &SamplingFields,
    max_tokens: Option<usize>,
    logprobs: Option<usize>,
    prompt_len: usize,
    ctx: &PromptContext,
    limits: &Limits,
) -> Result<ChoiceParams, ApiError> {
    let max_model_len = ctx.max_model_len();
    let temperature = range("temperature", f.temperature, 0.0, 2.0, 1.0)?;
    let top_p = range("top_p", f.top_p, 0.0, 1.0, 1.0)?;
    if top_p == 0.0 {
        return Err(ApiError::invalid("top_p", "top_p must be in (0, 1], got 0"));
    }
    let min_p = range("min_p", f.min_p, 0.0, 1.0, 0.0)?;
    let presence_penalty = range("presence_penalty", f.presence_penalty, -2.0, 2.0, 0.0)?;
    let frequency_penalty = range("frequency_penalty", f.frequency_penalty, -2.0, 2.0, 0.0)?;
    let repetition_penalty = range("repetition_penalty", f.repetition_penalty, 0.01, 10.0, 1.0)?;
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1 (off) or positive, got {k}"),
            ))
        }
    };
    let n = f.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    if let Some(top) = logprobs {
        limits.check_logprobs(top)?;
    }
    let room = max_model_len.saturating_sub(prompt_len);
    if room == 0 {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, your \
                 request has {prompt_len} input tokens. Please reduce the length of the input."
            ),
        ));
    }
    let max_tokens = match max_tokens {
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1, got 0",
            ))
        }
        Some(m) if m > room => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "This model's maximum context length is {max_model_len} tokens. However, you \
                     requested {} tokens ({prompt_len} in the input, {m} in the completion). \
                     Please reduce the length of the input or the completion.",
                    prompt_len + m
                ),
            ))
        }
        Some(m) => m,
        None => room,
    };
    let stop = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    limits.check_stop(&stop)?;
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    let logit_bias = logit_bias(f, ctx.model.tokenizer.vocab_size(), limits)?;
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        penalty_last_n: PENALTY_LAST_N,
        seed: f.seed.map(|s| s as u64),
        logit_bias,
    };
    sampling
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(ChoiceParams {
        params: GenerateParams {
            sampling,
            max_tokens,
            stop,
        },
        options: OutputOptions {
            ignore_eos: f.ignore_eos,
            logprobs,
        },
        n,
    })
}

/// OpenAI's `logit_bias`: token ids (as strings) to a bias from -100 to 100.
fn logit_bias(
    f: &SamplingFields,
    vocab_size: usize,
    limits: &Limits,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = &f.logit_bias else {
        return Ok(Vec::new());
    };
    limits.check_logit_bias(map.len())?;
    map.iter()
        .map(|(token, &bias)| {
            let id = token
                .parse::<u32>()
                .ok()
                .filter(|&id| (id as usize) < vocab_size)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "logit_bias",
                        format!(
                            "logit_bias keys must be token ids below {vocab_size}, got `{token}`"
                        ),
                    )
                })?;
            if !(-100.0..=100.0).contains(&bias) {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("logit_bias values must be from -100 to 100, got {bias}"),
                ));
            }
            Ok((id, bias))
        })
        .collect()
}
