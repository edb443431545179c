//! RGB8 to channels-first f32 with transformers' rescale (x / 255) and normalize
//! ((x - mean) / std), rounded as each backend rounds, so values agree to the last bit.
//!
//! - torchvision backend (`TorchvisionBackend.rescale_and_normalize`): with both steps on, it
//!   fuses them, folding the rescale into the statistics in f32 (`mean * (1 / factor)`), then
//!   computes `(x - mean') / std'` in f32;
//! - PIL backend (`image_transforms.rescale` then `normalize`): `x * factor` in f64 rounded to
//!   f32, then `(x - mean) / std` in f32.

use crate::rgb::RgbImage;

/// Which transformers image-processor backend to reproduce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The torchvision-based processors (`Qwen2VLImageProcessor`, `Gemma3ImageProcessor`):
    /// what `AutoImageProcessor` returns in transformers 5 whenever torchvision is installed.
    #[default]
    Torchvision,
    /// The PIL/numpy processors (`Qwen2VLImageProcessorPil`, `Gemma3ImageProcessorPil`):
    /// what `AutoImageProcessor` falls back to without torchvision, or gives for
    /// `backend="pil"`, and what transformers 4's default "slow" processors computed.
    Pil,
}

impl Backend {
    /// The resampling arithmetic this backend's `resize` uses.
    pub fn resampler(self) -> crate::resize::Resampler {
        match self {
            Backend::Torchvision => crate::resize::Resampler::Torchvision,
            Backend::Pil => crate::resize::Resampler::Pillow,
        }
    }
}

/// The rescale and normalize settings of a processor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Normalization {
    /// `image` as `[3, height, width]` f32 values, computed as `backend` does.
    pub fn to_chw(&self, image: &RgbImage, backend: Backend) -> Vec<f32> {
        // A byte has 256 values: look each channel's results up rather than recompute them.
        let tables: [[f32; 256]; 3] =
            std::array::from_fn(|c| std::array::from_fn(|v| self.value(c, v as u8, backend)));
        let plane = image.width() as usize * image.height() as usize;
        let mut out = vec![0.0f32; 3 * plane];
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in image.as_raw().chunks_exact(3).enumerate() {
            r[i] = tables[0][usize::from(px[0])];
            g[i] = tables[1][usize::from(px[1])];
            b[i] = tables[2][usize::from(px[2])];
        }
        out
    }

    /// The value of pixel byte `v` in channel `c`. Mean and std are f32 in both backends
    /// (`torch.tensor(list)`, `np.array(list, dtype=float32)`).
    fn value(&self, c: usize, v: u8, backend: Backend) -> f32 {
        let mean = self.mean[c] as f32;
        let std = self.std[c] as f32;
        let factor = self.rescale_factor;
        match (backend, self.do_rescale, self.do_normalize) {
            (Backend::Torchvision, true, true) => {
                // `torch.tensor(mean) * (1.0 / rescale_factor)`: an f32 tensor times a Python
                // float, which torch multiplies in f32.
                let inv = (1.0 / factor) as f32;
                (f32::from(v) - mean * inv) / (std * inv)
            }
            (_, false, true) => (f32::from(v) - mean) / std,
            (Backend::Torchvision, true, false) => f32::from(v) * factor as f32,
            (Backend::Pil, true, true) => ((f64::from(v) * factor) as f32 - mean) / std,
            (Backend::Pil, true, false) => (f64::from(v) * factor) as f32,
            (_, false, false) => f32::from(v),
        }
    }
}
