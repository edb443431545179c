//! The AVX2 group kernels: eight interleaved rows by up to three tokens, one block at a time
//! (layouts in the parent module's comment).

use std::arch::x86_64::*;

use super::{
    k4_quants, k6_vector, Acts, Encoding, GROUP_ROWS, K4_MINS, K4_SCALES, K4_SUBS, K6_SCALES,
};
use crate::byte_dot::{byte_dot_kernel, ByteDot, U8I8Dot};
use crate::quant::layout::QK_K;
use crate::quant::QK;

/// How far ahead of the current block the kernels prefetch: decode streams the weights once.
const PREFETCH_AHEAD: usize = 4096;

/// [`super::group_tile`] for `out.len()` in 1..=[`super::TOKENS_MAX`]: Q8_0, Q4_1 and Q5_0
/// sum their byte products with `dot`; Q4_K and Q6_K scale 16-bit partial sums, which
/// AVX-VNNI does not shorten, so they always use AVX2's.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C, and AVX-VNNI for [`ByteDot::Vnni`].
pub(super) unsafe fn group_tile(
    dot: ByteDot,
    encoding: Encoding,
    group: &[u8],
    acts: &Acts<'_>,
    out: &mut [[f32; GROUP_ROWS]],
) {
    assert!(group.len() >= acts.blocks * encoding.block_bytes());
    assert!(acts.x.len() >= out.len() * acts.blocks * acts.xblock);
    assert!(acts.xs.len() >= out.len() * acts.blocks);
    assert!(acts.xblock >= QK);
    macro_rules! run {
        ($kernel:ident) => {
            // SAFETY (each arm): the CPU features are guaranteed by the caller, the sizes were
            // checked above.
            match out.len() {
                1 => unsafe { $kernel::<1>(group, acts, out) },
                2 => unsafe { $kernel::<2>(group, acts, out) },
                3 => unsafe { $kernel::<3>(group, acts, out) },
                n => unreachable!("{n} tokens in one group tile"),
            }
        };
    }
    match (encoding, dot) {
        (Encoding::Q8_0, ByteDot::Avx2) => run!(q8_0_avx2),
        (Encoding::Q8_0, ByteDot::Vnni) => run!(q8_0_vnni),
        (Encoding::Q4_1, ByteDot::Avx2) => run!(q4_1_avx2),
        (Encoding::Q4_1, ByteDot::Vnni) => run!(q4_1_vnni),
        (Encoding::Q5_0, ByteDot::Avx2) => run!(q5_0_avx2),
        (Encoding::Q5_0, ByteDot::Vnni) => run!(q5_0_vnni),
        (Encoding::Q4K, _) => run!(q4_k),
        (Encoding::Q6K, _) => run!(q6_k),
    }
}

/// Asks for the cache lines [`PREFETCH_AHEAD`] bytes past the `len` bytes at `block`: every
/// line, since a group block spans several.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch(block: *const u8, len: usize) {
    for off in (0..len).step_by(64) {
        // A prefetch may point past the buffer: it never faults.
        _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_AHEAD + off).cast());
    }
}

/// Four activation bytes of token `t`'s block `b`, at byte `e` of its quants, broadcast to
/// every row's lane.
///
/// # Safety
/// The CPU must support AVX2; the block must be in bounds (checked by [`group_tile`]) and
/// `e + 4` at most its number of quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn x4(acts: &Acts<'_>, t: usize, b: usize, e: usize) -> __m256i {
    let at = acts.quants_at(t, b) + e;
    // SAFETY: guaranteed by the caller; unaligned reads are allowed.
    unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(acts.x.as_ptr().add(at).cast())) }
}

/// Eight f16 scales at `p` as f32 lanes.
///
/// # Safety
/// The CPU must support F16C; `p` must point at 16 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales8(p: *const u8) -> __m256 {
    // SAFETY: guaranteed by the caller.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
}

