//! Decoded pixels of any layout to 8-bit RGB, the way Pillow converts them, so that a processor
//! sees the bytes transformers' would.
//!
//! Two things differ from the `image` crate's own conversions:
//! - Alpha. transformers' processors composite transparent images onto white with Pillow's
//!   `alpha_composite` (`convert_to_rgb`), while its `load_image` (used for paths and URLs)
//!   calls `convert("RGB")`, which drops alpha. [`Alpha`] picks one.
//! - 16-bit samples. Pillow keeps the high byte of 16-bit RGB(A) and gray-alpha PNG samples,
//!   and clips 16-bit gray ones to 255 (`I;16` to `RGB`); `image` rounds `v / 257`.

use crate::rgb::RgbImage;
use image::DynamicImage;

/// What becomes of transparency when an image is made RGB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Alpha {
    /// Composite onto opaque white with Pillow's integer `alpha_composite`, as transformers'
    /// image processors do (`image_transforms.convert_to_rgb`).
    #[default]
    CompositeOnWhite,
    /// Drop the alpha channel, as `PIL.Image.convert("RGB")` (and so transformers'
    /// `load_image`) does.
    Drop,
}

/// `image` to RGB8 under `alpha`.
pub(crate) fn to_rgb(image: DynamicImage, alpha: Alpha) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let data = match image {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        DynamicImage::ImageLuma8(buf) => gray(buf.as_raw().iter().copied()),
        DynamicImage::ImageRgba8(buf) => rgba(buf.as_raw(), alpha),
        DynamicImage::ImageLumaA8(buf) => {
            let la: Vec<u8> = buf
                .as_raw()
                .chunks_exact(2)
                .flat_map(|p| [p[0], p[0], p[0], p[1]])
                .collect();
            rgba(&la, alpha)
        }
        DynamicImage::ImageRgb16(buf) => buf.as_raw().iter().map(|&v| high_byte(v)).collect(),
        DynamicImage::ImageLuma16(buf) => gray(buf.as_raw().iter().map(|&v| v.min(255) as u8)),
        DynamicImage::ImageRgba16(buf) => {
            let rgba8: Vec<u8> = buf.as_raw().iter().map(|&v| high_byte(v)).collect();
            rgba(&rgba8, alpha)
        }
        DynamicImage::ImageLumaA16(buf) => {
            let la: Vec<u8> = buf
                .as_raw()
                .chunks_exact(2)
                .flat_map(|p| {
                    let (l, a) = (high_byte(p[0]), high_byte(p[1]));
                    [l, l, l, a]
                })
                .collect();
            rgba(&la, alpha)
        }
        // Float layouts do not come out of the formats decoded here; `image`'s conversion is
        // as good as any for them.
        other => other.into_rgb8().into_raw(),
    };
    RgbImage::new(width, height, data).expect("a decoded image's buffer matches its size")
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

fn gray(values: impl Iterator<Item = u8>) -> Vec<u8> {
    values.flat_map(|v| [v, v, v]).collect()
}

fn rgba(data: &[u8], alpha: Alpha) -> Vec<u8> {
    data.chunks_exact(4)
        .flat_map(|p| match alpha {
            Alpha::Drop => [p[0], p[1], p[2]],
            Alpha::CompositeOnWhite => over_white([p[0], p[1], p[2]], p[3]),
        })
        .collect()
}

/// Pillow's `ImagingAlphaComposite` (libImaging/AlphaComposite.c) of `src` with alpha `a` over
/// an opaque white pixel, in its integer arithmetic: 7 extra bits of precision and division by
/// 255 as `SHIFTFORDIV255`, so the rounding is Pillow's, not the exact quotient's.
fn over_white(src: [u8; 3], a: u8) -> [u8; 3] {
    const PRECISION_BITS: u32 = 7;
    if a == 0 {
        return [255; 3];
    }
    let a = u32::from(a);
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    src.map(|c| {
        let tmp = u32::from(c) * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
        (shift_div_255(tmp) >> PRECISION_BITS) as u8
    })
}

/// Pillow's `SHIFTFORDIV255`: `a / 255` for the ranges it is used on, by two shifts.
fn shift_div_255(a: u32) -> u32 {
    ((a >> 8) + a) >> 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_pixels_are_unchanged_and_transparent_ones_white() {
        for c in 0..=255u8 {
            assert_eq!(over_white([c, 0, 255], 255), [c, 0, 255]);
            assert_eq!(over_white([c, 0, 255], 0), [255; 3]);
        }
    }

    #[test]
    fn half_transparent_black_is_mid_gray() {
        // 128/255 of black over white: 255 * 127 / 255 = 127.
        assert_eq!(over_white([0, 0, 0], 128), [127; 3]);
    }
}
