//! What happens to one sequence's logits row: optional log-probabilities, a constraint mask,
//! sampling, end-of-generation and length checks, detokenization and stop strings. Shared
//! by `Session` (one sequence) and the batched `Engine`.

use weft_models::tokenizer::Tokenizer;

use crate::detokenizer::Detokenizer;
use crate::logprobs::{token_logprobs, TokenLogprobs};
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::EngineError;

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

/// Per-request options beyond sampling that the engine honours.
#[derive(Clone, Debug, Default)]
pub struct OutputOptions {
    /// Keep generating past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Report the chosen token's log-probability and this many top alternatives.
    pub logprobs: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token, stop string, or a constrained output that is complete.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    ContextFull,
    /// The caller cancelled (or went away).
    Cancelled,
}

/// Restricts which tokens may come next (constrained decoding).
pub trait TokenConstraint: Send {
    /// Sets the logits of tokens that may not come next to `-inf`.
    fn mask(&mut self, logits: &mut [f32]);
    /// Advances past `token` (one the mask allowed).
    fn accept(&mut self, token: u32);
    /// True when the output is complete and only end-of-generation may follow.
    fn is_complete(&self) -> bool;
}

/// The result of one step.
#[derive(Debug, Default)]
pub struct Step {
    /// The generated token, `None` when the step ended generation without one (an
    /// end-of-generation token, or `max_tokens` already reached).
    pub token: Option<u32>,
    /// Text that became final with this step (may be empty: held back by the detokenizer or
    /// a possible stop string).
    pub text: String,
    pub logprobs: Option<TokenLogprobs>,
    pub finish: Option<FinishReason>,
}

/// The output side of one sequence.
pub struct Generation {
    sampler: Sampler,
    detok: Detokenizer,
    stops: StopMatcher,
    max_tokens: usize,
    options: OutputOptions,
    constraint: Option<Box<dyn TokenConstraint>>,
    generated: usize,
    /// Copy of the unmodified logits row when log-probabilities are wanted.
    raw: Vec<f32>,
}

impl Generation {
    pub fn new(
        params: &GenerateParams,
        options: OutputOptions,
        constraint: Option<Box<dyn TokenConstraint>>,
    ) -> Result<Generation, EngineError> {
        let sampler = Sampler::try_new(params.sampling.clone()).map_err(EngineError::Sampling)?;
        Ok(Generation {
            sampler,
            detok: Detokenizer::default(),
            stops: StopMatcher::new(params.stop.clone()),
            max_tokens: params.max_tokens,
            options,
            constraint,
            generated: 0,
            raw: Vec::new(),
        })
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// The stop string that ended generation, if one did.
    pub fn matched_stop(&self) -> Option<&str> {
        self.stops.matched()
    }

    /// Picks the next token from `logits` (modified in place) given the sequence so far
    /// (`history`: prompt and generated tokens).
    pub fn step(&mut self, tokenizer: &Tokenizer, logits: &mut [f32], history: &[u32]) -> Step {
        if self.generated >= self.max_tokens {
            return self.finish(FinishReason::Length, None, None);
        }
        if self.constraint.as_ref().is_some_and(|c| c.is_complete()) {
            return self.finish(FinishReason::Stop, None, None);
        }
        // Log-probabilities describe the model's distribution, before penalties and masks.
        if self.options.logprobs.is_some() {
            self.raw.clear();
            self.raw.extend_from_slice(logits);
        }
        if let Some(c) = &mut self.constraint {
            c.mask(logits);
        }
        let token = self.sampler.sample(logits, history);
        let logprobs = self
            .options
            .logprobs
            .map(|top| token_logprobs(&self.raw, token, top));
        if tokenizer.is_eog(token) && !self.options.ignore_eos {
            return self.finish(FinishReason::Stop, None, logprobs);
        }
        if let Some(c) = &mut self.constraint {
            c.accept(token);
        }
        self.generated += 1;
        let piece = self.detok.push(tokenizer, token);
        let out = self.stops.push(&piece);
        if out.stopped {
            return Step {
                token: Some(token),
                text: out.emit,
                logprobs,
                finish: Some(FinishReason::Stop),
            };
        }
        if self.generated >= self.max_tokens {
            let mut step = self.finish(FinishReason::Length, Some(token), logprobs);
            step.text.insert_str(0, &out.emit);
            return step;
        }
        Step {
            token: Some(token),
            text: out.emit,
            logprobs,
            finish: None,
        }
    }

    /// Ends generation for `reason` (also used by callers for cancellation and a full
    /// context), flushing text still held back.
    pub fn finish(
        &mut self,
        reason: FinishReason,
        token: Option<u32>,
        logprobs: Option<TokenLogprobs>,
    ) -> Step {
        let mut text = String::new();
        if !self.stops.is_stopped() {
            let out = self.stops.push(&self.detok.finish());
            text = out.emit;
            if !out.stopped {
                text.push_str(&self.stops.finish());
            }
        }
        Step {
            token,
            text,
            logprobs,
            finish: Some(reason),
        }
    }
}
