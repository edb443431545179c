//! Qwen2-VL / Qwen2.5-VL image input, as transformers' `Qwen2VLImageProcessor` makes it:
//! resize to a size of multiples of `patch_size * merge_size` near the original aspect ratio
//! (`smart_resize`), rescale and normalize, then cut into patches ordered so that each group
//! of `merge_size x merge_size` neighbouring patches is contiguous (the vision tower merges
//! them into one token), every patch repeated `temporal_patch_size` times (a still image is a
//! video of identical frames).

use crate::config::{Qwen2VlConfig, Qwen2VlVideoConfig};
use crate::error::PreprocessError;
use crate::normalize::Backend;
use crate::resize::resize;
use crate::rgb::RgbImage;

/// transformers refuses images more than this many times longer than wide (or the reverse).
const MAX_ASPECT_RATIO: f64 = 200.0;

/// transformers' `smart_resize`: the `(height, width)` an image is resized to.
///
/// Both become multiples of `factor`, their product lies in `[min_pixels, max_pixels]` where
/// possible, and the aspect ratio changes as little as that allows. Every step is Python's:
/// `round` rounds half to even, and the `floor`/`ceil` branches scale in f64 in the same order.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), PreprocessError> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(PreprocessError::Empty { width, height });
    }
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    if h.max(w) / h.min(w) > MAX_ASPECT_RATIO {
        return Err(PreprocessError::AspectRatio { width, height });
    }
    let factor64 = u64::from(factor);
    let mut h_bar = (h / f).round_ties_even() as u64 * factor64;
    let mut w_bar = (w / f).round_ties_even() as u64 * factor64;
    // Python divides the exact integer product; as an f64 it is exact below 2^53 pixels.
    let pixels = (u64::from(height) * u64::from(width)) as f64;
    // u128: two u32-sized sides cannot overflow it, whatever the limits.
    let area = |h: u64, w: u64| u128::from(h) * u128::from(w);
    if area(h_bar, w_bar) > u128::from(max_pixels) {
        let beta = (pixels / max_pixels as f64).sqrt();
        h_bar = factor64.max((h / beta / f).floor() as u64 * factor64);
        w_bar = factor64.max((w / beta / f).floor() as u64 * factor64);
    } else if area(h_bar, w_bar) < u128::from(min_pixels) {
        let beta = (min_pixels as f64 / pixels).sqrt();
        h_bar = ((h * beta / f).ceil() as u64).saturating_mul(factor64);
        w_bar = ((w * beta / f).ceil() as u64).saturating_mul(factor64);
    }
    match (u32::try_from(h_bar), u32::try_from(w_bar)) {
        (Ok(h), Ok(w)) => Ok((h, w)),
        _ => Err(PreprocessError::Overflow {
            width: w_bar,
            height: h_bar,
        }),
    }
}

/// One image's model input.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2VlPixels {
    /// `[grid_t * grid_h * grid_w, patch_dim]`, row-major: transformers' `pixel_values`.
    pub pixel_values: Vec<f32>,
    /// `[grid_t, grid_h, grid_w]`: transformers' `image_grid_thw` (grid_t is 1 for an image).
    pub grid_thw: [u32; 3],
    /// `3 * temporal_patch_size * patch_size * patch_size` values per patch.
    pub patch_dim: usize,
    /// Patches merged into one token, per side.
    pub merge_size: u32,
}

impl Qwen2VlPixels {
    /// Number of patches (rows of `pixel_values`).
    pub fn num_patches(&self) -> usize {
        self.grid_thw.iter().map(|&g| g as usize).product()
    }

    /// Number of image tokens the language model sees: one per merged group of patches.
    pub fn num_tokens(&self) -> usize {
        self.num_patches() / (self.merge_size as usize * self.merge_size as usize)
    }
}

/// `Qwen2VLImageProcessor` (or `Qwen2VLImageProcessorPil`, by `backend`).
#[derive(Clone, Debug, Default)]
pub struct Qwen2VlProcessor {
    pub config: Qwen2VlConfig,
    pub backend: Backend,
}

impl Qwen2VlProcessor {
    pub fn new(config: Qwen2VlConfig, backend: Backend) -> Self {
        Self { config, backend }
    }

    /// The `(height, width)` an image of this size is processed at.
    pub fn target_size(&self, height: u32, width: u32) -> Result<(u32, u32), PreprocessError> {
        let factor = self.factor();
        if self.config.do_resize {
            return smart_resize(
                height,
                width,
                factor,
                self.config.min_pixels,
                self.config.max_pixels,
            );
        }
        if height == 0 || width == 0 {
            return Err(PreprocessError::Empty { width, height });
        }
        if !height.is_multiple_of(factor) || !width.is_multiple_of(factor) {
            return Err(PreprocessError::NotDivisible {
                width,
                height,
                factor,
            });
        }
        Ok((height, width))
    }

    pub fn preprocess(&self, image: &RgbImage) -> Result<Qwen2VlPixels, PreprocessError> {
        let (height, width) = self.target_size(image.height(), image.width())?;
        let resized;
        let image = if (height, width) == (image.height(), image.width()) {
            image
        } else {
            resized = resize(
                image,
                width,
                height,
                self.config.resample,
                self.backend.resampler(),
            );
            &resized
        };
        let chw = self.config.normalization.to_chw(image, self.backend);
        let frames = vec![chw.as_slice(); self.config.temporal_patch_size as usize];
        Ok(patchify(&self.config, &frames, height, width))
    }

    fn factor(&self) -> u32 {
        self.config.patch_size * self.config.merge_size
    }
}

