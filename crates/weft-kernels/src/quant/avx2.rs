//! AVX2 + FMA + F16C versions of the dot products and of the Q8 quantizers.
//!
//! The dot products compute the same exact integer sums per block as the scalar versions
//! (`maddubs`/`madd` on 32-byte vectors, which cannot saturate for these value ranges), then
//! scale and accumulate them in f32 lanes, so they differ from [`super::scalar`] only in the
//! order of the f32 additions. The quantizers give exactly the scalar bytes.
//!
//! Every function here is an `unsafe fn` compiled with `#[target_feature(enable =
//! "avx2,fma,f16c")]`; the one safety requirement of each is that the CPU has those features,
//! which [`available`] checks.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::layout::*;
use super::GgmlType;

/// Whether the CPU has AVX2, FMA and F16C (checked once). Setting `WEFT_FORCE_SCALAR` in the
/// environment turns the SIMD paths off.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var_os("WEFT_FORCE_SCALAR").is_none()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// `b[off..off + N]` as an array reference.
#[inline(always)]
fn arr<const N: usize>(b: &[u8], off: usize) -> &[u8; N] {
    b[off..off + N].try_into().expect("in bounds")
}

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(b: &[u8; 32]) -> __m256i {
    // SAFETY: `b` is 32 readable bytes and `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load16(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` is 16 readable bytes and `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_ps(x: &[f32; 8]) -> __m256 {
    // SAFETY: `x` is 8 readable floats and `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store32(b: &mut [u8; 32], v: __m256i) {
    // SAFETY: `b` is 32 writable bytes and `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(b.as_mut_ptr().cast(), v) }
}

/// `x[off..off + 8]` as an array reference.
#[inline(always)]
fn arr8(x: &[f32], off: usize) -> &[f32; 8] {
    x[off..off + 8].try_into().expect("in bounds")
}

/// The f16 at `b[off..off + 2]` as f32, with F16C.
///
/// # Safety
/// The CPU must support F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at_c(b: &[u8], off: usize) -> f32 {
    f16_pair_product(u16::from_le_bytes([b[off], b[off + 1]]), 0x3c00)
}

/// The product of two f16 values as f32 (exact conversions, one f32 multiply).
///
/// Both halves go through one 32-bit register move: converting a lone f16 lets LLVM merge it
/// into whatever vector register is at hand (`vpinsrw`), which can chain the conversion to
/// an accumulator of the previous block and serialize the loop.
///
/// # Safety
/// The CPU must support F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_pair_product(a: u16, b: u16) -> f32 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(
        (u32::from(a) | (u32::from(b) << 16)) as i32,
    ));
    _mm_cvtss_f32(_mm_mul_ss(v, _mm_movehdup_ps(v)))
}

/// The two consecutive f16 at `b[off..off + 4]` (a K-quant's `d`, `dmin`) times `y`:
/// lanes 0 and 1 hold `d * y` and `dmin * y`.
///
/// # Safety
/// The CPU must support F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x2_times(b: &[u8], off: usize, y: f32) -> __m128 {
    let bits = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
    _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)), _mm_set1_ps(y))
}

/// The product of the f16 at `a[ao..]` and the f16 at `b[bo..]`, as f32.
///
/// # Safety
/// The CPU must support F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_mul(a: &[u8], ao: usize, b: &[u8], bo: usize) -> f32 {
    f16_pair_product(
        u16::from_le_bytes([a[ao], a[ao + 1]]),
        u16::from_le_bytes([b[bo], b[bo + 1]]),
    )
}

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax_ps(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Pairwise sums of the products of signed bytes `a` and `b`, as 8 i32 lanes. `b` must not
/// contain -128 (the activation quantizers never produce it).
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8(a: __m256i, b: __m256i) -> __m256i {
    let ua = _mm256_sign_epi8(a, a);
    let sb = _mm256_sign_epi8(b, a);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ua, sb), _mm256_set1_epi16(1))
}

/// Pairwise sums of the products of unsigned bytes `a` (< 128) and signed bytes `b`, as 8 i32
/// lanes.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8(a: __m256i, b: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
}

/// The 32 nibbles of 16 bytes as bytes: low nibbles first, then high nibbles.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles32(b: &[u8; 16]) -> __m256i {
    let t = load16(b);
    let v = _mm256_set_m128i(_mm_srli_epi16::<4>(t), t);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
}

