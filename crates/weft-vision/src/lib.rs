//! Images in for weft: bounded decoding of PNG, JPEG, WebP and GIF to upright RGB (`image`,
//! with Pillow's conversions in `color`), resampling bit-exact with Pillow and with torch's
//! uint8 antialiased interpolation (`resize`), transformers' rescale/normalize (`normalize`),
//! and the two processors built from them: Qwen2-VL/Qwen2.5-VL's (`qwen2vl`) and Gemma 3's
//! SigLIP input (`siglip`), configured from `preprocessor_config.json` (`config`). Then the
//! towers: Qwen2.5-VL's (`qwen25vl_tower`), and `qwen25vl`, which turns a prompt's images
//! into the language model's input (expanded placeholders, tower rows, M-RoPE positions);
//! Gemma 3's (`gemma3_tower`, `gemma3vl`); and Qwen2.5-Omni's (`qwen25omni`: the Qwen2.5-VL
//! tower with weft-audio's audio tower, video and audio on one time axis). `vision::Vision`
//! is the one interface over them.
//!
//! "Equal to transformers" means equal to the processor class `AutoImageProcessor` returns:
//! in transformers 5 that is the torchvision backend whenever torchvision is installed
//! ([`Backend::Torchvision`], the default here) and the PIL backend otherwise
//! ([`Backend::Pil`]). The two resize differently (by a few levels per pixel); both are
//! reproduced exactly.

pub mod color;
pub mod config;
pub mod error;
pub mod gemma3_tower;
pub mod gemma3vl;
pub mod image;
pub mod media_kind;
pub mod mmproj;
pub mod normalize;
pub mod qwen25omni;
pub mod qwen25vl;
pub mod qwen25vl_tower;
pub mod qwen2vl;
pub mod resize;
pub mod rgb;
pub mod siglip;
pub mod tower;
pub mod video;
pub mod vision;

pub use color::Alpha;
pub use config::{PreprocessorConfig, Qwen2VlConfig, Qwen2VlVideoConfig, SiglipConfig};
pub use error::{ConfigError, DecodeError, PreprocessError};
pub use image::{decode, DecodeOptions};
pub use media_kind::MediaKind;
pub use normalize::{Backend, Normalization};
pub use qwen2vl::{smart_resize, Qwen2VlPixels, Qwen2VlProcessor, Qwen2VlVideoProcessor};
pub use resize::{resize, Filter, Resampler};
pub use rgb::RgbImage;
pub use siglip::{SiglipPixels, SiglipProcessor};
pub use vision::{
    PreparedPrompt, ProcessorKwargs, TowerInput, TowerPixels, Video, VideoPlan, Vision, VisionError,
};
