//! Antialiased separable resampling of 8-bit RGB, bit-exact with the two implementations
//! transformers' image processors call:
//!
//! - Pillow's `Image.resize` (`ImagingResample`, libImaging/Resample.c), used by the `*Pil`
//!   processors; and
//! - torch's uint8 antialiased `interpolate` (aten/src/ATen/native/cpu/UpSampleKernel.cpp and
//!   UpSampleKernelAVXAntialias.h), used by the torchvision processors, which transformers 5
//!   picks by default whenever torchvision is installed.
//!
//! Both convolve each axis with the filter stretched by the downscale factor (PIL's support
//! and centring), normalize the weights in f64, turn them into fixed point and keep an 8-bit
//! image between the two passes. They differ in three details, each of which moves pixels by
//! up to a few levels (7 on the golden images):
//!
//! - the fixed-point precision: Pillow scales every weight by 2^22 into an `i32`; torch scales
//!   one axis's weights by the largest 2^p (p < 22) that keeps its largest weight an `i16`;
//! - the bicubic polynomial's outer piece, evaluated in a different order (`kernel.rs`);
//! - the pass order: torch always runs the horizontal pass first, as Pillow did before 13.0;
//!   Pillow 13 runs the vertical one first when the height shrinks more than twice as much as
//!   the width does.

mod kernel;
mod pass;

use crate::rgb::RgbImage;
use kernel::Taps;

/// The resampling filter (transformers' `resample`: 2 is bilinear, 3 bicubic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// The triangle filter (support 1).
    Bilinear,
    /// Keys' cubic convolution with a = -0.5 (support 2).
    Bicubic,
}

impl Filter {
    /// From PIL's `Resampling` number, as `preprocessor_config.json` stores it.
    pub fn from_pil(code: u32) -> Option<Self> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }
}

/// Whose arithmetic to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resampler {
    /// torch's uint8 antialiased interpolation (torchvision `resize`, `antialias=True`).
    Torchvision,
    /// Pillow 13's `Image.resize`.
    Pillow,
    /// Pillow before 13.0, which always resampled horizontally first.
    PillowBefore13,
}

/// `image` resized to `width` x `height` with `filter`, computed as `resampler` computes it.
///
/// An unchanged size returns a copy, and an unchanged axis is not resampled, as in both
/// references. Panics if `width` or `height` is 0 (both references refuse that too).
pub fn resize(
    image: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    resampler: Resampler,
) -> RgbImage {
    assert!(width > 0 && height > 0, "resize to {width}x{height}");
    let (in_w, in_h) = (image.width(), image.height());
    let need_horizontal = width != in_w;
    let need_vertical = height != in_h;
    if !need_horizontal && !need_vertical {
        return image.clone();
    }
    let horiz = need_horizontal.then(|| Taps::new(in_w, width, filter, resampler));
    let vert = need_vertical.then(|| Taps::new(in_h, height, filter, resampler));

    if vertical_first(resampler, (in_w, in_h), (width, height)) {
        let mut out = image.clone();
        if let Some(vert) = &vert {
            out = pass::vertical(&out, vert);
        }
        if let Some(horiz) = &horiz {
            out = pass::horizontal(&out, horiz, 0..out.height());
        }
        return out;
    }
    match (&horiz, &vert) {
        (Some(horiz), Some(vert)) => {
            // Only the rows the vertical pass will read are resampled horizontally (Pillow's
            // `ybox_first`..`ybox_last`); the result is the same, the work smaller.
            let rows = vert.source_span();
            let narrow = pass::horizontal(image, horiz, rows.clone());
            pass::vertical(&narrow, &vert.shifted(rows.start))
        }
        (Some(horiz), None) => pass::horizontal(image, horiz, 0..in_h),
        (None, Some(vert)) => pass::vertical(image, vert),
        (None, None) => unreachable!("handled above"),
    }
}

/// Pillow 13's rule (`ImagingResampleInner`): the vertical pass goes first when the height
/// shrinks, and by more than twice as many pixels as the width does.
fn vertical_first(resampler: Resampler, (in_w, in_h): (u32, u32), (w, h): (u32, u32)) -> bool {
    let dy = i64::from(in_h) - i64::from(h);
    let dx = i64::from(in_w) - i64::from(w);
    resampler == Resampler::Pillow && dy > 0 && dy > dx * 2
}
