//! The AVX2 group kernel: eight interleaved rows by up to four tokens, one 32-element block at
//! a time (layout in the parent module's comment), with AVX2's or AVX-VNNI's byte products.

use std::arch::x86_64::*;

use super::{offset_sum, Acts, BLOCK_BYTES, GROUP_ROWS};
use crate::byte_dot::{byte_dot_kernel, ByteDot, U8I8Dot};
use crate::quant::{Q8_1_BYTES, QK};

/// [`super::group_tile`] for `out.len()` in 1..=4, summing byte products with `dot`.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and AVX-VNNI for [`ByteDot::Vnni`]; `group` holds
/// `acts.blocks` packed blocks and `acts` holds `out.len()` tokens.
pub(super) unsafe fn group_tile(
    dot: ByteDot,
    group: &[u8],
    acts: &Acts<'_>,
    out: &mut [[f32; GROUP_ROWS]],
) {
    assert!(group.len() >= acts.blocks * BLOCK_BYTES);
    assert!(acts.x.len() >= out.len() * acts.blocks * Q8_1_BYTES);
    assert!(acts.xs.len() >= out.len() * acts.blocks);
    macro_rules! by_tokens {
        ($kernel:ident, $exact:literal) => {
            // SAFETY (each arm): the CPU features are guaranteed by the caller, the sizes
            // were checked above.
            unsafe {
                match out.len() {
                    1 => $kernel::<1, $exact>(group, acts, out),
                    2 => $kernel::<2, $exact>(group, acts, out),
                    3 => $kernel::<3, $exact>(group, acts, out),
                    4 => $kernel::<4, $exact>(group, acts, out),
                    n => unreachable!("{n} tokens in one group tile"),
                }
            }
        };
    }
    match (dot, acts.exact_sums) {
        (ByteDot::Avx2, true) => by_tokens!(tile_avx2, true),
        (ByteDot::Avx2, false) => by_tokens!(tile_avx2, false),
        (ByteDot::Vnni, true) => by_tokens!(tile_vnni, true),
        (ByteDot::Vnni, false) => by_tokens!(tile_vnni, false),
    }
}

byte_dot_kernel! {
    /// One group by `T` tokens. The block's quants are read one half (four lanes) at a time
    /// and multiplied into every token before the next half is loaded: four weight vectors,
    /// `T` integer sums and `T` accumulators are live instead of eight weight vectors, which
    /// all but removes the register spills of the four-token tile (SmolLM2 pp32 went from 427
    /// to 601 t/s).
    ///
    /// # Safety
    /// As [`group_tile`], with `out.len() == T` and `EXACT == acts.exact_sums`.
    tile_avx2, tile_vnni<const T: usize, const EXACT: bool>(
        group: &[u8],
        acts: &Acts<'_>,
        out: &mut [[f32; GROUP_ROWS]],
    ) {
        let xrow = acts.blocks * Q8_1_BYTES;
        // SAFETY (the whole body): AVX2/FMA (and `D`'s features) are guaranteed by the caller.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..acts.blocks {
                // SAFETY: block `b` of the group is in bounds (checked by the caller).
                let block = group.as_ptr().add(b * BLOCK_BYTES);
                let mut isum = [_mm256_setzero_si256(); T];
                for h in 0..2 {
                    // SAFETY: lanes 4h..4h + 4 of the block's 256 quant bytes; unaligned loads.
                    let w: [__m256i; 4] = std::array::from_fn(|k| {
                        _mm256_loadu_si256(block.add(32 * (4 * h + k)).cast())
                    });
                    for (t, isum) in isum.iter_mut().enumerate() {
                        // SAFETY: the block's 32 quants of token t are in bounds (checked by the
                        // caller); this half reads 16 of them, four bytes at a time, each
                        // broadcast to every row's lane.
                        let xq = acts.x.as_ptr().add(t * xrow + b * Q8_1_BYTES + 4 + 16 * h);
                        let x: [__m256i; 4] = std::array::from_fn(|k| {
                            _mm256_set1_epi32(std::ptr::read_unaligned(xq.add(4 * k).cast::<i32>()))
                        });
                        // Four products of quants <= 31 and |x| <= 127 per i16 lane stay below
                        // 2^15 (see AFFINE_MAX_U).
                        *isum = D::dot(*isum, &w, &x);
                    }
                }
                // SAFETY: the eight f32 `d` and eight f32 `m` after the quants, inside the block.
                let d = _mm256_loadu_ps(block.add(GROUP_ROWS * QK).cast());
                let m = _mm256_loadu_ps(block.add(GROUP_ROWS * QK + 4 * GROUP_ROWS).cast());
                for (t, (acc, isum)) in acc.iter_mut().zip(isum).enumerate() {
                    // SAFETY: token t's scale of block b is in bounds (checked by the caller).
                    let s = *acts.xs.get_unchecked(t * acts.blocks + b);
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(s.d));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, *acc);
                    *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(offset_sum(&s, EXACT)), *acc);
                }
            }
            for (o, acc) in out.iter_mut().zip(acc) {
                // SAFETY: `o` is 8 writable floats; no alignment requirement.
                _mm256_storeu_ps(o.as_mut_ptr(), acc);
            }
        }
    }
}
