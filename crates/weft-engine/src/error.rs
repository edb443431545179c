use weft_models::batch::BatchError;

use crate::sampler::SamplingError;

#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    #[error("the prompt has {tokens} tokens but the context holds {ctx_size} (raise --ctx-size or shorten the prompt)")]
    ContextOverflow { tokens: usize, ctx_size: usize },
    #[error("token id {token} is outside the vocabulary ({vocab_size} tokens)")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error("the request queue is full ({limit} requests in flight); retry later")]
    QueueFull { limit: usize },
    #[error("{count} sequences were asked for at once but the queue holds at most {limit}")]
    TooManyRequests { count: usize, limit: usize },
    #[error("the engine has stopped")]
    Stopped,
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid media in the prompt: {0}")]
    InvalidMedia(String),
    #[error("invalid sampling parameters: {0}")]
    Sampling(SamplingError),
    #[error("the engine built a batch the model refuses: {0}")]
    Batch(#[from] BatchError),
    #[error("perplexity needs at least {needed} tokens (2 x ctx {ctx}); the text has {have}")]
    TextTooShort {
        needed: usize,
        ctx: usize,
        have: usize,
    },
}
