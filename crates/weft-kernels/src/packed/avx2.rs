//! The AVX2 group kernel: eight interleaved rows by up to four tokens, one 32-element block at
//! a time (layout in the parent module's comment).

use std::arch::x86_64::*;

use super::{Acts, BLOCK_BYTES, GROUP_ROWS};
use crate::quant::{Q8_1_BYTES, QK};

pub(super) use crate::quant::avx2_available as available;

/// [`super::group_tile`] for `out.len()` in 1..=4.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `group` holds `acts.blocks` packed blocks and `acts` holds
/// `out.len()` tokens.
pub(super) unsafe fn group_tile(group: &[u8], acts: &Acts<'_>, out: &mut [[f32; GROUP_ROWS]]) {
    assert!(group.len() >= acts.blocks * BLOCK_BYTES);
    assert!(acts.x.len() >= out.len() * acts.blocks * Q8_1_BYTES);
    assert!(acts.xs.len() >= out.len() * acts.blocks);
    // SAFETY (each arm): the CPU features are guaranteed by the caller, the sizes were checked
    // above.
    match out.len() {
        1 => unsafe { tile::<1>(group, acts, out) },
        2 => unsafe { tile::<2>(group, acts, out) },
        3 => unsafe { tile::<3>(group, acts, out) },
        4 => unsafe { tile::<4>(group, acts, out) },
        n => unreachable!("{n} tokens in one group tile"),
    }
}

/// # Safety
/// As [`group_tile`], with `out.len() == T`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const T: usize>(group: &[u8], acts: &Acts<'_>, out: &mut [[f32; GROUP_ROWS]]) {
    let ones = _mm256_set1_epi16(1);
    let xrow = acts.blocks * Q8_1_BYTES;
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..acts.blocks {
        // SAFETY: block `b` of the group is in bounds (checked by the caller).
        let block = unsafe { group.as_ptr().add(b * BLOCK_BYTES) };
        // SAFETY: 256 quant bytes, then 8 f32 d and 8 f32 m, all inside the block;
        // the loads have no alignment requirement.
        let (w, d, m) = unsafe {
            let w: [__m256i; QK / 4] =
                std::array::from_fn(|k| _mm256_loadu_si256(block.add(32 * k).cast()));
            let d = _mm256_loadu_ps(block.add(GROUP_ROWS * QK).cast());
            let m = _mm256_loadu_ps(block.add(GROUP_ROWS * QK + 4 * GROUP_ROWS).cast());
            (w, d, m)
        };
        for (t, acc) in acc.iter_mut().enumerate() {
            let at = t * xrow + b * Q8_1_BYTES + 4;
            // SAFETY: the block's 32 quants of token t are in bounds (checked by the caller).
            let xq = unsafe { acts.x.as_ptr().add(at) };
            // Four activation bytes broadcast to every row's lane.
            // SAFETY: `k < 8`, inside the 32 quants; unaligned reads are allowed.
            let x4 = |k: usize| unsafe {
                _mm256_set1_epi32(std::ptr::read_unaligned(xq.add(4 * k).cast::<i32>()))
            };
            // Sixteen elements per half: four products of quants <= 31 and |x| <= 127 per
            // i16 lane stay below 2^15 (see AFFINE_MAX_U).
            let half = |h: usize| {
                let p = |k: usize| _mm256_maddubs_epi16(w[4 * h + k], x4(4 * h + k));
                let s =
                    _mm256_add_epi16(_mm256_add_epi16(p(0), p(1)), _mm256_add_epi16(p(2), p(3)));
                _mm256_madd_epi16(s, ones)
            };
            let isum = _mm256_add_epi32(half(0), half(1));
            let (xd, xsum) = acts.scales(t, b);
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(xd));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, *acc);
            *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(xsum), *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 8 writable floats; no alignment requirement.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc) };
    }
}
