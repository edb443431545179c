//! `preprocessor_config.json`, read as transformers reads it: every key optional (a missing or
//! `null` key takes the processor class's default), unknown keys ignored.

use crate::error::ConfigError;
use crate::normalize::Normalization;
use crate::resize::Filter;
use serde::Deserialize;
use std::path::Path;

/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD` (Qwen2-VL's defaults).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// transformers' `IMAGENET_STANDARD_MEAN` / `_STD` (Gemma 3's defaults).
pub const IMAGENET_STANDARD_MEAN: [f64; 3] = [0.5; 3];
pub const IMAGENET_STANDARD_STD: [f64; 3] = [0.5; 3];
/// `1 / 255` as Python writes it, the default `rescale_factor`.
pub const DEFAULT_RESCALE_FACTOR: f64 = 1.0 / 255.0;

/// The keys of a `preprocessor_config.json` that the processors here use, as written.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PreprocessorConfig {
    pub image_processor_type: Option<String>,
    pub do_resize: Option<bool>,
    pub resample: Option<u32>,
    pub do_rescale: Option<bool>,
    pub rescale_factor: Option<f64>,
    pub do_normalize: Option<bool>,
    pub image_mean: Option<PerChannel>,
    pub image_std: Option<PerChannel>,
    pub size: Option<Size>,
    /// Qwen2-VL's older spelling of `size.shortest_edge`; it wins over `size` when present.
    pub min_pixels: Option<u64>,
    /// Qwen2-VL's older spelling of `size.longest_edge`; it wins over `size` when present.
    pub max_pixels: Option<u64>,
    pub patch_size: Option<u32>,
    pub temporal_patch_size: Option<u32>,
    pub merge_size: Option<u32>,
    pub do_pan_and_scan: Option<bool>,
    /// Video processors: frames sampled per second of video.
    pub fps: Option<f64>,
    pub min_frames: Option<usize>,
    pub max_frames: Option<usize>,
    /// Video processors: the context assumed by the total-pixel budget of a video.
    pub max_video_tokens: Option<u64>,
}

/// A mean or std: one value for every channel, or one per channel.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
pub enum PerChannel {
    One(f64),
    Three([f64; 3]),
}

impl PerChannel {
    fn values(self) -> [f64; 3] {
        match self {
            PerChannel::One(v) => [v; 3],
            PerChannel::Three(v) => v,
        }
    }
}

/// The `size` dict, in any of the shapes the two processors use.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct Size {
    pub height: Option<u32>,
    pub width: Option<u32>,
    pub shortest_edge: Option<u64>,
    pub longest_edge: Option<u64>,
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
}

impl PreprocessorConfig {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Ok(serde_json::from_str(text)?)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// The resampling filter, `default` if unset.
    fn filter(&self, default: Filter) -> Result<Filter, ConfigError> {
        match self.resample {
            None => Ok(default),
            Some(code) => Filter::from_pil(code).ok_or_else(|| {
                ConfigError::Unsupported(format!(
                    "resample = {code} (only 2, bilinear, and 3, bicubic, are implemented)"
                ))
            }),
        }
    }

    /// Rescale and normalize settings over the class defaults `mean` and `std`.
    fn normalization(&self, mean: [f64; 3], std: [f64; 3]) -> Result<Normalization, ConfigError> {
        let n = Normalization {
            do_rescale: self.do_rescale.unwrap_or(true),
            rescale_factor: self.rescale_factor.unwrap_or(DEFAULT_RESCALE_FACTOR),
            do_normalize: self.do_normalize.unwrap_or(true),
            mean: self.image_mean.map_or(mean, PerChannel::values),
            std: self.image_std.map_or(std, PerChannel::values),
        };
        if !n.rescale_factor.is_finite() || n.rescale_factor == 0.0 {
            return Err(ConfigError::Invalid(format!(
                "rescale_factor = {}",
                n.rescale_factor
            )));
        }
        if n.mean.iter().chain(&n.std).any(|v| !v.is_finite()) || n.std.contains(&0.0) {
            return Err(ConfigError::Invalid(format!(
                "image_mean {:?} / image_std {:?}",
                n.mean, n.std
            )));
        }
        Ok(n)
    }
}

/// Settings of `Qwen2VLImageProcessor` (Qwen2-VL, Qwen2.5-VL), transformers' defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2VlConfig {
    pub do_resize: bool,
    pub resample: Filter,
    /// Fewest pixels after resizing (`size.shortest_edge`, formerly `min_pixels`).
    pub min_pixels: u64,
    /// Most pixels after resizing (`size.longest_edge`, formerly `max_pixels`).
    pub max_pixels: u64,
    pub normalization: Normalization,
    pub patch_size: u32,
    pub temporal_patch_size: u32,
    pub merge_size: u32,
}

impl Default for Qwen2VlConfig {
    fn default() -> Self {
        Self::from_preprocessor_config(&PreprocessorConfig::default())
            .expect("the defaults are valid")
    }
}

impl Qwen2VlConfig {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::from_preprocessor_config(&PreprocessorConfig::from_json(text)?)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_preprocessor_config(&PreprocessorConfig::from_file(path)?)
    }

    /// As `Qwen2VLImageProcessor.__init__` resolves it: `size` (default 56*56 .. 28*28*1280
    /// pixels), then `min_pixels` / `max_pixels` over it.
    pub fn from_preprocessor_config(c: &PreprocessorConfig) -> Result<Self, ConfigError> {
        Self::with_default_pixels(c, 56 * 56, 28 * 28 * 1280)
    }

    /// [`Qwen2VlConfig::from_preprocessor_config`] where the class's default pixel bounds are
    /// `min_pixels ..= max_pixels`.
    fn with_default_pixels(
        c: &PreprocessorConfig,
        min_pixels: u64,
        max_pixels: u64,
    ) -> Result<Self, ConfigError> {
        let size = c.size.unwrap_or_default();
        let min_pixels = c
            .min_pixels
            .or(size.shortest_edge)
            .or(size.min_pixels)
            .unwrap_or(min_pixels);
        let max_pixels = c
            .max_pixels
            .or(size.longest_edge)
            .or(size.max_pixels)
            .unwrap_or(max_pixels);
        let config = Self {
            do_resize: c.do_resize.unwrap_or(true),
            resample: c.filter(Filter::Bicubic)?,
            min_pixels,
            max_pixels,
            normalization: c.normalization(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)?,
            patch_size: c.patch_size.unwrap_or(14),
            temporal_patch_size: c.temporal_patch_size.unwrap_or(2),
            merge_size: c.merge_size.unwrap_or(2),
        };
        if config.patch_size == 0 || config.temporal_patch_size == 0 || config.merge_size == 0 {
            return Err(ConfigError::Invalid(format!(
                "patch_size {}, temporal_patch_size {}, merge_size {}",
                config.patch_size, config.temporal_patch_size, config.merge_size
            )));
        }
        config.factor()?;
        if config.max_pixels == 0 {
            return Err(ConfigError::Invalid("max_pixels = 0".into()));
        }
        Ok(config)
    }

    /// The side lengths are multiples of this: `patch_size * merge_size`.
    pub fn factor(&self) -> Result<u32, ConfigError> {
        self.patch_size
            .checked_mul(self.merge_size)
            .ok_or_else(|| ConfigError::Invalid("patch_size * merge_size overflows".into()))
    }
}

/// Settings of `Qwen2VLVideoProcessor`, transformers' defaults filled in, with frames sampled
/// at `fps` and the total-pixel budget on (what transformers calls `do_sample_frames` and
/// `cap_pixels_per_frame`, and vLLM and qwen-vl-utils do by default).
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2VlVideoConfig {
    /// Per-frame resize and normalization (pixel bounds default to 128*28*28 .. 768*28*28).
    pub frame: Qwen2VlConfig,
    pub fps: f64,
    pub min_frames: usize,
    pub max_frames: usize,
    pub max_video_tokens: u64,
}

impl Default for Qwen2VlVideoConfig {
    fn default() -> Self {
        Self::from_preprocessor_config(&PreprocessorConfig::default())
            .expect("the defaults are valid")
    }
}

impl Qwen2VlVideoConfig {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::from_preprocessor_config(&PreprocessorConfig::from_json(text)?)
    }

    pub fn from_preprocessor_config(c: &PreprocessorConfig) -> Result<Self, ConfigError> {
        let config = Self {
            frame: Qwen2VlConfig::with_default_pixels(c, 128 * 28 * 28, 768 * 28 * 28)?,
            fps: c.fps.unwrap_or(2.0),
            min_frames: c.min_frames.unwrap_or(4),
            max_frames: c.max_frames.unwrap_or(768),
            max_video_tokens: c.max_video_tokens.unwrap_or(128_000),
        };
        if !(config.fps.is_finite() && config.fps > 0.0) || config.max_frames == 0 {
            return Err(ConfigError::Invalid(format!(
                "video fps {} / max_frames {}",
                config.fps, config.max_frames
            )));
        }
        Ok(config)
    }
}

/// Settings of `Gemma3ImageProcessor` (SigLIP input), transformers' defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct SiglipConfig {
    pub do_resize: bool,
    pub resample: Filter,
    /// The fixed output size (`size.height` x `size.width`; 224 x 224 by default, 896 x 896 in
    /// the Gemma 3 checkpoints' configs).
    pub height: u32,
    pub width: u32,
    pub normalization: Normalization,
}

impl Default for SiglipConfig {
    fn default() -> Self {
        Self::from_preprocessor_config(&PreprocessorConfig::default())
            .expect("the defaults are valid")
    }
}

impl SiglipConfig {
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::from_preprocessor_config(&PreprocessorConfig::from_json(text)?)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_preprocessor_config(&PreprocessorConfig::from_file(path)?)
    }

    pub fn from_preprocessor_config(c: &PreprocessorConfig) -> Result<Self, ConfigError> {
        // Pan-and-scan adds crops, and so images, per input: refusing it beats silently
        // giving the model something other than what transformers would.
        if c.do_pan_and_scan == Some(true) {
            return Err(ConfigError::Unsupported("do_pan_and_scan".into()));
        }
        let size = c.size.unwrap_or_default();
        let (height, width) = match (size.height, size.width) {
            (None, None) => (224, 224),
            (Some(h), Some(w)) if h > 0 && w > 0 => (h, w),
            (h, w) => {
                return Err(ConfigError::Invalid(format!(
                    "size needs a positive height and width, got {h:?} x {w:?}"
                )))
            }
        };
        Ok(Self {
            do_resize: c.do_resize.unwrap_or(true),
            resample: c.filter(Filter::Bilinear)?,
            height,
            width,
            normalization: c.normalization(IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD)?,
        })
    }
}
