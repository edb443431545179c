//! Model architectures, GGUF loading, tokenizers and chat templates. Models are plain code over
//! `weft-kernels`; they know nothing of scheduling or serving.

pub mod arch;
pub mod batch;
pub mod chat_template;
pub mod gguf;
pub mod kv_cache;
pub mod media;
pub mod text_model;
pub mod tokenizer;
pub mod weights;

mod error;

pub use error::ModelError;
pub use text_model::TextModel;
