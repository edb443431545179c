//! Speech in for weft: audio decoding and resampling (`audio`), Whisper's log-mel features
//! (`mel`), Whisper weights from CTranslate2 or safetensors files (`model`), the audio encoder
//! (`encoder`, usable alone: Qwen2.5-Omni's `audio_tower` runs it on 2-second chunks), the text decoder with its
//! KV caches (`decoder`), greedy/beam/sampled decoding with Whisper's token rules (`search`),
//! and long-form transcription with seeking and fallbacks (`transcribe`), rendered as
//! text/JSON/SRT/VTT (`format`).

pub mod audio;
pub mod audio_tower;
pub mod ct2;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod format;
pub mod languages;
mod load_ct2;
mod load_hf;
pub mod mel;
pub mod model;
pub mod search;
pub mod tensors;
pub mod transcribe;

pub use error::{AudioError, ModelError, TranscribeError};
pub use model::Whisper;
pub use transcribe::{Segment, Task, TranscribeOptions, Transcriber, Transcript};