/// Byte `i` is 0xFF when bit `i` of `bits` is set, else 0.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits32(bits: u32) -> __m256i {
    // Byte i gets byte i / 8 of `bits`...
    let shuf = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    // ...and all its bits but bit i % 8 are set: all ones iff that bit was set.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
}

/// 16 i16 lanes: eight copies of `scales[g]` then eight of `scales[g + 1]`, the multipliers of
/// a `maddubs` result over 32 elements whose two halves have scales `g` and `g + 1`.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_pair(scales: __m128i, g: usize) -> __m256i {
    let lo = (g as i64) * 0x0101_0101_0101_0101;
    let hi = (g as i64 + 1) * 0x0101_0101_0101_0101;
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, _mm_set_epi64x(hi, lo)))
}

// ---------------------------------------------------------------------------------------------
// Dot products.

/// Defines `unsafe fn $name(w, x) -> f32` that runs the block kernel `$blk` over all blocks,
/// alternating two accumulators. A kernel adds its block's vector contribution to `acc` and
/// any scalar contribution to `extra`.
macro_rules! block_dot {
    ($name:ident, $blk:ident, $wb:expr, $xb:expr) => {
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: &[u8], x: &[u8]) -> f32 {
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (mut e0, mut e1) = (0.0f32, 0.0f32);
            let mut wi = w.chunks_exact(2 * $wb);
            let mut xi = x.chunks_exact(2 * $xb);
            for (w2, x2) in (&mut wi).zip(&mut xi) {
                $blk(&mut acc0, &mut e0, arr(w2, 0), arr(x2, 0));
                $blk(&mut acc1, &mut e1, arr(w2, $wb), arr(x2, $xb));
            }
            let (wr, xr) = (wi.remainder(), xi.remainder());
            if wr.len() == $wb && xr.len() == $xb {
                $blk(&mut acc0, &mut e0, arr(wr, 0), arr(xr, 0));
            }
            hsum_ps(_mm256_add_ps(acc0, acc1)) + (e0 + e1)
        }
    };
}

block_dot!(dot_q4_0, blk_q4_0, Q4_0_BYTES, Q8_0_BYTES);
block_dot!(dot_q4_1, blk_q4_1, Q4_1_BYTES, Q8_1_BYTES);
block_dot!(dot_q5_0, blk_q5_0, Q5_0_BYTES, Q8_0_BYTES);
block_dot!(dot_q5_1, blk_q5_1, Q5_1_BYTES, Q8_1_BYTES);
block_dot!(dot_q8_0, blk_q8_0, Q8_0_BYTES, Q8_0_BYTES);
block_dot!(dot_q2_k, blk_q2_k, Q2_K_BYTES, Q8_K_BYTES);
block_dot!(dot_q3_k, blk_q3_k, Q3_K_BYTES, Q8_K_BYTES);
block_dot!(dot_q4_k, blk_q4_k, Q4_K_BYTES, Q8_K_BYTES);
block_dot!(dot_q5_k, blk_q5_k, Q5_K_BYTES, Q8_K_BYTES);
block_dot!(dot_q6_k, blk_q6_k, Q6_K_BYTES, Q8_K_BYTES);

