//! Portable reference versions of [`quantize_row`] and [`vec_dot`], used on CPUs without AVX2
//! and by the tests as the reference the SIMD versions are checked against.
//!
//! The quantizers follow ggml's `quantize_row_q8_0_ref`, `quantize_row_q8_1_ref` and
//! `quantize_row_q8_K_ref`; the dot products follow ggml-cpu's generic `ggml_vec_dot_*`:
//! exact integer sums per block, scaled by the block scales and accumulated in f32 (f64 for
//! the float formats, as ggml's `ggml_float`).

// The loops index several arrays with the element offsets of the block layouts.
#![allow(clippy::needless_range_loop)]

use super::layout::*;
use super::{check_row, GgmlType};

/// Quantizes f32 activations into a dot type; same contract as [`super::quantize_row`].
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    assert!(
        ty.is_dot_type(),
        "quantize_row: {ty} is not an activation format"
    );
    check_row(ty, src.len(), dst.len(), "quantize_row");
    quantize_row_unchecked(ty, src, dst);
}

/// Dot product of a weight row with quantized activations; same contract as
/// [`super::vec_dot`].
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_row(ty, n, w.len(), "vec_dot weights");
    check_row(ty.dot_type(), n, x.len(), "vec_dot activations");
    vec_dot_unchecked(ty, n, w, x)
}

pub(super) fn quantize_row_unchecked(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    match ty {
        GgmlType::F32 => {
            for (v, o) in src.iter().zip(dst.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (v, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
                o.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (v, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
                o.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q8_0_BYTES)) {
                let (d, _) = quantize_q8_block(x, &mut y[2..]);
                y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
            }
        }
        GgmlType::Q8_1 => {
            for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q8_1_BYTES)) {
                let (d, sum) = quantize_q8_block(x, &mut y[4..]);
                y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
                y[2..4].copy_from_slice(&f32_to_f16(sum as f32 * d).to_le_bytes());
            }
        }
        GgmlType::Q8_K => {
            for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q8_K_BYTES)) {
                quantize_q8_k_block(x, y);
            }
        }
        _ => unreachable!("checked by the caller"),
    }
}

/// One Q8_0 / Q8_1 block as ggml-cpu quantizes activations on x86 (what llama.cpp computes
/// there): `d = amax / 127`, `q = round_ties_even(x * (127 / amax))`. (ggml's portable
/// reference divides by `d` and rounds ties away from zero; the two differ on rare ties.)
/// Returns `d` (before its rounding to f16) and the sum of the quants.
fn quantize_q8_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i8;
        sum += r as i32;
        *q = r as u8;
    }
    (d, sum)
}

