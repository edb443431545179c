//! Sums of unsigned-byte × signed-byte products in 32-bit lanes, the inner step of the
//! row-grouped kernels ([`crate::packed`], [`crate::interleaved`]), in two instruction sets:
//! AVX2's `vpmaddubsw` (pairs into i16) then `vpmaddwd` (into i32), or AVX-VNNI's `vpdpbusd`
//! (four products straight into i32, one instruction). Both give the same integer sums, so a
//! kernel's output does not depend on which one ran.

use std::arch::x86_64::*;
use std::sync::OnceLock;

/// The instructions a kernel sums byte products with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByteDot {
    Avx2,
    Vnni,
}

impl ByteDot {
    /// The best the CPU has, when it has AVX2/FMA/F16C at all (checked once). Setting
    /// `WEFT_NO_VNNI` in the environment keeps AVX-VNNI machines on the AVX2 instructions.
    pub(crate) fn detect() -> Option<ByteDot> {
        static DETECTED: OnceLock<Option<ByteDot>> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let no_vnni = std::env::var_os("WEFT_NO_VNNI").is_some();
            [ByteDot::Vnni, ByteDot::Avx2]
                .into_iter()
                .find(|d| d.runs_here() && !(no_vnni && *d == ByteDot::Vnni))
        })
    }

    /// Every kind this CPU can run (for tests that check each against the scalar kernels).
    #[cfg(test)]
    pub(crate) fn all_available() -> Vec<ByteDot> {
        [ByteDot::Avx2, ByteDot::Vnni]
            .into_iter()
            .filter(|d| d.runs_here())
            .collect()
    }

    /// Whether the CPU has this kind's instructions (and the kernels' AVX2/FMA/F16C).
    fn runs_here(self) -> bool {
        crate::quant::avx2_available()
            && (self == ByteDot::Avx2 || is_x86_feature_detected!("avxvnni"))
    }
}

/// One way of summing byte products, for kernels defined by [`byte_dot_kernel`]: each is
/// inlined into a kernel compiled with the features it needs.
pub(crate) trait U8I8Dot {
    /// `acc` plus, in each i32 lane, the lane's `4 * N` products `u[k]` (unsigned) times
    /// `x[k]` (signed) bytes.
    ///
    /// # Safety
    /// The CPU must have the instructions (AVX2, and AVX-VNNI for [`Vnni`]), and the `2 * N`
    /// products that meet in each i16 lane must sum to under 2^15 in magnitude ([`Avx2`] sums
    /// them there; the bound makes the result exact either way).
    unsafe fn dot<const N: usize>(acc: __m256i, u: &[__m256i; N], x: &[__m256i; N]) -> __m256i;

    /// As [`U8I8Dot::dot`] where only each vector's own product pairs are bounded (by 2^15):
    /// [`Avx2`] widens each vector's to i32 before adding.
    ///
    /// # Safety
    /// As [`U8I8Dot::dot`], for the two products that meet in an i16 lane of one vector.
    unsafe fn dot_each<const N: usize>(acc: __m256i, u: &[__m256i; N], x: &[__m256i; N])
        -> __m256i;
}

/// `vpmaddubsw` per pair of vectors, summed in i16, then `vpmaddwd` into i32.
pub(crate) struct Avx2;

/// `vpdpbusd` per pair of vectors.
pub(crate) struct Vnni;

impl U8I8Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot<const N: usize>(acc: __m256i, u: &[__m256i; N], x: &[__m256i; N]) -> __m256i {
        // SAFETY: the caller guarantees AVX2 and the i16 bound.
        unsafe {
            let mut p = _mm256_maddubs_epi16(u[0], x[0]);
            for k in 1..N {
                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(u[k], x[k]));
            }
            _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
        }
    }

    #[inline(always)]
    unsafe fn dot_each<const N: usize>(
        acc: __m256i,
        u: &[__m256i; N],
        x: &[__m256i; N],
    ) -> __m256i {
        // SAFETY: the caller guarantees AVX2 and the i16 bound of each vector.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = acc;
            for k in 0..N {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u[k], x[k]), ones);
                acc = _mm256_add_epi32(acc, p);
            }
            acc
        }
    }
}

impl U8I8Dot for Vnni {
    #[inline(always)]
    unsafe fn dot<const N: usize>(acc: __m256i, u: &[__m256i; N], x: &[__m256i; N]) -> __m256i {
        // SAFETY: the caller guarantees AVX-VNNI. Two chains, so that consecutive
        // `vpdpbusd`s do not all wait for each other's results.
        unsafe {
            let mut a = acc;
            let mut b = _mm256_setzero_si256();
            for k in 0..N {
                if k % 2 == 0 {
                    a = _mm256_dpbusd_avx_epi32(a, u[k], x[k]);
                } else {
                    b = _mm256_dpbusd_avx_epi32(b, u[k], x[k]);
                }
            }
            _mm256_add_epi32(a, b)
        }
    }

    #[inline(always)]
    unsafe fn dot_each<const N: usize>(
        acc: __m256i,
        u: &[__m256i; N],
        x: &[__m256i; N],
    ) -> __m256i {
        // SAFETY: the caller guarantees AVX-VNNI; `vpdpbusd` has no i16 step.
        unsafe { Vnni::dot(acc, u, x) }
    }
}

/// Defines a kernel twice from one body: `$avx2` with AVX2's byte products and `$vnni` with
/// AVX-VNNI's, each a `#[target_feature]` function with the features its products need, which
/// the body's closures inherit (a generic `#[inline(always)]` body would leave its closures
/// without them, and their intrinsics as calls). The body names the products `D`.
macro_rules! byte_dot_kernel {
    (
        $(#[$attr:meta])*
        $avx2:ident, $vnni:ident<$(const $g:ident: $gt:ty),*>($($arg:ident: $ty:ty),* $(,)?)
        $body:block
    ) => {
        $(#[$attr])*
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $avx2<$(const $g: $gt),*>($($arg: $ty),*) {
            type D = $crate::byte_dot::Avx2;
            $body
        }

        $(#[$attr])*
        #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
        unsafe fn $vnni<$(const $g: $gt),*>($($arg: $ty),*) {
            type D = $crate::byte_dot::Vnni;
            $body
        }
    };
}
pub(crate) use byte_dot_kernel;