byte_dot_kernel! {
    /// One group by `T` tokens, Q8_0.
    ///
    /// # Safety
    /// As [`group_tile`], with `out.len() == T` and the encoding Q8_0.
    q8_0_avx2, q8_0_vnni<const T: usize>(
        group: &[u8],
        acts: &Acts<'_>,
        out: &mut [[f32; GROUP_ROWS]],
    ) {
        let bb = Encoding::Q8_0.block_bytes();
        // SAFETY (the whole body): the CPU features are guaranteed by the caller.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..acts.blocks {
                // SAFETY: block `b` is in bounds (checked by the caller); the prefetch may point
                // past the group, which is harmless.
                let block = group.as_ptr().add(b * bb);
                prefetch(block, bb);
                // SAFETY: 256 quant bytes then 8 f16 scales, inside the block; no alignment
                // needed.
                let w: [__m256i; QK / 4] =
                    std::array::from_fn(|k| _mm256_loadu_si256(block.add(32 * k).cast()));
                let d = scales8(block.add(GROUP_ROWS * QK));
                let abs: [__m256i; QK / 4] = std::array::from_fn(|k| _mm256_sign_epi8(w[k], w[k]));
                for (t, acc) in acc.iter_mut().enumerate() {
                    // |w| times x with w's sign. One product pair already nears the i16 limit, so
                    // each vector's products are summed on their own.
                    // SAFETY: as `x4` requires.
                    let x: [__m256i; QK / 4] =
                        std::array::from_fn(|k| _mm256_sign_epi8(x4(acts, t, b, 4 * k), w[k]));
                    let isum = D::dot_each(_mm256_setzero_si256(), &abs, &x);
                    let xd = acts.xs[t * acts.blocks + b].d;
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(xd));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, *acc);
                }
            }
            store(acc, out);
        }
    }
}

byte_dot_kernel! {
    /// One group by `T` tokens, Q4_1.
    ///
    /// # Safety
    /// As [`group_tile`], with `out.len() == T` and the encoding Q4_1.
    q4_1_avx2, q4_1_vnni<const T: usize>(
        group: &[u8],
        acts: &Acts<'_>,
        out: &mut [[f32; GROUP_ROWS]],
    ) {
        let bb = Encoding::Q4_1.block_bytes();
        let q = Encoding::Q4_1.int_bytes();
        // SAFETY (the whole body): the CPU features are guaranteed by the caller.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..acts.blocks {
                // SAFETY: as in `q8_0`.
                let block = group.as_ptr().add(b * bb);
                prefetch(block, bb);
                // SAFETY: 128 quant bytes then 8 f16 d and 8 f16 m, inside the block.
                let w = nibble_lanes(block);
                let d = scales8(block.add(q));
                let m = scales8(block.add(q + 2 * GROUP_ROWS));
                for (t, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: as `x4` requires.
                    let x: [__m256i; QK / 4] = std::array::from_fn(|k| x4(acts, t, b, 4 * k));
                    // Eight product pairs of quants <= 15 and |x| <= 127 per i16 lane stay below
                    // 2^15.
                    let isum = D::dot(_mm256_setzero_si256(), &w, &x);
                    let s = acts.xs[t * acts.blocks + b];
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(s.d));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, *acc);
                    *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(s.s), *acc);
                }
            }
            store(acc, out);
        }
    }
}

/// The eight quant lanes of a Q4_1 / Q5_0 block from its 128 nibble bytes: lanes 0..4 from the
/// low nibbles, 4..8 from the high ones.
///
/// # Safety
/// The CPU must support AVX2; `block` must point at 128 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibble_lanes(block: *const u8) -> [__m256i; QK / 4] {
    let m4 = _mm256_set1_epi8(0x0f);
    // SAFETY: guaranteed by the caller; no alignment needed.
    let v: [__m256i; QK / 8] =
        std::array::from_fn(|k| unsafe { _mm256_loadu_si256(block.add(32 * k).cast()) });
    std::array::from_fn(|k| {
        if k < 4 {
            _mm256_and_si256(v[k], m4)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(v[k - 4]), m4)
        }
    })
}