/// The SIMD dot product for `ty`, or `None` when there is none. Lengths must have been checked.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
pub(super) unsafe fn vec_dot(ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> Option<f32> {
    // SAFETY (all calls below): guaranteed by the caller.
    Some(unsafe {
        match ty {
            GgmlType::F32 => dot_f32(n, w, x),
            GgmlType::F16 => dot_f16(n, w, x),
            GgmlType::BF16 => dot_bf16(n, w, x),
            GgmlType::Q4_0 => dot_q4_0(w, x),
            GgmlType::Q4_1 => dot_q4_1(w, x),
            GgmlType::Q5_0 => dot_q5_0(w, x),
            GgmlType::Q5_1 => dot_q5_1(w, x),
            GgmlType::Q8_0 => dot_q8_0(w, x),
            GgmlType::Q2_K => dot_q2_k(w, x),
            GgmlType::Q3_K => dot_q3_k(w, x),
            GgmlType::Q4_K => dot_q4_k(w, x),
            GgmlType::Q5_K => dot_q5_k(w, x),
            GgmlType::Q6_K => dot_q6_k(w, x),
            GgmlType::Q8_1 | GgmlType::Q8_K => return None,
        }
    })
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q8_0(acc: &mut __m256, _: &mut f32, w: &[u8; Q8_0_BYTES], x: &[u8; Q8_0_BYTES]) {
    let d = f16_mul(w, 0, x, 0);
    let p = dot_i8(load32(arr(w, 2)), load32(arr(x, 2)));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), *acc);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q4_0(acc: &mut __m256, _: &mut f32, w: &[u8; Q4_0_BYTES], x: &[u8; Q8_0_BYTES]) {
    let d = f16_mul(w, 0, x, 0);
    let q = _mm256_sub_epi8(nibbles32(arr(w, 2)), _mm256_set1_epi8(8));
    let p = dot_i8(q, load32(arr(x, 2)));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), *acc);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q4_1(acc: &mut __m256, e: &mut f32, w: &[u8; Q4_1_BYTES], x: &[u8; Q8_1_BYTES]) {
    let d = f16_mul(w, 0, x, 0);
    let p = dot_u8(nibbles32(arr(w, 4)), load32(arr(x, 4)));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), *acc);
    *e += f16_mul(w, 2, x, 2);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q5_0(acc: &mut __m256, _: &mut f32, w: &[u8; Q5_0_BYTES], x: &[u8; Q8_0_BYTES]) {
    let d = f16_mul(w, 0, x, 0);
    let qh = u32::from_le_bytes(*arr(w, 2));
    // Quants without their high bit get 0xF0 or'ed in: as i8 that is q - 16.
    let low = _mm256_andnot_si256(bits32(qh), _mm256_set1_epi8(0xf0_u8 as i8));
    let q = _mm256_or_si256(nibbles32(arr(w, 6)), low);
    let p = dot_i8(q, load32(arr(x, 2)));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), *acc);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q5_1(acc: &mut __m256, e: &mut f32, w: &[u8; Q5_1_BYTES], x: &[u8; Q8_1_BYTES]) {
    let d = f16_mul(w, 0, x, 0);
    let qh = u32::from_le_bytes(*arr(w, 4));
    let high = _mm256_and_si256(bits32(qh), _mm256_set1_epi8(0x10));
    let q = _mm256_or_si256(nibbles32(arr(w, 8)), high);
    let p = dot_u8(q, load32(arr(x, 4)));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), *acc);
    *e += f16_mul(w, 2, x, 2);
}

