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
use super::{act_scales, ActScale, GgmlType};

/// Whether the CPU has AVX2, FMA and F16C (checked once). Setting `WEFT_FORCE_SCALAR` in the
/// environment turns the SIMD paths off.
pub(crate) fn available() -> bool {
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
    let bits = u16::from_le_bytes([b[off], b[off + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
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

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hmax_ps(v: __m256) -> f32 {
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
// Dot products, as tiles of weight rows x activation rows.
//
// A weight type's kernel splits its block work in two: `prepare` decodes one weight block
// (unpacks the quants, builds the scale vectors) and `apply` multiplies the decoded block by one
// activation block. A tile of R weight rows by T activation rows decodes each weight block once
// and applies it T times, so the unpacking is paid once per T tokens and each activation block
// loaded from L1 serves R rows: that reuse is what makes prompt processing compute-bound on the
// integer multiplies instead of on unpacking.

/// A weight type's block kernel (see the section comment).
trait BlockKernel {
    /// Bytes of one weight block and of one activation block.
    const WB: usize;
    const XB: usize;
    /// A decoded weight block.
    type Decoded: Copy;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `w` is one whole weight block.
    unsafe fn prepare(w: &[u8]) -> Self::Decoded;

    /// Adds the block's vector contribution to `acc` and any scalar one to `extra`.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `x` is one whole activation block whose scale
    /// is `xs`.
    unsafe fn apply(w: &Self::Decoded, x: &[u8], xs: ActScale, acc: &mut __m256, extra: &mut f32);
}

/// How far ahead of the current weight block [`tile`] prefetches, in bytes.
const PREFETCH_AHEAD: usize = 4096;

/// Computes `out[r * T + t]` = dot(weight row r, activation row t) for an R x T tile.
/// `w` holds the R rows `wrow` bytes apart, `x` the T rows `xrow` bytes apart, `xs` their
/// per-block scales (`nb` per row).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; the slices must hold whole rows of `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<K: BlockKernel, const R: usize, const T: usize>(
    nb: usize,
    w: &[u8],
    wrow: usize,
    x: &[u8],
    xrow: usize,
    xs: &[ActScale],
    out: &mut [f32],
) {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut extra = [[0.0f32; T]; R];
    for b in 0..nb {
        for r in 0..R {
            let wo = r * wrow + b * K::WB;
            // Decode streams the weights from memory once: ask for the lines a few tiles ahead
            // (possibly past this tile's rows, which is harmless for a prefetch), every line of
            // the block, since a K-quant block spans several.
            for off in (0..K::WB).step_by(64) {
                let ahead = w.as_ptr().wrapping_add(wo + PREFETCH_AHEAD + off);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
            // SAFETY: the caller guarantees the CPU features and whole blocks.
            let decoded = unsafe { K::prepare(&w[wo..wo + K::WB]) };
            for t in 0..T {
                let xo = t * xrow + b * K::XB;
                // SAFETY: as above.
                unsafe {
                    K::apply(
                        &decoded,
                        &x[xo..xo + K::XB],
                        xs[t * nb + b],
                        &mut acc[r][t],
                        &mut extra[r][t],
                    )
                };
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            out[r * T + t] = hsum_ps(acc[r][t]) + extra[r][t];
        }
    }
}

/// Runs [`tile`] for the weight type's kernel, with R and T as constants (the shapes the
/// matrix product uses: up to 4 rows by up to 4 tokens).
///
/// # Safety
/// As [`tile`]; `rows` and `tokens` must be in 1..=4.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_of<K: BlockKernel>(
    nb: usize,
    w: &[u8],
    wrow: usize,
    x: &[u8],
    xrow: usize,
    xs: &[ActScale],
    rows: usize,
    tokens: usize,
    out: &mut [f32],
) {
    macro_rules! shapes {
        ($(($r:literal, $t:literal)),*) => {
            match (rows, tokens) {
                // SAFETY: guaranteed by the caller.
                $(($r, $t) => unsafe { tile::<K, $r, $t>(nb, w, wrow, x, xrow, xs, out) },)*
                _ => unreachable!("tile shape {rows}x{tokens}"),
            }
        };
    }
    shapes!(
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
        (2, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (3, 1),
        (3, 2),
        (3, 3),
        (3, 4),
        (4, 1),
        (4, 2),
        (4, 3),
        (4, 4)
    )
}

/// The SIMD tile for `ty` over `nb` blocks per row, or `false` when there is none (the float
/// formats and the activation formats). Arguments as [`tile`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]); `rows` and `tokens` in 1..=4;
/// the slices hold whole rows.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dot_tile(
    ty: GgmlType,
    nb: usize,
    w: &[u8],
    wrow: usize,
    x: &[u8],
    xrow: usize,
    xs: &[ActScale],
    rows: usize,
    tokens: usize,
    out: &mut [f32],
) -> bool {
    macro_rules! run {
        ($k:ty) => {
            // SAFETY: guaranteed by the caller.
            unsafe { tile_of::<$k>(nb, w, wrow, x, xrow, xs, rows, tokens, out) }
        };
    }
    match ty {
        GgmlType::Q4_0 => run!(Q4_0),
        GgmlType::Q4_1 => run!(Q4_1),
        GgmlType::Q5_0 => run!(Q5_0),
        GgmlType::Q5_1 => run!(Q5_1),
        GgmlType::Q8_0 => run!(Q8_0),
        GgmlType::Q2_K => run!(Q2_K),
        GgmlType::Q3_K => run!(Q3_K),
        GgmlType::Q4_K => run!(Q4_K),
        GgmlType::Q5_K => run!(Q5_K),
        GgmlType::Q6_K => run!(Q6_K),
        _ => return false,
    }
    true
}

/// The SIMD dot product for `ty`, or `None` when there is none. Lengths must have been checked.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
pub(super) unsafe fn vec_dot(ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> Option<f32> {
    // SAFETY (all calls below): guaranteed by the caller.
    match ty {
        GgmlType::F32 => return Some(unsafe { dot_f32(n, w, x) }),
        GgmlType::F16 => return Some(unsafe { dot_f16(n, w, x) }),
        GgmlType::BF16 => return Some(unsafe { dot_bf16(n, w, x) }),
        GgmlType::Q8_1 | GgmlType::Q8_K => return None,
        _ => {}
    }
    // A 1 x 1 tile, over chunks of blocks whose activation scales fit on the stack.
    const CHUNK: usize = 64;
    let (wb, xb) = (ty.block_bytes(), ty.dot_type().block_bytes());
    let nb = n / ty.block_len();
    let mut xs = [ActScale::default(); CHUNK];
    let mut total = 0.0;
    for c0 in (0..nb).step_by(CHUNK) {
        let c = (nb - c0).min(CHUNK);
        let (wc, xc) = (&w[c0 * wb..(c0 + c) * wb], &x[c0 * xb..(c0 + c) * xb]);
        act_scales(ty.dot_type(), xc, &mut xs[..c]);
        let mut out = [0.0f32];
        // SAFETY: guaranteed by the caller; one row by one token of whole blocks.
        unsafe { dot_tile(ty, c, wc, c * wb, xc, c * xb, &xs[..c], 1, 1, &mut out) };
        total += out[0];
    }
    Some(total)
}

/// A 32-element block whose quants, once decoded, are signed bytes (Q4_0, Q5_0, Q8_0): they
/// multiply through `maddubs` as |q| times the activations with q's sign.
#[derive(Clone, Copy)]
struct SignedBlock {
    abs: __m256i,
    q: __m256i,
    d: f32,
}

/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed_block(q: __m256i, d: f32) -> SignedBlock {
    SignedBlock {
        abs: _mm256_sign_epi8(q, q),
        q,
        d,
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; `x` is a Q8_0 block (no quant is -128).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn apply_signed(w: &SignedBlock, x: &[u8], xs: ActScale, acc: &mut __m256) {
    let y = _mm256_sign_epi8(load32(arr(x, 2)), w.q);
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w.abs, y), _mm256_set1_epi16(1));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(w.d * xs.d), _mm256_cvtepi32_ps(p), *acc);
}

/// A 32-element block with unsigned quants and a min (Q4_1, Q5_1): d * q + m.
#[derive(Clone, Copy)]
struct MinBlock {
    q: __m256i,
    d: f32,
    m: f32,
}

/// # Safety
/// The CPU must support AVX2 and FMA; `x` is a Q8_1 block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn apply_min(w: &MinBlock, x: &[u8], xs: ActScale, acc: &mut __m256, extra: &mut f32) {
    let p = dot_u8(w.q, load32(arr(x, 4)));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(w.d * xs.d), _mm256_cvtepi32_ps(p), *acc);
    *extra += w.m * xs.s;
}

/// Defines a 32-element block kernel from its decoder.
macro_rules! block32_kernel {
    ($name:ident, $wb:expr, $xb:expr, $decoded:ty, $apply:expr, |$w:ident| $prepare:block) => {
        #[allow(non_camel_case_types)]
        struct $name;
        impl BlockKernel for $name {
            const WB: usize = $wb;
            const XB: usize = $xb;
            type Decoded = $decoded;

            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn prepare($w: &[u8]) -> $decoded {
                $prepare
            }

            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn apply(
                w: &$decoded,
                x: &[u8],
                xs: ActScale,
                acc: &mut __m256,
                extra: &mut f32,
            ) {
                $apply(w, x, xs, acc, extra)
            }
        }
    };
}

block32_kernel!(
    Q8_0,
    Q8_0_BYTES,
    Q8_0_BYTES,
    SignedBlock,
    |w, x, xs, acc, _| apply_signed(w, x, xs, acc),
    |w| { signed_block(load32(arr(w, 2)), f16_at_c(w, 0)) }
);

block32_kernel!(
    Q4_0,
    Q4_0_BYTES,
    Q8_0_BYTES,
    SignedBlock,
    |w, x, xs, acc, _| apply_signed(w, x, xs, acc),
    |w| {
        let q = _mm256_sub_epi8(nibbles32(arr(w, 2)), _mm256_set1_epi8(8));
        signed_block(q, f16_at_c(w, 0))
    }
);

block32_kernel!(
    Q5_0,
    Q5_0_BYTES,
    Q8_0_BYTES,
    SignedBlock,
    |w, x, xs, acc, _| apply_signed(w, x, xs, acc),
    |w| {
        let qh = u32::from_le_bytes(*arr(w, 2));
        // Quants without their high bit get 0xF0 or'ed in: as i8 that is q - 16.
        let low = _mm256_andnot_si256(bits32(qh), _mm256_set1_epi8(0xf0_u8 as i8));
        signed_block(_mm256_or_si256(nibbles32(arr(w, 6)), low), f16_at_c(w, 0))
    }
);

block32_kernel!(Q4_1, Q4_1_BYTES, Q8_1_BYTES, MinBlock, apply_min, |w| {
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(*arr(w, 0))));
    MinBlock {
        q: nibbles32(arr(w, 4)),
        d: _mm_cvtss_f32(dm),
        m: _mm_cvtss_f32(_mm_movehdup_ps(dm)),
    }
});

block32_kernel!(Q5_1, Q5_1_BYTES, Q8_1_BYTES, MinBlock, apply_min, |w| {
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(*arr(w, 0))));
    let qh = u32::from_le_bytes(*arr(w, 4));
    let high = _mm256_and_si256(bits32(qh), _mm256_set1_epi8(0x10));
    MinBlock {
        q: _mm256_or_si256(nibbles32(arr(w, 8)), high),
        d: _mm_cvtss_f32(dm),
        m: _mm_cvtss_f32(_mm_movehdup_ps(dm)),
    }
});

