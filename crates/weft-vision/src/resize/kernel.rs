//! The fixed-point filter taps of one axis: Pillow's `precompute_coeffs` +
//! `normalize_coeffs_8bpc`, or torch's `_compute_indices_min_size_weights_aa` +
//! `_compute_index_ranges_int16_weights`. Every floating-point operation is done in the
//! references' order, since a weight that lands on the other side of a rounding boundary
//! changes output pixels.

use super::{Filter, Resampler};
use std::ops::Range;

/// Pillow's fixed point: 32 bits less 8 for the pixel and 2 for overshoot.
const PILLOW_PRECISION: u32 = 22;

/// For each output index, the source range it reads and its integer weights.
pub(super) struct Taps {
    /// First source index of each output index.
    start: Vec<usize>,
    /// Number of source indices each output index reads (at most `ksize`).
    len: Vec<usize>,
    /// `ksize` weights per output index, zero past `len`.
    weights: Vec<i32>,
    ksize: usize,
    /// The weights are scaled by 2^precision.
    pub(super) precision: u32,
}

impl Taps {
    pub(super) fn new(in_size: u32, out_size: u32, filter: Filter, resampler: Resampler) -> Self {
        let scale = f64::from(in_size) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let eval = match resampler {
            Resampler::Torchvision => filter.torch(),
            Resampler::Pillow | Resampler::PillowBefore13 => filter.pillow(),
        };

        let n = out_size as usize;
        let mut start = Vec::with_capacity(n);
        let mut len = Vec::with_capacity(n);
        let mut real = vec![0.0f64; n * ksize];
        let mut largest = 0.0f64;
        for (i, k) in real.chunks_exact_mut(ksize).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero; `as` does too.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            // torch clamps the count to `ksize` (a rare rounding case); Pillow never exceeds it.
            let count = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let mut total = 0.0;
            for (x, w) in k.iter_mut().enumerate().take(count) {
                *w = eval(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
                total += *w;
            }
            if total != 0.0 {
                for w in &mut k[..count] {
                    *w /= total;
                    largest = largest.max(*w);
                }
            }
            start.push(xmin as usize);
            len.push(count);
        }

        let precision = match resampler {
            Resampler::Torchvision => torch_precision(largest),
            Resampler::Pillow | Resampler::PillowBefore13 => PILLOW_PRECISION,
        };
        let one = f64::from(1u32 << precision);
        let weights = real.iter().map(|&w| round_away(w * one)).collect();
        Taps {
            start,
            len,
            weights,
            ksize,
            precision,
        }
    }

    /// Number of output indices.
    pub(super) fn out_len(&self) -> usize {
        self.start.len()
    }

    /// The source range and weights of output index `i`.
    pub(super) fn get(&self, i: usize) -> (usize, &[i32]) {
        let w = &self.weights[i * self.ksize..][..self.len[i]];
        (self.start[i], w)
    }

    /// The source indices any output index reads.
    pub(super) fn source_span(&self) -> Range<u32> {
        let first = self.start.first().copied().unwrap_or(0);
        let last = self.start.last().copied().unwrap_or(0) + self.len.last().copied().unwrap_or(0);
        first as u32..last as u32
    }

    /// The same taps reading a source that begins at index `offset`.
    pub(super) fn shifted(&self, offset: u32) -> Taps {
        Taps {
            start: self.start.iter().map(|&s| s - offset as usize).collect(),
            len: self.len.clone(),
            weights: self.weights.clone(),
            ksize: self.ksize,
            precision: self.precision,
        }
    }
}

/// torch's choice of precision for an axis whose largest weight is `largest`: the first p
/// (at most 22) at which scaling by 2^(p+1) would no longer fit an `i16`, so that the weights
/// scaled by 2^p do.
fn torch_precision(largest: f64) -> u32 {
    let mut p = 0;
    while p < 22 {
        let next = (0.5 + largest * f64::from(1u32 << (p + 1))) as i64;
        if next >= 1 << 15 {
            break;
        }
        p += 1;
    }
    p
}

/// C's `(int)(v < 0 ? v - 0.5 : v + 0.5)`: half away from zero, then truncation.
fn round_away(v: f64) -> i32 {
    if v < 0.0 {
        (-0.5 + v) as i32
    } else {
        (0.5 + v) as i32
    }
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// Pillow's `bilinear_filter` / `bicubic_filter`.
    fn pillow(self) -> fn(f64) -> f64 {
        match self {
            Filter::Bilinear => triangle,
            Filter::Bicubic => pillow_cubic,
        }
    }

    /// torch's `HelperInterpLinear::aa_filter` / `HelperInterpCubic::aa_filter`.
    fn torch(self) -> fn(f64) -> f64 {
        match self {
            Filter::Bilinear => triangle,
            Filter::Bicubic => torch_cubic,
        }
    }
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

const A: f64 = -0.5;

fn pillow_cubic(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// torch's `cubic_convolution1` / `cubic_convolution2` (aten/src/ATen/native/UpSample.h):
/// the same polynomial as Pillow's, its outer piece expanded, so it rounds differently.
fn torch_cubic(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for resampler in [Resampler::Pillow, Resampler::Torchvision] {
            for (i, o) in [(100, 56), (56, 100), (640, 224), (7, 3), (3, 700)] {
                let taps = Taps::new(i, o, Filter::Bicubic, resampler);
                let one = 1i64 << taps.precision;
                for k in 0..taps.out_len() {
                    let sum: i64 = taps.get(k).1.iter().map(|&w| i64::from(w)).sum();
                    assert!((sum - one).abs() <= 4, "{i}->{o} #{k}: {sum} vs {one}");
                }
            }
        }
    }

    #[test]
    fn torch_precision_keeps_weights_in_i16() {
        for largest in [1.0, 0.5, 0.25, 0.1, 0.01] {
            let p = torch_precision(largest);
            assert!(largest * f64::from(1u32 << p) < 32768.0);
            assert!(p == 22 || largest * f64::from(1u32 << (p + 1)) + 0.5 >= 32768.0);
        }
        assert_eq!(torch_precision(1.0), 14);
    }
}
