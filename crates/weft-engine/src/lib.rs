//! Request execution: sequences over a paged KV cache, sampling, stop conditions and
//! detokenization. The engine knows models only through `weft-models` and nothing of HTTP.

pub mod bench;
pub mod blocks;
pub mod constrained;
pub mod detokenizer;
pub mod engine;
pub mod generation;
pub mod kl_divergence;
pub mod logprobs;
pub mod media;
pub mod perplexity;
pub mod sampler;
pub mod scheduler;
pub mod session;
pub mod stop;

mod error;

pub use error::EngineError;