/// The 32 Q8_K quants of elements `32 * g .. 32 * g + 32`.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8k_quants(x: &[u8], g: usize) -> __m256i {
    load32(arr(x, Q8_K_QS + 32 * g))
}

/// The Q8_K block's sixteen bsums as i16 lanes.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8k_bsums(x: &[u8]) -> __m256i {
    load32(arr(x, Q8_K_BSUMS))
}

#[allow(non_camel_case_types)]
struct Q2_K;
impl BlockKernel for Q2_K {
    const WB: usize = Q2_K_BYTES;
    const XB: usize = Q8_K_BYTES;
    type Decoded = [u8; Q2_K_BYTES];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(w: &[u8]) -> [u8; Q2_K_BYTES] {
        *arr(w, 0)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn apply(w: &[u8; Q2_K_BYTES], x: &[u8], xs: ActScale, acc: &mut __m256, e: &mut f32) {
        // Q2_K and Q3_K blocks are decoded per product (they are rarely on a hot path).
        let raw = load16(arr(w, 0));
        let m4 = _mm_set1_epi8(0x0f);
        let scales = _mm_and_si128(raw, m4);
        let mins = _mm_and_si128(_mm_srli_epi16::<4>(raw), m4);
        let summs = hsum_epi32(_mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), q8k_bsums(x)));
        let m3 = _mm256_set1_epi8(3);
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let q = load32(arr(w, Q2_K_QS + 32 * half));
            for shift in 0..4 {
                let g = 4 * half + shift;
                let shifted = _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * shift as i32));
                let p = _mm256_maddubs_epi16(_mm256_and_si256(shifted, m3), q8k_quants(x, g));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(scales, 2 * g)));
            }
        }
        let dd = f16x2_times(w, Q2_K_D, xs.d);
        *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), *acc);
        *e -= _mm_cvtss_f32(_mm_movehdup_ps(dd)) * summs as f32;
    }
}