/// The 32 Q8_K quants of elements `32 * g .. 32 * g + 32`.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8k_quants(x: &[u8; Q8_K_BYTES], g: usize) -> __m256i {
    load32(arr(x, Q8_K_QS + 32 * g))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q2_k(acc: &mut __m256, e: &mut f32, w: &[u8; Q2_K_BYTES], x: &[u8; Q8_K_BYTES]) {
    let raw = load16(arr(w, 0));
    let m4 = _mm_set1_epi8(0x0f);
    let scales = _mm_and_si128(raw, m4);
    let mins = _mm_and_si128(_mm_srli_epi16::<4>(raw), m4);
    let bsums = load32(arr(x, Q8_K_BSUMS));
    let summs = hsum_epi32(_mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), bsums));

    let m3 = _mm256_set1_epi8(3);
    let mut sumi = _mm256_setzero_si256();
    for half in 0..2 {
        let q = load32(arr(w, Q2_K_QS + 32 * half));
        for shift in 0..4 {
            let g = 4 * half + shift;
            let qv = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * shift as i32)), m3);
            let p = _mm256_maddubs_epi16(qv, q8k_quants(x, g));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(scales, 2 * g)));
        }
    }
    let dd = f16x2_times(w, Q2_K_D, f32_at(x, 0));
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), *acc);
    *e -= _mm_cvtss_f32(_mm_movehdup_ps(dd)) * summs as f32;
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q3_k(acc: &mut __m256, _: &mut f32, w: &[u8; Q3_K_BYTES], x: &[u8; Q8_K_BYTES]) {
    let [s0, s1, s2, s3] = q3k_scales_packed(arr(w, Q3_K_SCALES));
    let scales = _mm_sub_epi8(
        _mm_setr_epi32(s0 as i32, s1 as i32, s2 as i32, s3 as i32),
        _mm_set1_epi8(32),
    );
    let hmask = load32(arr(w, 0));
    let m3 = _mm256_set1_epi8(3);
    let four = _mm256_set1_epi8(4);
    let zero = _mm256_setzero_si256();
    let mut sumi = _mm256_setzero_si256();
    for half in 0..2 {
        let q = load32(arr(w, Q3_K_QS + 32 * half));
        for shift in 0..4 {
            let g = 4 * half + shift;
            let lo = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * shift as i32)), m3);
            // 4 where the high bit is clear: q = lo - 4 there.
            let bit = _mm256_set1_epi8((1u8 << g) as i8);
            let clear = _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), zero);
            let h4 = _mm256_and_si256(clear, four);
            let y = q8k_quants(x, g);
            let p = _mm256_sub_epi16(_mm256_maddubs_epi16(lo, y), _mm256_maddubs_epi16(h4, y));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(scales, 2 * g)));
        }
    }
    let d = f16_at_c(w, Q3_K_D) * f32_at(x, 0);
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q4_k(acc: &mut __m256, e: &mut f32, w: &[u8; Q4_K_BYTES], x: &[u8; Q8_K_BYTES]) {
    let (scales, summs) = k4_scales(w, x);
    let m4 = _mm256_set1_epi8(0x0f);
    let mut sumi = _mm256_setzero_si256();
    for c in 0..4 {
        let q = load32(arr(w, Q4_K_QS + 32 * c));
        let lo = _mm256_and_si256(q, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
        let p0 = _mm256_maddubs_epi16(lo, q8k_quants(x, 2 * c));
        let p1 = _mm256_maddubs_epi16(hi, q8k_quants(x, 2 * c + 1));
        let p0 = _mm256_madd_epi16(p0, k4_scale(scales, 2 * c));
        let p1 = _mm256_madd_epi16(p1, k4_scale(scales, 2 * c + 1));
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
    }
    let dd = f16x2_times(w, 0, f32_at(x, 0));
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), *acc);
    *e -= _mm_cvtss_f32(_mm_movehdup_ps(dd)) * summs as f32;
}

/// The 6-bit scales of a Q4_K / Q5_K block (bytes 0..8 of both 128-bit lanes), and
/// Σ mins[j] * (bsums[2j] + bsums[2j + 1]) over its eight 32-element sub-blocks.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_scales(w: &[u8], x: &[u8; Q8_K_BYTES]) -> (__m256i, i32) {
    let (sc, mn) = k4_scales_mins_packed(arr(w, 4));
    let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
    let bsums = load32(arr(x, Q8_K_BSUMS));
    // Sums of bsum pairs fit i16 (|sum of 32 quants| <= 4064).
    let pairs = _mm_hadd_epi16(
        _mm256_castsi256_si128(bsums),
        _mm256_extracti128_si256::<1>(bsums),
    );
    let s = _mm_madd_epi16(mins, pairs);
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    let scales = _mm256_broadcastsi128_si256(_mm_cvtsi64_si128(sc as i64));
    (scales, _mm_cvtsi128_si32(s))
}