byte_dot_kernel! {
    /// One group by `T` tokens, Q5_0.
    ///
    /// # Safety
    /// As [`group_tile`], with `out.len() == T` and the encoding Q5_0.
    q5_0_avx2, q5_0_vnni<const T: usize>(
        group: &[u8],
        acts: &Acts<'_>,
        out: &mut [[f32; GROUP_ROWS]],
    ) {
        let bb = Encoding::Q5_0.block_bytes();
        let q = Encoding::Q5_0.int_bytes();
        // SAFETY (the whole body): the CPU features are guaranteed by the caller.
        unsafe {
            let bit4 = _mm256_set1_epi8(0x10);
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..acts.blocks {
                // SAFETY: as in `q8_0`.
                let block = group.as_ptr().add(b * bb);
                prefetch(block, bb);
                // SAFETY: 128 nibble bytes, 32 bytes of fifth bits, 8 f16 d, inside the block.
                let nibbles = nibble_lanes(block);
                let bits = _mm256_loadu_si256(block.add(GROUP_ROWS * QK / 2).cast());
                let d = scales8(block.add(q));
                // Bit k of each byte moved to bit 4. The 16-bit shifts cannot carry another byte's
                // bit there: that would need a shift of at least 5 left or 4 right.
                let high = |k: usize| {
                    let moved = match k {
                        0 => _mm256_slli_epi16::<4>(bits),
                        1 => _mm256_slli_epi16::<3>(bits),
                        2 => _mm256_slli_epi16::<2>(bits),
                        3 => _mm256_slli_epi16::<1>(bits),
                        4 => bits,
                        5 => _mm256_srli_epi16::<1>(bits),
                        6 => _mm256_srli_epi16::<2>(bits),
                        _ => _mm256_srli_epi16::<3>(bits),
                    };
                    _mm256_and_si256(moved, bit4)
                };
                let w: [[__m256i; 4]; 2] = std::array::from_fn(|h| {
                    std::array::from_fn(|k| _mm256_or_si256(nibbles[4 * h + k], high(4 * h + k)))
                });
                for (t, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: as `x4` requires.
                    let x: [[__m256i; 4]; 2] = std::array::from_fn(|h| {
                        std::array::from_fn(|k| x4(acts, t, b, 4 * (4 * h + k)))
                    });
                    // Quants <= 31 times |x| <= 127: four product pairs per i16 lane stay below
                    // 2^15, so the halves are summed apart.
                    let isum = D::dot(D::dot(_mm256_setzero_si256(), &w[0], &x[0]), &w[1], &x[1]);
                    let s = acts.xs[t * acts.blocks + b];
                    // Σ (u - 16) x = Σ u x - 16 Σ x, exactly.
                    let isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(16 * s.qsum));
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(s.d));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, *acc);
                }
            }
            store(acc, out);
        }
    }
}

/// Eight per-row bytes at `p` (one per row of the group), as i32 lanes: zero-extended, or
/// sign-extended when `SIGNED`.
///
/// # Safety
/// The CPU must support AVX2; `p` must point at 8 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_bytes<const SIGNED: bool>(p: *const u8) -> __m256i {
    // SAFETY: guaranteed by the caller; no alignment needed.
    let v = unsafe { _mm_loadl_epi64(p.cast()) };
    if SIGNED {
        _mm256_cvtepi8_epi32(v)
    } else {
        _mm256_cvtepu8_epi32(v)
    }
}

/// Each row's lane of `a` in its low i16 and of `b` in its high one, so that `madd` with
/// `(x, y)` pairs gives `a·x + b·y` per row (the values fit in i16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair16(a: __m256i, b: __m256i) -> __m256i {
    _mm256_blend_epi16::<0b1010_1010>(a, _mm256_slli_epi32::<16>(b))
}