#[allow(non_camel_case_types)]
struct Q3_K;
impl BlockKernel for Q3_K {
    const WB: usize = Q3_K_BYTES;
    const XB: usize = Q8_K_BYTES;
    type Decoded = [u8; Q3_K_BYTES];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(w: &[u8]) -> [u8; Q3_K_BYTES] {
        *arr(w, 0)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn apply(w: &[u8; Q3_K_BYTES], x: &[u8], xs: ActScale, acc: &mut __m256, _: &mut f32) {
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
                let shifted = _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * shift as i32));
                let lo = _mm256_and_si256(shifted, m3);
                // 4 where the high bit is clear: q = lo - 4 there.
                let bit = _mm256_set1_epi8((1u8 << g) as i8);
                let clear = _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), zero);
                let h4 = _mm256_and_si256(clear, four);
                let y = q8k_quants(x, g);
                let p = _mm256_sub_epi16(_mm256_maddubs_epi16(lo, y), _mm256_maddubs_epi16(h4, y));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(scales, 2 * g)));
            }
        }
        let d = f16_at_c(w, Q3_K_D) * xs.d;
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
    }
}

/// A decoded Q4_K / Q5_K super-block: eight 32-element groups of unsigned quants, each group's
/// 6-bit scale as i16 lanes, the eight 6-bit mins, and d, dmin.
#[derive(Clone, Copy)]
struct K4Block {
    q: [__m256i; 8],
    scale: [__m256i; 8],
    mins: __m128i,
    d: f32,
    dmin: f32,
}

