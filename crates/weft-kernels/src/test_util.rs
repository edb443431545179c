//! Random weights and activations for the kernel tests.

use crate::quant::layout::*;
use crate::quant::{scalar, GgmlType};

/// A small deterministic generator (splitmix64).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub(crate) fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Offsets of the f16 scale fields of a block of `ty`: (scale fields, min fields).
pub(crate) fn scale_fields(ty: GgmlType) -> (&'static [usize], &'static [usize]) {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => (&[0], &[]),
        GgmlType::Q4_1 | GgmlType::Q5_1 => (&[0], &[2]),
        GgmlType::Q2_K => (&[Q2_K_D], &[Q2_K_D + 2]),
        GgmlType::Q3_K => (&[Q3_K_D], &[]),
        GgmlType::Q4_K | GgmlType::Q5_K => (&[0], &[2]),
        GgmlType::Q6_K => (&[Q6_K_D], &[]),
        _ => (&[], &[]),
    }
}

pub(crate) fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// A random row of `nb` blocks of `ty`: random quant bytes, scales in [-2, 2].
pub(crate) fn random_row(ty: GgmlType, nb: usize, rng: &mut Rng) -> Vec<u8> {
    let n = nb * ty.block_len();
    match ty {
        GgmlType::F32 => (0..n)
            .flat_map(|_| (2.0 * rng.uniform()).to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| f32_to_f16(2.0 * rng.uniform()).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| f32_to_bf16(2.0 * rng.uniform()).to_le_bytes())
            .collect(),
        GgmlType::Q8_1 | GgmlType::Q8_K => {
            let x: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
            let mut out = vec![0u8; ty.row_bytes(n).unwrap()];
            scalar::quantize_row(ty, &x, &mut out);
            out
        }
        _ => {
            let mut out: Vec<u8> = (0..ty.row_bytes(n).unwrap()).map(|_| rng.byte()).collect();
            let (sc, mn) = scale_fields(ty);
            for block in out.chunks_exact_mut(ty.block_bytes()) {
                for &off in sc.iter().chain(mn) {
                    put_f16(block, off, 2.0 * rng.uniform());
                }
            }
            out
        }
    }
}

/// Random activations: mostly small, with a few outliers, and some all-zero blocks.
pub(crate) fn random_activations(n: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n)
        .map(|_| {
            let v = rng.uniform();
            if rng.byte() < 8 {
                v * 50.0
            } else {
                v
            }
        })
        .collect();
    if n >= 64 && rng.byte() < 32 {
        x[..32].fill(0.0);
    }
    x
}

/// A random `rows` x `cols` matrix of `ty`, rows one after another.
pub(crate) fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let nb = cols / ty.block_len();
    (0..rows).flat_map(|_| random_row(ty, nb, rng)).collect()
}