/// ggml's `nearest_int`: round to nearest, ties to even (valid for |v| < 2^22).
#[inline]
pub(super) fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// One Q8_K block: the scale comes from the element of largest magnitude *with its sign*
/// (`iscale = -127 / max`, `d = 1 / iscale`), quants are `min(127, nearest_int(iscale * x))`,
/// and `bsums` are the sums of 16 consecutive quants.
fn quantize_q8_k_block(x: &[f32], y: &mut [u8]) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        y.fill(0);
        return;
    }
    let iscale = -127.0 / max;
    let qs = &mut y[Q8_K_QS..Q8_K_QS + QK_K];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    let mut bsums = [0i16; QK_K / 16];
    for (s, chunk) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
        *s = chunk.iter().map(|&q| q as i8 as i16).sum();
    }
    for (j, s) in bsums.iter().enumerate() {
        y[Q8_K_BSUMS + 2 * j..Q8_K_BSUMS + 2 * j + 2].copy_from_slice(&s.to_le_bytes());
    }
    y[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

pub(super) fn vec_dot_unchecked(ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    match ty {
        GgmlType::F32 => dot_floats(w, x, 4, |b| f32_at(b, 0)),
        GgmlType::F16 => dot_floats(w, x, 2, |b| f16_at(b, 0)),
        GgmlType::BF16 => dot_floats(w, x, 2, |b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        GgmlType::Q4_0 => dot_blocks(w, x, Q4_0_BYTES, Q8_0_BYTES, dot_q4_0),
        GgmlType::Q4_1 => dot_blocks(w, x, Q4_1_BYTES, Q8_1_BYTES, dot_q4_1),
        GgmlType::Q5_0 => dot_blocks(w, x, Q5_0_BYTES, Q8_0_BYTES, dot_q5_0),
        GgmlType::Q5_1 => dot_blocks(w, x, Q5_1_BYTES, Q8_1_BYTES, dot_q5_1),
        GgmlType::Q8_0 => dot_blocks(w, x, Q8_0_BYTES, Q8_0_BYTES, dot_q8_0),
        GgmlType::Q8_1 => dot_blocks(w, x, Q8_1_BYTES, Q8_1_BYTES, dot_q8_1),
        GgmlType::Q2_K => dot_blocks(w, x, Q2_K_BYTES, Q8_K_BYTES, dot_q2_k),
        GgmlType::Q3_K => dot_blocks(w, x, Q3_K_BYTES, Q8_K_BYTES, dot_q3_k),
        GgmlType::Q4_K => dot_blocks(w, x, Q4_K_BYTES, Q8_K_BYTES, dot_q4_k),
        GgmlType::Q5_K => dot_blocks(w, x, Q5_K_BYTES, Q8_K_BYTES, dot_q5_k),
        GgmlType::Q6_K => dot_blocks(w, x, Q6_K_BYTES, Q8_K_BYTES, dot_q6_k),
        GgmlType::Q8_K => {
            debug_assert_eq!(n % QK_K, 0);
            dot_blocks(w, x, Q8_K_BYTES, Q8_K_BYTES, dot_q8_k)
        }
    }
}

/// Sum over element pairs of float weights (`size` bytes each, read by `load`) and f32
/// activations, in f64 as ggml's generic `ggml_vec_dot_f32`.
fn dot_floats(w: &[u8], x: &[u8], size: usize, load: impl Fn(&[u8]) -> f32) -> f32 {
    let mut sum = 0.0f64;
    for (a, b) in w.chunks_exact(size).zip(x.chunks_exact(4)) {
        sum += (load(a) * f32_at(b, 0)) as f64;
    }
    sum as f32
}

/// `sum over blocks of f(weight block, activation block)`, in f32.
fn dot_blocks(w: &[u8], x: &[u8], wb: usize, xb: usize, f: impl Fn(&[u8], &[u8]) -> f32) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in w.chunks_exact(wb).zip(x.chunks_exact(xb)) {
        sum += f(a, b);
    }
    sum
}

/// Σ q_w[j] * q_x[j] over a 32-element block whose weight quants come from `wq(j)`.
#[inline]
fn isum32(wq: impl Fn(usize) -> i32, xq: &[u8]) -> i32 {
    (0..QK).map(|j| wq(j) * (xq[j] as i8) as i32).sum()
}

/// Nibble `j` (0..32) of a 16-byte 4-bit quant array: low nibbles are elements 0..16, high
/// nibbles 16..32.
#[inline]
fn nibble(qs: &[u8], j: usize) -> i32 {
    if j < 16 {
        (qs[j] & 0x0f) as i32
    } else {
        (qs[j - 16] >> 4) as i32
    }
}

fn dot_q4_0(w: &[u8], x: &[u8]) -> f32 {
    let sumi = isum32(|j| nibble(&w[2..18], j) - 8, &x[2..]);
    sumi as f32 * f16_at(w, 0) * f16_at(x, 0)
}

fn dot_q4_1(w: &[u8], x: &[u8]) -> f32 {
    let sumi = isum32(|j| nibble(&w[4..20], j), &x[4..]);
    (f16_at(w, 0) * f16_at(x, 0)) * sumi as f32 + f16_at(w, 2) * f16_at(x, 2)
}

fn dot_q5_0(w: &[u8], x: &[u8]) -> f32 {
    let qh = u32::from_le_bytes([w[2], w[3], w[4], w[5]]);
    let sumi = isum32(
        |j| (nibble(&w[6..22], j) | (((qh >> j) & 1) << 4) as i32) - 16,
        &x[2..],
    );
    (f16_at(w, 0) * f16_at(x, 0)) * sumi as f32
}

fn dot_q5_1(w: &[u8], x: &[u8]) -> f32 {
    let qh = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
    let sumi = isum32(
        |j| nibble(&w[8..24], j) | (((qh >> j) & 1) << 4) as i32,
        &x[4..],
    );
    (f16_at(w, 0) * f16_at(x, 0)) * sumi as f32 + f16_at(w, 2) * f16_at(x, 2)
}

fn dot_q8_0(w: &[u8], x: &[u8]) -> f32 {
    let sumi = isum32(|j| (w[2 + j] as i8) as i32, &x[2..]);
    sumi as f32 * (f16_at(w, 0) * f16_at(x, 0))
}

fn dot_q8_1(w: &[u8], x: &[u8]) -> f32 {
    let sumi = isum32(|j| (w[4 + j] as i8) as i32, &x[4..]);
    sumi as f32 * (f16_at(w, 0) * f16_at(x, 0))
}

/// The Q8_K quants as i32.
#[inline]
fn q8k(x: &[u8], j: usize) -> i32 {
    (x[Q8_K_QS + j] as i8) as i32
}

/// Σ mins[j] * (bsums[2j] + bsums[2j+1]) for the 8 32-element sub-blocks (Q4_K, Q5_K).
#[inline]
fn mins_dot_bsums32(mins: &[u8; 8], x: &[u8]) -> i32 {
    (0..8)
        .map(|j| {
            let s = i16_at(x, Q8_K_BSUMS + 4 * j) as i32 + i16_at(x, Q8_K_BSUMS + 4 * j + 2) as i32;
            mins[j] as i32 * s
        })
        .sum()
}

fn dot_q2_k(w: &[u8], x: &[u8]) -> f32 {
    let scales = &w[..16];
    let mut summs = 0i32;
    for (j, &s) in scales.iter().enumerate() {
        summs += (s >> 4) as i32 * i16_at(x, Q8_K_BSUMS + 2 * j) as i32;
    }
    let mut isum = 0i32;
    for half in 0..2 {
        let qs = &w[Q2_K_QS + 32 * half..Q2_K_QS + 32 * half + 32];
        for shift in 0..4 {
            let base = 128 * half + 32 * shift;
            for sub in 0..2 {
                let mut s = 0i32;
                for l in 16 * sub..16 * sub + 16 {
                    s += ((qs[l] >> (2 * shift)) & 3) as i32 * q8k(x, base + l);
                }
                isum += (scales[(base + 16 * sub) / 16] & 0x0f) as i32 * s;
            }
        }
    }
    let yd = f32_at(x, 0);
    let dall = yd * f16_at(w, Q2_K_D);
    let dmin = yd * f16_at(w, Q2_K_D + 2);
    dall * isum as f32 - dmin * summs as f32
}

fn dot_q3_k(w: &[u8], x: &[u8]) -> f32 {
    let hmask = &w[..32];
    let scales = q3k_scales(&w[Q3_K_SCALES..Q3_K_SCALES + 12]);
    let mut isum = 0i32;
    for half in 0..2 {
        let qs = &w[Q3_K_QS + 32 * half..Q3_K_QS + 32 * half + 32];
        for shift in 0..4 {
            let base = 128 * half + 32 * shift;
            let m = 1u8 << (4 * half + shift);
            for sub in 0..2 {
                let mut s = 0i32;
                for l in 16 * sub..16 * sub + 16 {
                    let lo = ((qs[l] >> (2 * shift)) & 3) as i32;
                    let q = lo - if hmask[l] & m != 0 { 0 } else { 4 };
                    s += q * q8k(x, base + l);
                }
                isum += scales[(base + 16 * sub) / 16] as i32 * s;
            }
        }
    }
    let d = f16_at(w, Q3_K_D) * f32_at(x, 0);
    d * isum as f32
}

fn dot_q4_k(w: &[u8], x: &[u8]) -> f32 {
    let (sc, mn) = k4_scales_mins(&w[4..16]);
    let summs = mins_dot_bsums32(&mn, x);
    let mut isum = 0i32;
    for c in 0..4 {
        let qs = &w[Q4_K_QS + 32 * c..Q4_K_QS + 32 * c + 32];
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            lo += (qs[l] & 0x0f) as i32 * q8k(x, 64 * c + l);
            hi += (qs[l] >> 4) as i32 * q8k(x, 64 * c + 32 + l);
        }
        isum += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
    }
    let yd = f32_at(x, 0);
    let d = yd * f16_at(w, 0);
    let dmin = yd * f16_at(w, 2);
    d * isum as f32 - dmin * summs as f32
}