/// The scales, mins, d and dmin of a Q4_K / Q5_K block, with `q` still to fill.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_header(w: &[u8]) -> K4Block {
    let (sc, mn) = k4_scales_mins_packed(arr(w, 4));
    let scales = _mm256_broadcastsi128_si256(_mm_cvtsi64_si128(sc as i64));
    // Each i16 takes byte g as its low byte and zero (index with the top bit set) as its high.
    let scale = std::array::from_fn(|g| {
        _mm256_shuffle_epi8(scales, _mm256_set1_epi16((0x8000 | g) as i16))
    });
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(*arr(w, 0))));
    K4Block {
        q: [_mm256_setzero_si256(); 8],
        scale,
        mins: _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64)),
        d: _mm_cvtss_f32(dm),
        dmin: _mm_cvtss_f32(_mm_movehdup_ps(dm)),
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; `x` is a Q8_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn apply_k4(w: &K4Block, x: &[u8], xs: ActScale, acc: &mut __m256, e: &mut f32) {
    let mut sumi = _mm256_setzero_si256();
    for g in 0..8 {
        let p = _mm256_maddubs_epi16(w.q[g], q8k_quants(x, g));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, w.scale[g]));
    }
    // Σ mins[g] * (bsums[2g] + bsums[2g + 1]); pair sums fit i16 (|sum of 32 quants| <= 4064).
    let bsums = q8k_bsums(x);
    let pairs = _mm_hadd_epi16(
        _mm256_castsi256_si128(bsums),
        _mm256_extracti128_si256::<1>(bsums),
    );
    let s = _mm_madd_epi16(w.mins, pairs);
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let summs = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(w.d * xs.d), _mm256_cvtepi32_ps(sumi), *acc);
    *e -= w.dmin * xs.d * summs as f32;
}

#[allow(non_camel_case_types)]
struct Q4_K;
impl BlockKernel for Q4_K {
    const WB: usize = Q4_K_BYTES;
    const XB: usize = Q8_K_BYTES;
    type Decoded = K4Block;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(w: &[u8]) -> K4Block {
        let mut b = k4_header(w);
        let m4 = _mm256_set1_epi8(0x0f);
        for c in 0..4 {
            let q = load32(arr(w, Q4_K_QS + 32 * c));
            b.q[2 * c] = _mm256_and_si256(q, m4);
            b.q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
        }
        b
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn apply(w: &K4Block, x: &[u8], xs: ActScale, acc: &mut __m256, e: &mut f32) {
        apply_k4(w, x, xs, acc, e)
    }
}

#[allow(non_camel_case_types)]
struct Q5_K;
impl BlockKernel for Q5_K {
    const WB: usize = Q5_K_BYTES;
    const XB: usize = Q8_K_BYTES;
    type Decoded = K4Block;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(w: &[u8]) -> K4Block {
        let mut b = k4_header(w);
        let m4 = _mm256_set1_epi8(0x0f);
        let sixteen = _mm256_set1_epi8(16);
        let qh = load32(arr(w, Q5_K_QH));
        let high = |bit: usize| {
            let b = _mm256_set1_epi8((1u8 << bit) as i8);
            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b), b), sixteen)
        };
        for c in 0..4 {
            let q = load32(arr(w, Q5_K_QS + 32 * c));
            b.q[2 * c] = _mm256_or_si256(_mm256_and_si256(q, m4), high(2 * c));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            b.q[2 * c + 1] = _mm256_or_si256(hi, high(2 * c + 1));
        }
        b
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn apply(w: &K4Block, x: &[u8], xs: ActScale, acc: &mut __m256, e: &mut f32) {
        apply_k4(w, x, xs, acc, e)
    }
}

