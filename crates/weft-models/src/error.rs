use std::path::PathBuf;

use crate::gguf::{GgufError, GgufFile};

/// Why a model could not be loaded.
#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: architecture '{arch}' is not supported (supported: {})", crate::arch::Arch::SUPPORTED.join(", "))]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("{path}: tensor '{tensor}' is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor '{tensor}' has shape {found}, expected {expected}")]
    TensorShape {
        path: PathBuf,
        tensor: String,
        found: String,
        expected: String,
    },
    #[error("{path}: tensor '{tensor}' has type {ty}, which cannot be used as a weight matrix")]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        ty: &'static str,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ModelError {
    pub(crate) fn invalid(file: &GgufFile, message: &str) -> ModelError {
        ModelError::Invalid {
            path: file.path().to_path_buf(),
            message: message.to_string(),
        }
    }
}