/// 16 i16 lanes equal to scale `j` of [`k4_scales`]'s vector.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_scale(scales: __m256i, j: usize) -> __m256i {
    // Each i16 takes byte j as its low byte and zero (index with the top bit set) as its high.
    _mm256_shuffle_epi8(scales, _mm256_set1_epi16((0x8000 | j) as i16))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q5_k(acc: &mut __m256, e: &mut f32, w: &[u8; Q5_K_BYTES], x: &[u8; Q8_K_BYTES]) {
    let (scales, summs) = k4_scales(w, x);
    let m4 = _mm256_set1_epi8(0x0f);
    let sixteen = _mm256_set1_epi8(16);
    let qh = load32(arr(w, Q5_K_QH));
    let mut sumi = _mm256_setzero_si256();
    for c in 0..4 {
        let q = load32(arr(w, Q5_K_QS + 32 * c));
        let b0 = _mm256_set1_epi8((1u8 << (2 * c)) as i8);
        let b1 = _mm256_set1_epi8((1u8 << (2 * c + 1)) as i8);
        let h0 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b0), b0), sixteen);
        let h1 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1), sixteen);
        let lo = _mm256_or_si256(_mm256_and_si256(q, m4), h0);
        let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), h1);
        let p0 = _mm256_maddubs_epi16(lo, q8k_quants(x, 2 * c));
        let p1 = _mm256_maddubs_epi16(hi, q8k_quants(x, 2 * c + 1));
        let p0 = _mm256_madd_epi16(p0, k4_scale(scales, 2 * c));
        let p1 = _mm256_madd_epi16(p1, k4_scale(scales, 2 * c + 1));
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
    }
    let dd = f16x2_times(w, 0, f32_at(x, 0));
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), *acc);
    *e -= _mm_cvtss_f32(_mm_movehdup_ps(dd)) * summs as f32;
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blk_q6_k(acc: &mut __m256, _: &mut f32, w: &[u8; Q6_K_BYTES], x: &[u8; Q8_K_BYTES]) {
    let scales = load16(arr(w, Q6_K_SCALES));
    // The quants are stored as q + 32 (0..64): Σ scale * (q + 32) * y, minus
    // 32 * Σ scale * bsum.
    let bsums = load32(arr(x, Q8_K_BSUMS));
    let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), bsums));
    let m4 = _mm256_set1_epi8(0x0f);
    let m30 = _mm256_set1_epi8(0x30);
    let mut sumi = _mm256_setzero_si256();
    for half in 0..2 {
        let ql0 = load32(arr(w, 64 * half));
        let ql1 = load32(arr(w, 64 * half + 32));
        let qh = load32(arr(w, Q6_K_QH + 32 * half));
        let q = [
            _mm256_or_si256(
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_and_si256(qh, m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
            ),
        ];
        for (k, &qk) in q.iter().enumerate() {
            let g = 4 * half + k;
            let p = _mm256_maddubs_epi16(qk, q8k_quants(x, g));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(scales, 2 * g)));
        }
    }
    let sumi = _mm256_sub_epi32(sumi, offset);
    let d = f16_at_c(w, Q6_K_D) * f32_at(x, 0);
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
}

/// Sums four accumulators and a scalar tail as ggml's SIMD float dots do: the vector part in
/// f32 lanes, the tail in f64.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn finish_float_dot(acc: [__m256; 4], tail: f64) -> f32 {
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    (hsum_ps(v) as f64 + tail) as f32
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut wi = w.chunks_exact(128);
    let mut xi = x.chunks_exact(128);
    for (wc, xc) in (&mut wi).zip(&mut xi) {
        for (k, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_castsi256_ps(load32(arr(wc, 32 * k)));
            let xv = _mm256_castsi256_ps(load32(arr(xc, 32 * k)));
            *a = _mm256_fmadd_ps(wv, xv, *a);
        }
    }
    let tail = (wi.remainder().chunks_exact(4))
        .zip(xi.remainder().chunks_exact(4))
        .map(|(a, b)| (f32_at(a, 0) * f32_at(b, 0)) as f64)
        .sum::<f64>();
    debug_assert_eq!(w.len(), 4 * n);
    finish_float_dot(acc, tail)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut wi = w.chunks_exact(64);
    let mut xi = x.chunks_exact(64);
    for (wc, xc) in (&mut wi).zip(&mut xi) {
        for (k, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_cvtph_ps(load16(arr(wc, 16 * k)));
            let xv = _mm256_cvtph_ps(load16(arr(xc, 16 * k)));
            *a = _mm256_fmadd_ps(wv, xv, *a);
        }
    }
    let tail = (wi.remainder().chunks_exact(2))
        .zip(xi.remainder().chunks_exact(2))
        .map(|(a, b)| (f16_at(a, 0) * f16_at(b, 0)) as f64)
        .sum::<f64>();
    debug_assert_eq!(w.len(), 2 * n);
    finish_float_dot(acc, tail)
}

/// bf16 -> f32 for 8 values.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16x8(b: &[u8; 16]) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load16(b))))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut wi = w.chunks_exact(64);
    let mut xi = x.chunks_exact(64);
    for (wc, xc) in (&mut wi).zip(&mut xi) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(bf16x8(arr(wc, 16 * k)), bf16x8(arr(xc, 16 * k)), *a);
        }
    }
    let tail = (wi.remainder().chunks_exact(2))
        .zip(xi.remainder().chunks_exact(2))
        .map(|(a, b)| {
            let a = bf16_to_f32(u16::from_le_bytes([a[0], a[1]]));
            let b = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            (a * b) as f64
        })
        .sum::<f64>();
    debug_assert_eq!(w.len(), 2 * n);
    finish_float_dot(acc, tail)
}

