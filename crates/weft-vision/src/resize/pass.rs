//! One-axis convolution passes over interleaved RGB8 with integer taps, as both references
//! compute them: an `i32` sum started at half a unit (round half up), shifted down by the
//! precision (floor) and clamped to 0..=255 (Pillow's `clip8`, torch's saturating packs).
//!
//! The sum cannot overflow: the normalized weights of one output add up to 1 with their
//! negative lobes at most -0.15 in all, so the positive ones stay under 1.2 x 2^22 x 255 < 2^31.

use super::kernel::Taps;
use crate::rgb::RgbImage;
use std::ops::Range;

/// Resamples along rows; only source rows `rows` are produced (in order).
pub(super) fn horizontal(src: &RgbImage, taps: &Taps, rows: Range<u32>) -> RgbImage {
    let in_w = src.width() as usize;
    let out_w = taps.out_len();
    let half = (1i32 << taps.precision) >> 1;
    let mut out = Vec::with_capacity(out_w * rows.len() * 3);
    for y in rows.clone() {
        let row = &src.as_raw()[y as usize * in_w * 3..][..in_w * 3];
        for x in 0..out_w {
            let (first, weights) = taps.get(x);
            let mut acc = [half; 3];
            for (px, &w) in row[first * 3..].chunks_exact(3).zip(weights) {
                for (a, &v) in acc.iter_mut().zip(px) {
                    *a += i32::from(v) * w;
                }
            }
            out.extend(acc.map(|a| clip(a, taps.precision)));
        }
    }
    RgbImage::new(out_w as u32, rows.len() as u32, out).expect("sized above")
}

/// Resamples along columns.
pub(super) fn vertical(src: &RgbImage, taps: &Taps) -> RgbImage {
    let stride = src.width() as usize * 3;
    let out_h = taps.out_len();
    let half = (1i32 << taps.precision) >> 1;
    let mut out = Vec::with_capacity(stride * out_h);
    let mut acc = vec![0i32; stride];
    for y in 0..out_h {
        let (first, weights) = taps.get(y);
        acc.fill(half);
        for (k, &w) in weights.iter().enumerate() {
            let row = &src.as_raw()[(first + k) * stride..][..stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i32::from(v) * w;
            }
        }
        out.extend(acc.iter().map(|&a| clip(a, taps.precision)));
    }
    RgbImage::new(src.width(), out_h as u32, out).expect("sized above")
}

fn clip(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}
