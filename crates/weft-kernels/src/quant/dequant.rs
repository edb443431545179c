//! Block -> f32 conversion. Every value is computed with the same f32 operations, in the same
//! order, as ggml's `dequantize_row_*` (which the `gguf` Python package mirrors), so results are
//! bit-exact. Lengths are checked by the caller.

// The loops index several arrays with the element offsets of the block layouts.
#![allow(clippy::needless_range_loop)]

use super::layout::*;
use super::GgmlType;

pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let blocks = src.chunks_exact(ty.block_bytes());
    let outs = dst.chunks_exact_mut(ty.block_len());
    match ty {
        GgmlType::F32 => {
            for (b, o) in blocks.zip(outs) {
                o[0] = f32_at(b, 0);
            }
        }
        GgmlType::F16 => {
            for (b, o) in blocks.zip(outs) {
                o[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, o) in blocks.zip(outs) {
                o[0] = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        GgmlType::Q4_0 => blocks.zip(outs).for_each(|(b, o)| q4_0(b, o)),
        GgmlType::Q4_1 => blocks.zip(outs).for_each(|(b, o)| q4_1(b, o)),
        GgmlType::Q5_0 => blocks.zip(outs).for_each(|(b, o)| q5_0(b, o)),
        GgmlType::Q5_1 => blocks.zip(outs).for_each(|(b, o)| q5_1(b, o)),
        GgmlType::Q8_0 => blocks
            .zip(outs)
            .for_each(|(b, o)| q8(f16_at(b, 0), &b[2..], o)),
        GgmlType::Q8_1 => blocks
            .zip(outs)
            .for_each(|(b, o)| q8(f16_at(b, 0), &b[4..], o)),
        GgmlType::Q8_K => blocks
            .zip(outs)
            .for_each(|(b, o)| q8(f32_at(b, 0), &b[Q8_K_QS..Q8_K_QS + QK_K], o)),
        GgmlType::Q2_K => blocks.zip(outs).for_each(|(b, o)| q2_k(b, o)),
        GgmlType::Q3_K => blocks.zip(outs).for_each(|(b, o)| q3_k(b, o)),
        GgmlType::Q4_K => blocks.zip(outs).for_each(|(b, o)| q4_k(b, o)),
        GgmlType::Q5_K => blocks.zip(outs).for_each(|(b, o)| q5_k(b, o)),
        GgmlType::Q6_K => blocks.zip(outs).for_each(|(b, o)| q6_k(b, o)),
    }
}

fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        o[j] = d * ((q & 0x0f) as i32 - 8) as f32;
        o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for (j, &q) in b[4..20].iter().enumerate() {
        o[j] = d * (q & 0x0f) as f32 + m;
        o[j + 16] = d * (q >> 4) as f32 + m;
    }
}

fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * (((q & 0x0f) as u32 | h0) as i32 - 16) as f32;
        o[j + 16] = d * (((q >> 4) as u32 | h1) as i32 - 16) as f32;
    }
}

fn q5_1(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * ((q & 0x0f) as u32 | h0) as f32 + m;
        o[j + 16] = d * ((q >> 4) as u32 | h1) as f32 + m;
    }
}

fn q8(d: f32, qs: &[u8], o: &mut [f32]) {
    for (v, &q) in o.iter_mut().zip(qs) {
        *v = (q as i8) as f32 * d;
    }
}

fn q2_k(b: &[u8], o: &mut [f32]) {
    let scales = &b[..16];
    let d = f16_at(b, Q2_K_D);
    let dmin = f16_at(b, Q2_K_D + 2);
    for half in 0..2 {
        let qs = &b[Q2_K_QS + 32 * half..Q2_K_QS + 32 * half + 32];
        for shift in 0..4 {
            let base = 128 * half + 32 * shift;
            for l in 0..32 {
                let sc = scales[(base + l) / 16];
                let dl = d * (sc & 0x0f) as f32;
                let ml = dmin * (sc >> 4) as f32;
                o[base + l] = dl * ((qs[l] >> (2 * shift)) & 3) as f32 - ml;
            }
        }
    }
}

fn q3_k(b: &[u8], o: &mut [f32]) {
    let hmask = &b[..32];
    let scales = q3k_scales(&b[Q3_K_SCALES..Q3_K_SCALES + 12]);
    let d = f16_at(b, Q3_K_D);
    for half in 0..2 {
        let qs = &b[Q3_K_QS + 32 * half..Q3_K_QS + 32 * half + 32];
        for shift in 0..4 {
            let base = 128 * half + 32 * shift;
            let m = 1u8 << (4 * half + shift);
            for l in 0..32 {
                let dl = d * scales[(base + l) / 16] as f32;
                let lo = ((qs[l] >> (2 * shift)) & 3) as i32;
                let q = lo - if hmask[l] & m != 0 { 0 } else { 4 };
                o[base + l] = dl * q as f32;
            }
        }
    }
}

fn q4_k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = k4_scales_mins(&b[4..16]);
    for c in 0..4 {
        let qs = &b[Q4_K_QS + 32 * c..Q4_K_QS + 32 * c + 32];
        let d1 = d * sc[2 * c] as f32;
        let m1 = dmin * mn[2 * c] as f32;
        let d2 = d * sc[2 * c + 1] as f32;
        let m2 = dmin * mn[2 * c + 1] as f32;
        for l in 0..32 {
            o[64 * c + l] = d1 * (qs[l] & 0x0f) as f32 - m1;
            o[64 * c + 32 + l] = d2 * (qs[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = k4_scales_mins(&b[4..16]);
    let qh = &b[Q5_K_QH..Q5_K_QH + 32];
    for c in 0..4 {
        let qs = &b[Q5_K_QS + 32 * c..Q5_K_QS + 32 * c + 32];
        let d1 = d * sc[2 * c] as f32;
        let m1 = dmin * mn[2 * c] as f32;
        let d2 = d * sc[2 * c + 1] as f32;
        let m2 = dmin * mn[2 * c + 1] as f32;
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
            o[64 * c + l] = d1 * ((qs[l] & 0x0f) | h1) as f32 - m1;
            o[64 * c + 32 + l] = d2 * ((qs[l] >> 4) | h2) as f32 - m2;
        }
    }
}

fn q6_k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, Q6_K_D);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[Q6_K_QH + 32 * half..Q6_K_QH + 32 * half + 32];
        let sc = &b[Q6_K_SCALES + 8 * half..Q6_K_SCALES + 8 * half + 8];
        let base = 128 * half;
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[base + l] = d * (sc[is] as i8) as f32 * q1 as f32;
            o[base + l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            o[base + l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            o[base + l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