/// transformers' reshape/permute: `temporal_patch_size` frames `[C, H, W]` viewed as
/// `[T, C, gh/m, m, p, gw/m, m, p]`, permuted to `[gh/m, gw/m, m, m, C, T, p, p]` and
/// flattened to `[gh * gw, C * T * p * p]` (an image is its one frame `T` times).
fn patchify(config: &Qwen2VlConfig, frames: &[&[f32]], height: u32, width: u32) -> Qwen2VlPixels {
    let p = config.patch_size as usize;
    let m = config.merge_size as usize;
    debug_assert_eq!(frames.len(), config.temporal_patch_size as usize);
    let (h, w) = (height as usize, width as usize);
    let (grid_h, grid_w) = (h / p, w / p);
    let patch_dim = 3 * frames.len() * p * p;
    let mut out = Vec::with_capacity(grid_h * grid_w * patch_dim);
    for block_y in 0..grid_h / m {
        for block_x in 0..grid_w / m {
            for my in 0..m {
                for mx in 0..m {
                    let (y0, x0) = ((block_y * m + my) * p, (block_x * m + mx) * p);
                    for c in 0..3 {
                        for chw in frames {
                            let plane = &chw[c * h * w..][..h * w];
                            for py in 0..p {
                                out.extend_from_slice(&plane[(y0 + py) * w + x0..][..p]);
                            }
                        }
                    }
                }
            }
        }
    }
    Qwen2VlPixels {
        pixel_values: out,
        grid_thw: [1, grid_h as u32, grid_w as u32],
        patch_dim,
        merge_size: config.merge_size,
    }
}

/// `Qwen2VLVideoProcessor` with frame sampling and the total-pixel budget on: which frames
/// of a video are read, the size they are resized to, and their temporal patches.
#[derive(Clone, Debug, Default)]
pub struct Qwen2VlVideoProcessor {
    pub config: Qwen2VlVideoConfig,
    pub backend: Backend,
}

impl Qwen2VlVideoProcessor {
    pub fn new(config: Qwen2VlVideoConfig, backend: Backend) -> Self {
        Self { config, backend }
    }

    /// transformers' `sample_frames` at `config.fps` for a video of `total` frames at
    /// `video_fps`: a multiple of `temporal_patch_size` frames (between `min_frames` and
    /// `max_frames` where the video has them) at `arange(0, total, total / n)` truncated,
    /// computed as torch does (f64 steps rounded to f32). A video shorter than one temporal
    /// patch keeps all its frames (transformers fails on it).
    pub fn sample_indices(&self, total: usize, video_fps: f64) -> Vec<usize> {
        let c = &self.config;
        let t = c.frame.temporal_patch_size as usize;
        let max_frames = (c.max_frames.min(total) / t * t) as f64;
        let wanted = total as f64 / video_fps * c.fps;
        let n = wanted
            .max(c.min_frames as f64)
            .min(max_frames)
            .min(total as f64);
        let n = ((n / t as f64).floor() as usize) * t;
        if n == 0 {
            return (0..total).collect();
        }
        let step = total as f64 / n as f64;
        let len = (total as f64 / step).ceil() as usize;
        (0..len)
            .map(|i| ((i as f64 * step) as f32) as usize)
            .map(|i| i.min(total - 1))
            .collect()
    }

    /// The `(height, width)` every one of `frames` sampled frames of a `height` x `width`
    /// video is resized to: `smart_resize` under the per-frame bound, lowered so that the
    /// whole video stays within 90% of `max_video_tokens` (but not below 1.05 times the
    /// fewest pixels).
    pub fn frame_size(
        &self,
        height: u32,
        width: u32,
        frames: usize,
    ) -> Result<(u32, u32), PreprocessError> {
        let c = &self.config.frame;
        let factor = c.patch_size * c.merge_size;
        let total_pixels =
            (self.config.max_video_tokens as f64 * f64::from(factor * factor) * 0.9) as u64;
        let per_frame = total_pixels * u64::from(c.temporal_patch_size) / frames.max(1) as u64;
        let max_pixels = c
            .max_pixels
            .min(per_frame)
            .max((c.min_pixels as f64 * 1.05) as u64);
        smart_resize(height, width, factor, c.min_pixels, max_pixels)
    }

    /// One sampled frame resized to `(height, width)` (from [`Self::frame_size`]).
    pub fn resize_frame(&self, frame: &RgbImage, height: u32, width: u32) -> RgbImage {
        if (frame.height(), frame.width()) == (height, width) {
            return frame.clone();
        }
        resize(
            frame,
            width,
            height,
            self.config.frame.resample,
            self.backend.resampler(),
        )
    }

    /// The tower input of one temporal patch: `frames` (resized, all the same size, at most
    /// `temporal_patch_size` consecutive ones; the last is repeated to fill the patch, as
    /// transformers pads a video) normalized and cut into patches of grid `[1, h, w]`.
    pub fn patch(&self, frames: &[RgbImage]) -> Qwen2VlPixels {
        let c = &self.config.frame;
        let first = frames.first().expect("a temporal patch has frames");
        let normalized: Vec<Vec<f32>> = frames
            .iter()
            .map(|f| c.normalization.to_chw(f, self.backend))
            .collect();
        let last = normalized.last().expect("not empty");
        let planes: Vec<&[f32]> = (0..c.temporal_patch_size as usize)
            .map(|i| normalized.get(i).unwrap_or(last).as_slice())
            .collect();
        patchify(c, &planes, first.height(), first.width())
    }
}
