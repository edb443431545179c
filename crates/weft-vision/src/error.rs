//! Errors of the vision crate. Bad input bytes (the caller's fault, an HTTP 400) are kept apart
//! from unusable preprocessor settings (the model directory's fault) and from images that a
//! processor cannot take.

/// Why image bytes could not become pixels.
#[derive(thiserror::Error, Debug)]
pub enum DecodeError {
    #[error("the input is empty (0 bytes)")]
    Empty,
    #[error("the input is not an image")]
    NotAnImage,
    #[error("unsupported image format: {0} (PNG, JPEG, WebP and GIF are)")]
    Unsupported(String),
    #[error("the image is {width}x{height} = {pixels} pixels; the limit is {limit}")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("the image is damaged or truncated: {0}")]
    Corrupt(String),
}

/// A `preprocessor_config.json` that cannot be used.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("preprocessor config is not valid JSON for this processor: {0}")]
    Json(#[from] serde_json::Error),
    #[error("preprocessor config: {0}")]
    Invalid(String),
    #[error("preprocessor config asks for {0}, which is not implemented")]
    Unsupported(String),
}

/// An image the processor cannot turn into model input.
#[derive(thiserror::Error, Debug, PartialEq)]
pub enum PreprocessError {
    #[error("the image has no pixels ({width}x{height})")]
    Empty { width: u32, height: u32 },
    #[error("the image's aspect ratio {width}x{height} exceeds 200")]
    AspectRatio { width: u32, height: u32 },
    #[error("the image's {width}x{height} is not a multiple of {factor} (and resizing is off)")]
    NotDivisible {
        width: u32,
        height: u32,
        factor: u32,
    },
    #[error("the resized image ({height}x{width}) would be too large")]
    Overflow { width: u64, height: u64 },
}
