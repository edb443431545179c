//! The AVX2 group kernel: eight interleaved rows by up to four tokens, one 32-element block at
//! a time (layout in the parent module's comment).

use std::arch::x86_64::*;

use super::{offset_sum, Acts, BLOCK_BYTES, GROUP_ROWS};
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
    unsafe {
        match (out.len(), acts.exact_sums) {
            (1, true) => tile::<1, true>(group, acts, out),
            (2, true) => tile::<2, true>(group, acts, out),
            (3, true) => tile::<3, true>(group, acts, out),
            (4, true) => tile::<4, true>(group, acts, out),
            (1, false) => tile::<1, false>(group, acts, out),
            (2, false) => tile::<2, false>(group, acts, out),
            (3, false) => tile::<3, false>(group, acts, out),
            (4, false) => tile::<4, false>(group, acts, out),
            (n, _) => unreachable!("{n} tokens in one group tile"),
        }
    }
}

/// One group by `T` tokens. The block's quants are read one half (four lanes) at a time and
/// multiplied into every token before the next half is loaded: four weight vectors, `T`
/// integer sums and `T` accumulators are live instead of eight weight vectors, which all but
/// removes the register spills of the four-token tile (SmolLM2 pp32 went from 427 to 601 t/s).
///
/// # Safety
/// As [`group_tile`], with `out.len() == T` and `EXACT == acts.exact_sums`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const T: usize, const EXACT: bool>(
    group: &[u8],
    acts: &Acts<'_>,
    out: &mut [[f32; GROUP_ROWS]],
) {
    let ones = _mm256_set1_epi16(1);
    let xrow = acts.blocks * Q8_1_BYTES;
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..acts.blocks {
        // SAFETY: block `b` of the group is in bounds (checked by the caller).
        let block = unsafe { group.as_ptr().add(b * BLOCK_BYTES) };
        let mut isum = [_mm256_setzero_si256(); T];
        for h in 0..2 {
            // SAFETY: lanes 4h..4h + 4 of the block's 256 quant bytes; unaligned loads.
            let w: [__m256i; 4] = std::array::from_fn(|k| unsafe {
                _mm256_loadu_si256(block.add(32 * (4 * h + k)).cast())
            });
            for (t, isum) in isum.iter_mut().enumerate() {
                // SAFETY: the block's 32 quants of token t are in bounds (checked by the
                // caller); this half reads 16 of them.
                let xq = unsafe { acts.x.as_ptr().add(t * xrow + b * Q8_1_BYTES + 4 + 16 * h) };
                // Four activation bytes broadcast to every row's lane.
                // SAFETY: `k < 4`, inside the half's 16 quants; unaligned reads are allowed.
                let p = |k: usize| unsafe {
                    let x4 = std::ptr::read_unaligned(xq.add(4 * k).cast::<i32>());
                    _mm256_maddubs_epi16(w[k], _mm256_set1_epi32(x4))
                };
                // Four products of quants <= 31 and |x| <= 127 per i16 lane stay below 2^15
                // (see AFFINE_MAX_U).
                let s =
                    _mm256_add_epi16(_mm256_add_epi16(p(0), p(1)), _mm256_add_epi16(p(2), p(3)));
                *isum = _mm256_add_epi32(*isum, _mm256_madd_epi16(s, ones));
            }
        }
        // SAFETY: the eight f32 `d` and eight f32 `m` after the quants, inside the block.
        let (d, m) = unsafe {
            (
                _mm256_loadu_ps(block.add(GROUP_ROWS * QK).cast()),
                _mm256_loadu_ps(block.add(GROUP_ROWS * QK + 4 * GROUP_ROWS).cast()),
            )
        };
        for (t, (acc, isum)) in acc.iter_mut().zip(isum).enumerate() {
            // SAFETY: token t's scale of block b is in bounds (checked by the caller).
            let s = unsafe { *acts.xs.get_unchecked(t * acts.blocks + b) };
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(s.d));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, *acc);
            *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(offset_sum(&s, EXACT)), *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 8 writable floats; no alignment requirement.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc) };
    }
}