// ---------------------------------------------------------------------------------------------
// Quantizers: exactly the bytes of the scalar versions.

/// |v| for 8 lanes.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn abs_ps(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

/// Packs 32 i32 (each in -128..=127) into 32 bytes in order.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_i32x32(v: [__m256i; 4]) -> __m256i {
    // The packs work within 128-bit lanes; the permute restores element order.
    let a = _mm256_packs_epi32(v[0], v[1]);
    let b = _mm256_packs_epi32(v[2], v[3]);
    let p = _mm256_packs_epi16(a, b);
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// One Q8_0 / Q8_1 block; returns `d` and the sum of the quants.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_block(x: &[f32], qs: &mut [u8; 32]) -> (f32, i32) {
    let v = [
        load_ps(arr8(x, 0)),
        load_ps(arr8(x, 8)),
        load_ps(arr8(x, 16)),
        load_ps(arr8(x, 24)),
    ];
    let mut m = _mm256_setzero_ps();
    for &vk in &v {
        m = _mm256_max_ps(abs_ps(vk), m);
    }
    let amax = hmax_ps(m);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let mut q = [_mm256_setzero_si256(); 4];
    for (qk, &vk) in q.iter_mut().zip(&v) {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(vk, id),
        );
        *qk = _mm256_cvtps_epi32(r);
    }
    store32(qs, pack_i32x32(q));
    let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    (d, hsum_epi32(s))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. Lengths must have been checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q8_0_BYTES)) {
        let (d, _) = quantize_q8_block(x, (&mut y[2..]).try_into().expect("block size"));
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. Lengths must have been checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q8_1_BYTES)) {
        let (d, sum) = quantize_q8_block(x, (&mut y[4..]).try_into().expect("block size"));
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        y[2..4].copy_from_slice(&f32_to_f16(sum as f32 * d).to_le_bytes());
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. Lengths must have been checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q8_K_BYTES)) {
        quantize_q8_k_block(x, y.try_into().expect("block size"));
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_k_block(x: &[f32], y: &mut [u8; Q8_K_BYTES]) {
    let mut m = _mm256_setzero_ps();
    for k in 0..QK_K / 8 {
        m = _mm256_max_ps(abs_ps(load_ps(arr8(x, 8 * k))), m);
    }
    let amax = hmax_ps(m);
    if amax == 0.0 {
        y.fill(0);
        return;
    }
    // The scale keeps the sign of the first element of largest magnitude.
    let amaxv = _mm256_set1_ps(amax);
    let mut first = 0;
    for k in 0..QK_K / 8 {
        let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(abs_ps(load_ps(arr8(x, 8 * k))), amaxv);
        let mask = _mm256_movemask_ps(eq);
        if mask != 0 {
            first = 8 * k + mask.trailing_zeros() as usize;
            break;
        }
    }
    let iscale = -127.0 / x[first];
    let is = _mm256_set1_ps(iscale);
    let max_q = _mm256_set1_epi32(127);
    for g in 0..QK_K / 32 {
        let mut q = [_mm256_setzero_si256(); 4];
        for (k, qk) in q.iter_mut().enumerate() {
            let v = _mm256_mul_ps(load_ps(arr8(x, 32 * g + 8 * k)), is);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            *qk = _mm256_min_epi32(_mm256_cvtps_epi32(r), max_q);
        }
        store32(arr_mut(y, Q8_K_QS + 32 * g), pack_i32x32(q));
        let s0 = hsum_epi32(_mm256_add_epi32(q[0], q[1])) as i16;
        let s1 = hsum_epi32(_mm256_add_epi32(q[2], q[3])) as i16;
        let o = Q8_K_BSUMS + 4 * g;
        y[o..o + 2].copy_from_slice(&s0.to_le_bytes());
        y[o + 2..o + 4].copy_from_slice(&s1.to_le_bytes());
    }
    y[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// `b[off..off + 32]` as a mutable array reference.
#[inline(always)]
fn arr_mut(b: &mut [u8], off: usize) -> &mut [u8; 32] {
    (&mut b[off..off + 32]).try_into().expect("in bounds")
}
