use crate::sampler::SamplingError;

#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    #[error("the prompt has {tokens} tokens but the context holds {ctx_size} (raise --ctx-size or shorten the prompt)")]
    ContextOverflow { tokens: usize, ctx_size: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid sampling parameters: {0}")]
    Sampling(SamplingError),
    #[error("perplexity needs at least {needed} tokens (2 x ctx {ctx}); the text has {have}")]
    TextTooShort {
        needed: usize,
        ctx: usize,
        have: usize,
    },
}