/// A decoded Q6_K super-block: eight 32-element groups of quants stored as q + 32 (0..64),
/// each group's pair of 16-element scales as i16 lanes, all sixteen scales as i16, and d.
#[derive(Clone, Copy)]
struct Q6Block {
    q: [__m256i; 8],
    scale: [__m256i; 8],
    scales16: __m256i,
    d: f32,
}

#[allow(non_camel_case_types)]
struct Q6_K;
impl BlockKernel for Q6_K {
    const WB: usize = Q6_K_BYTES;
    const XB: usize = Q8_K_BYTES;
    type Decoded = Q6Block;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(w: &[u8]) -> Q6Block {
        let scales = load16(arr(w, Q6_K_SCALES));
        let m4 = _mm256_set1_epi8(0x0f);
        let m30 = _mm256_set1_epi8(0x30);
        let mut q = [_mm256_setzero_si256(); 8];
        for half in 0..2 {
            let ql0 = load32(arr(w, 64 * half));
            let ql1 = load32(arr(w, 64 * half + 32));
            let qh = load32(arr(w, Q6_K_QH + 32 * half));
            let or = |lo, hi| _mm256_or_si256(_mm256_and_si256(lo, m4), _mm256_and_si256(hi, m30));
            q[4 * half] = or(ql0, _mm256_slli_epi16::<4>(qh));
            q[4 * half + 1] = or(ql1, _mm256_slli_epi16::<2>(qh));
            q[4 * half + 2] = or(_mm256_srli_epi16::<4>(ql0), qh);
            q[4 * half + 3] = or(_mm256_srli_epi16::<4>(ql1), _mm256_srli_epi16::<2>(qh));
        }
        Q6Block {
            q,
            scale: std::array::from_fn(|g| scale_pair(scales, 2 * g)),
            scales16: _mm256_cvtepi8_epi16(scales),
            d: f16_at_c(w, Q6_K_D),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn apply(w: &Q6Block, x: &[u8], xs: ActScale, acc: &mut __m256, _: &mut f32) {
        // Σ scale * (q + 32) * y, minus 32 * Σ scale * bsum.
        let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(w.scales16, q8k_bsums(x)));
        let mut sumi = _mm256_setzero_si256();
        for g in 0..8 {
            let p = _mm256_maddubs_epi16(w.q[g], q8k_quants(x, g));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, w.scale[g]));
        }
        let sumi = _mm256_sub_epi32(sumi, offset);
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(w.d * xs.d), _mm256_cvtepi32_ps(sumi), *acc);
    }
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

/// f16 weights · f32 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut wi = w.chunks_exact(64);
    let mut xi = x.chunks_exact(128);
    for (wc, xc) in (&mut wi).zip(&mut xi) {
        for (k, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_cvtph_ps(load16(arr(wc, 16 * k)));
            let xv = _mm256_castsi256_ps(load32(arr(xc, 32 * k)));
            *a = _mm256_fmadd_ps(wv, xv, *a);
        }
    }
    let tail = (wi.remainder().chunks_exact(2))
        .zip(xi.remainder().chunks_exact(4))
        .map(|(a, b)| (f16_at(a, 0) * f32_at(b, 0)) as f64)
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

/// bf16 weights · f32 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut wi = w.chunks_exact(64);
    let mut xi = x.chunks_exact(128);
    for (wc, xc) in (&mut wi).zip(&mut xi) {
        for (k, a) in acc.iter_mut().enumerate() {
            let xv = _mm256_castsi256_ps(load32(arr(xc, 32 * k)));
            *a = _mm256_fmadd_ps(bf16x8(arr(wc, 16 * k)), xv, *a);
        }
    }
    let tail = (wi.remainder().chunks_exact(2))
        .zip(xi.remainder().chunks_exact(4))
        .map(|(a, b)| (bf16_to_f32(u16::from_le_bytes([a[0], a[1]])) * f32_at(b, 0)) as f64)
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
