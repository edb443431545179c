//! Errors of the audio crate: bad input (the caller's fault, an HTTP 400) is kept apart from
//! model files that cannot be used.

use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum AudioError {
    #[error("the input is empty (0 bytes)")]
    Empty,
    #[error("the input is not a supported audio file: {0}")]
    NotAudio(String),
    #[error("the audio stream is damaged or truncated: {0}")]
    Corrupt(String),
    #[error("the audio holds no samples")]
    NoSamples,
    #[error("the audio is {seconds:.1} s long; the limit is {limit:.0} s")]
    TooLong { seconds: f64, limit: f64 },
    #[error("resampling from {from} Hz failed: {msg}")]
    Resample { from: u32, msg: String },
}

#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a CTranslate2 model file: {msg}")]
    Ct2Format { path: PathBuf, msg: String },
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {got:?}, expected {want:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("tensor '{name}' has unsupported data type {dtype}")]
    DType { name: String, dtype: String },
    #[error("model config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] weft_models::tokenizer::TokenizerError),
}

/// Everything `Transcriber::transcribe` can fail with.
#[derive(thiserror::Error, Debug)]
pub enum TranscribeError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("unknown language '{0}'")]
    UnknownLanguage(String),
    #[error("this model is English-only: it cannot {0}")]
    EnglishOnly(&'static str),
    #[error("invalid option: {0}")]
    Option(String),
    #[error("the transcription was cancelled")]
    Cancelled,
}