fn dot_q5_k(w: &[u8], x: &[u8]) -> f32 {
    let (sc, mn) = k4_scales_mins(&w[4..16]);
    let summs = mins_dot_bsums32(&mn, x);
    let qh = &w[Q5_K_QH..Q5_K_QH + 32];
    let mut isum = 0i32;
    for c in 0..4 {
        let qs = &w[Q5_K_QS + 32 * c..Q5_K_QS + 32 * c + 32];
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
            lo += ((qs[l] & 0x0f) | h1) as i32 * q8k(x, 64 * c + l);
            hi += ((qs[l] >> 4) | h2) as i32 * q8k(x, 64 * c + 32 + l);
        }
        isum += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
    }
    let yd = f32_at(x, 0);
    let d = yd * f16_at(w, 0);
    let dmin = yd * f16_at(w, 2);
    d * isum as f32 - dmin * summs as f32
}

fn dot_q6_k(w: &[u8], x: &[u8]) -> f32 {
    let mut isum = 0i32;
    for half in 0..2 {
        let ql = &w[64 * half..64 * half + 64];
        let qh = &w[Q6_K_QH + 32 * half..Q6_K_QH + 32 * half + 32];
        let sc = &w[Q6_K_SCALES + 8 * half..Q6_K_SCALES + 8 * half + 8];
        let base = 128 * half;
        let mut sums = [0i32; 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            sums[is] += q1 * q8k(x, base + l);
            sums[is + 2] += q2 * q8k(x, base + l + 32);
            sums[is + 4] += q3 * q8k(x, base + l + 64);
            sums[is + 6] += q4 * q8k(x, base + l + 96);
        }
        for (s, &scale) in sums.iter().zip(sc) {
            isum += (scale as i8) as i32 * s;
        }
    }
    let d = f16_at(w, Q6_K_D) * f32_at(x, 0);
    d * isum as f32
}

fn dot_q8_k(w: &[u8], x: &[u8]) -> f32 {
    let sumi: i32 = (0..QK_K).map(|j| q8k(w, j) * q8k(x, j)).sum();
    (f32_at(w, 0) * f32_at(x, 0)) * sumi as f32
}
