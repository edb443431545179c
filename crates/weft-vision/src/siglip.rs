//! Gemma 3's SigLIP image input, as transformers' `Gemma3ImageProcessor` makes it (without
//! pan-and-scan): resize to the fixed size, rescale, normalize, channels first.

use crate::config::SiglipConfig;
use crate::error::PreprocessError;
use crate::normalize::Backend;
use crate::resize::resize;
use crate::rgb::RgbImage;

/// One image's model input: `[3, height, width]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct SiglipPixels {
    pub pixel_values: Vec<f32>,
    pub height: u32,
    pub width: u32,
}

/// `Gemma3ImageProcessor` (or `Gemma3ImageProcessorPil`, by `backend`).
#[derive(Clone, Debug, Default)]
pub struct SiglipProcessor {
    pub config: SiglipConfig,
    pub backend: Backend,
}

impl SiglipProcessor {
    pub fn new(config: SiglipConfig, backend: Backend) -> Self {
        Self { config, backend }
    }

    pub fn preprocess(&self, image: &RgbImage) -> Result<SiglipPixels, PreprocessError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(PreprocessError::Empty {
                width: image.width(),
                height: image.height(),
            });
        }
        let resized;
        let image = if self.config.do_resize {
            resized = resize(
                image,
                self.config.width,
                self.config.height,
                self.config.resample,
                self.backend.resampler(),
            );
            &resized
        } else {
            image
        };
        Ok(SiglipPixels {
            pixel_values: self.config.normalization.to_chw(image, self.backend),
            height: image.height(),
            width: image.width(),
        })
    }
}
