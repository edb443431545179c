//! Image bytes to RGB pixels: PNG, JPEG, WebP and GIF (its first frame), bounded and total.
//!
//! The bytes are untrusted (an upload, a data URL), so:
//! - the pixel count from the header is checked against a limit before any pixel is decoded,
//!   and the decoders' own allocations are capped (`image::Limits`);
//! - every failure is a [`DecodeError`], and a panic inside a third-party decoder is caught and
//!   reported as corruption, so no input bytes can bring the caller down.
//!
//! The EXIF orientation is applied (JPEG, and PNG/WebP that carry EXIF), as transformers'
//! `load_image` does with `ImageOps.exif_transpose`, so a photo taken sideways reaches the
//! model upright.

use crate::color::{to_rgb, Alpha};
use crate::error::DecodeError;
use crate::rgb::RgbImage;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Bounds and choices for [`decode`].
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions {
    /// Largest `width * height` accepted. The default, 50 million, admits any camera photo
    /// (a 48-megapixel phone sensor included) while bounding one decode to a few hundred MB.
    pub max_pixels: u64,
    /// What becomes of transparency.
    pub alpha: Alpha,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_pixels: 50_000_000,
            alpha: Alpha::default(),
        }
    }
}

/// The widest sample layout a decoder may produce (16-bit RGBA), for the allocation cap.
const MAX_BYTES_PER_PIXEL: u64 = 8;
/// Room for a decoder's working buffers beyond the output image.
const DECODER_SLACK_BYTES: u64 = 64 << 20;

/// Decodes `bytes` (PNG, JPEG, WebP or GIF) into upright RGB8 pixels.
pub fn decode(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    // The decoders are third-party parsers of hostile bytes: a bug in one must fail this
    // image, not the process. Nothing is shared across the boundary but the input slice.
    catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, options))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "decoder panicked".into());
        Err(DecodeError::Corrupt(what))
    })
}

fn decode_inner(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage, DecodeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    match reader.format() {
        None => return Err(DecodeError::NotAnImage),
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif) => {}
        Some(other) => return Err(DecodeError::Unsupported(format!("{other:?}"))),
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(
        options
            .max_pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .saturating_add(DECODER_SLACK_BYTES),
    );
    reader.limits(limits);

    // `into_decoder` reads only the header; nothing is decoded before the size check.
    let mut decoder = reader.into_decoder().map_err(from_image_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > options.max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            pixels,
            limit: options.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(DecodeError::Corrupt(format!("{width}x{height} image")));
    }
    // A damaged EXIF block is no reason to refuse pixels that decode: Pillow ignores it too.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(from_image_error)?;
    image.apply_orientation(orientation);
    Ok(to_rgb(image, options.alpha))
}

fn from_image_error(e: ImageError) -> DecodeError {
    match e {
        ImageError::Unsupported(u) => DecodeError::Unsupported(u.to_string()),
        ImageError::Limits(l) => DecodeError::Corrupt(format!("exceeds the decoding limits: {l}")),
        other => DecodeError::Corrupt(other.to_string()),
    }
}