/// # Safety
/// As [`group_tile`], with `out.len() == T` and the encoding Q4_K.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k<const T: usize>(group: &[u8], acts: &Acts<'_>, out: &mut [[f32; GROUP_ROWS]]) {
    let bb = Encoding::Q4K.block_bytes();
    let q = Encoding::Q4K.int_bytes();
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..acts.blocks {
        // SAFETY (all reads of `block`): as in `q8_0`; the offsets are those of the layout,
        // inside the block.
        let block = unsafe { group.as_ptr().add(b * bb) };
        prefetch(block, bb);
        let mut isum = [_mm256_setzero_si256(); T];
        for c in 0..QK_K / 64 {
            // Eight products of quants <= 15 and |x| <= 128 per i16 lane stay below 2^15.
            let (mut lo, mut hi) = ([_mm256_setzero_si256(); T], [_mm256_setzero_si256(); T]);
            for k in 0..8 {
                let v = unsafe { _mm256_loadu_si256(block.add(k4_quants(8 * c + k)).cast()) };
                let (wl, wh) = (
                    _mm256_and_si256(v, m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
                );
                for t in 0..T {
                    // SAFETY: as `x4` requires: 64c + 32 + 4k + 4 <= 256.
                    let (xl, xh) = unsafe {
                        (
                            x4(acts, t, b, 64 * c + 4 * k),
                            x4(acts, t, b, 64 * c + 32 + 4 * k),
                        )
                    };
                    lo[t] = _mm256_add_epi16(lo[t], _mm256_maddubs_epi16(wl, xl));
                    hi[t] = _mm256_add_epi16(hi[t], _mm256_maddubs_epi16(wh, xh));
                }
            }
            let scale = |j: usize| {
                let v = unsafe { row_bytes::<false>(block.add(K4_SCALES + GROUP_ROWS * j)) };
                pair16(v, v)
            };
            let (sl, sh) = (scale(2 * c), scale(2 * c + 1));
            for t in 0..T {
                let s =
                    _mm256_add_epi32(_mm256_madd_epi16(lo[t], sl), _mm256_madd_epi16(hi[t], sh));
                isum[t] = _mm256_add_epi32(isum[t], s);
            }
        }
        let (d, dmin) = unsafe {
            (
                scales8(block.add(q)),
                scales8(block.add(q + 2 * GROUP_ROWS)),
            )
        };
        let mins: [__m256i; K4_SUBS] = std::array::from_fn(|j| {
            let m = unsafe { row_bytes::<false>(block.add(K4_MINS + GROUP_ROWS * j)) };
            pair16(m, m)
        });
        for (t, acc) in acc.iter_mut().enumerate() {
            // Σ min_j (bsum_2j + bsum_2j+1): each min against the pair of 16-element sums.
            let mut msum = _mm256_setzero_si256();
            for (j, &m) in mins.iter().enumerate() {
                let bsums = _mm256_set1_epi32(acts.bsum_pair(t, b, j));
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(m, bsums));
            }
            let xd = _mm256_set1_ps(acts.xs[t * acts.blocks + b].d);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, xd), *acc);
            *acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, xd), *acc);
        }
    }
    store(acc, out);
}

