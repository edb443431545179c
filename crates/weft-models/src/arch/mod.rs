//! Text architectures. Each is plain code over the kernels: configuration, weights, and a
//! `forward` over a flat batch and a paged KV cache.

pub mod config;
pub mod decoder;
pub mod hf;

pub use config::{Arch, DecoderConfig, LayerAttention};
pub use decoder::{Decoder, ForwardScratch};