/// # Safety
/// As [`group_tile`], with `out.len() == T` and the encoding Q6_K.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k<const T: usize>(group: &[u8], acts: &Acts<'_>, out: &mut [[f32; GROUP_ROWS]]) {
    let bb = Encoding::Q6K.block_bytes();
    let q = Encoding::Q6K.int_bytes();
    let (m4, m2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..acts.blocks {
        // SAFETY (all reads of `block`): as in `q4_k`.
        let block = unsafe { group.as_ptr().add(b * bb) };
        prefetch(block, bb);
        let scale =
            |sub: usize| unsafe { row_bytes::<true>(block.add(K6_SCALES + GROUP_ROWS * sub)) };
        let mut isum = [_mm256_setzero_si256(); T];
        for h in 0..2 {
            for kk in 0..2 {
                // Quant vector k of chunk 2h + s, nibble n, covers elements
                // 128h + 64n + 32s + 4k..: sub-block 8h + 4n + 2s + k / 4.
                let sc: [[__m256i; 2]; 2] = std::array::from_fn(|n| {
                    std::array::from_fn(|s| {
                        let v = scale(8 * h + 4 * n + 2 * s + kk);
                        pair16(v, v)
                    })
                });
                for k0 in (4 * kk..4 * kk + 4).step_by(2) {
                    // w[i][s][n]: the 6-bit quants of vector k0 + i.
                    let w: [[[__m256i; 2]; 2]; 2] = std::array::from_fn(|i| {
                        let k = k0 + i;
                        let qh =
                            unsafe { _mm256_loadu_si256(block.add(k6_vector(h, k, 0)).cast()) };
                        std::array::from_fn(|s| {
                            let ql = unsafe {
                                _mm256_loadu_si256(block.add(k6_vector(h, k, 1 + s)).cast())
                            };
                            // Bit pair 2s (low nibble) or 4 + 2s (high) of qh moved to bits 4-5;
                            // the 16-bit shifts move no other byte's bits there.
                            let (high_lo, high_hi) = if s == 0 {
                                (_mm256_slli_epi16::<4>(qh), qh)
                            } else {
                                (_mm256_slli_epi16::<2>(qh), _mm256_srli_epi16::<2>(qh))
                            };
                            [
                                _mm256_or_si256(
                                    _mm256_and_si256(ql, m4),
                                    _mm256_and_si256(high_lo, m2),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql), m4),
                                    _mm256_and_si256(high_hi, m2),
                                ),
                            ]
                        })
                    });
                    for (t, isum) in isum.iter_mut().enumerate() {
                        for s in 0..2 {
                            for n in 0..2 {
                                let e = 128 * h + 64 * n + 32 * s + 4 * k0;
                                // SAFETY: as `x4` requires: e + 8 <= 256.
                                let (x0, x1) =
                                    unsafe { (x4(acts, t, b, e), x4(acts, t, b, e + 4)) };
                                // Four products of quants <= 63 and |x| <= 128 per i16 lane
                                // stay below 2^15.
                                let p = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(w[0][s][n], x0),
                                    _mm256_maddubs_epi16(w[1][s][n], x1),
                                );
                                *isum = _mm256_add_epi32(*isum, _mm256_madd_epi16(p, sc[n][s]));
                            }
                        }
                    }
                }
            }
        }
        let d = unsafe { scales8(block.add(q)) };
        let scale_pairs: [__m256i; QK_K / 32] =
            std::array::from_fn(|i| pair16(scale(2 * i), scale(2 * i + 1)));
        for (t, acc) in acc.iter_mut().enumerate() {
            // Σ (q - 32)·x·scale = Σ q·x·scale - 32 Σ scale·bsum, exactly.
            let mut offset = _mm256_setzero_si256();
            for (i, &sc) in scale_pairs.iter().enumerate() {
                let bsums = _mm256_set1_epi32(acts.bsum_pair(t, b, i));
                offset = _mm256_add_epi32(offset, _mm256_madd_epi16(sc, bsums));
            }
            let total = _mm256_sub_epi32(isum[t], _mm256_slli_epi32::<5>(offset));
            let xd = _mm256_set1_ps(acts.xs[t * acts.blocks + b].d);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(d, xd), *acc);
        }
    }
    store(acc, out);
}

/// # Safety
/// The CPU must support AVX.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store<const T: usize>(acc: [__m256; T], out: &mut [[f32; GROUP_ROWS]]) {
    for (o, acc) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 8 writable floats; no alignment requirement.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc) };
    }
}
