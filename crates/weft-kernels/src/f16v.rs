//! Vector operations on f16 data with f32 arithmetic, rounding exactly where ggml's CPU
//! backend rounds: a dot product of two f16 rows summed in four 8-lane accumulators, and an
//! f16 accumulator that is rounded back to f16 after every multiply-add or scale. Attention
//! uses them so that its results match llama.cpp's bit for bit on the same inputs.
//!
//! Each operation has a scalar version that emulates the SIMD lane order exactly, so both
//! give identical results; the AVX2+F16C versions are chosen at run time.

use half::f16;

/// Elements per SIMD register (f32 lanes).
const LANES: usize = 8;
/// Registers processed per step (ggml's GGML_F16_STEP / GGML_F16_EPR).
const ARR: usize = 4;
const STEP: usize = LANES * ARR;

#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    use std::sync::OnceLock;
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var_os("WEFT_FORCE_SCALAR").is_none()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// `sum(a[i] * b[i])` in ggml's order.
pub fn dot(a: &[f16], b: &[f16]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked above); lengths are equal.
        return unsafe { avx2::dot(a, b) };
    }
    scalar::dot(a, b)
}

/// `y = f16(x * v + y)` element-wise.
pub fn mad(y: &mut [f16], x: &[f16], v: f32) {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: as in `dot`.
        return unsafe { avx2::mad(y, x, v) };
    }
    scalar::mad(y, x, v)
}

/// `y = f16(y * v)` element-wise.
pub fn scale(y: &mut [f16], v: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: as in `dot`.
        return unsafe { avx2::scale(y, v) };
    }
    scalar::scale(y, v)
}

pub mod scalar {
    use super::*;

    pub fn dot(a: &[f16], b: &[f16]) -> f32 {
        let np = a.len() / STEP * STEP;
        let mut sum = [[0.0f32; LANES]; ARR];
        for i in (0..np).step_by(STEP) {
            for (j, acc) in sum.iter_mut().enumerate() {
                for (l, s) in acc.iter_mut().enumerate() {
                    let k = i + j * LANES + l;
                    *s = a[k].to_f32().mul_add(b[k].to_f32(), *s);
                }
            }
        }
        // Pairwise register reduction, then the 8 lanes as _mm_hadd_ps does.
        let [s0, s1, s2, s3] = sum;
        let r: [f32; LANES] = std::array::from_fn(|l| (s0[l] + s2[l]) + (s1[l] + s3[l]));
        let sum = [r];
        let t0: [f32; 4] = std::array::from_fn(|l| sum[0][l] + sum[0][l + 4]);
        let t1 = [t0[0] + t0[1], t0[2] + t0[3]];
        let mut total = f64::from(t1[0] + t1[1]);
        for k in np..a.len() {
            total += f64::from(a[k].to_f32() * b[k].to_f32());
        }
        total as f32
    }

    pub fn mad(y: &mut [f16], x: &[f16], v: f32) {
        let np = y.len() / STEP * STEP;
        for (yi, xi) in y[..np].iter_mut().zip(&x[..np]) {
            *yi = f16::from_f32(xi.to_f32().mul_add(v, yi.to_f32()));
        }
        for (yi, xi) in y[np..].iter_mut().zip(&x[np..]) {
            *yi = f16::from_f32(yi.to_f32() + xi.to_f32() * v);
        }
    }

    pub fn scale(y: &mut [f16], v: f32) {
        for yi in y {
            *yi = f16::from_f32(yi.to_f32() * v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: &[f16], i: usize) -> __m256 {
        debug_assert!(i + LANES <= p.len());
        // SAFETY: 8 f16 values from index i are in bounds (callers loop below `np`).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.as_ptr().add(i) as *const __m128i)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store(p: &mut [f16], i: usize, v: __m256) {
        debug_assert!(i + LANES <= p.len());
        // SAFETY: as in `load`; round to nearest even like F16C's default.
        unsafe {
            _mm_storeu_si128(
                p.as_mut_ptr().add(i) as *mut __m128i,
                _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(v),
            )
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; `a` and `b` have equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(a: &[f16], b: &[f16]) -> f32 {
        let np = a.len() / STEP * STEP;
        let mut sum = [_mm256_setzero_ps(); ARR];
        for i in (0..np).step_by(STEP) {
            for (j, s) in sum.iter_mut().enumerate() {
                // SAFETY: i + j*8 + 8 <= np <= len.
                let (x, y) = unsafe { (load(a, i + j * LANES), load(b, i + j * LANES)) };
                *s = _mm256_fmadd_ps(x, y, *s);
            }
        }
        sum[0] = _mm256_add_ps(sum[0], sum[2]);
        sum[1] = _mm256_add_ps(sum[1], sum[3]);
        sum[0] = _mm256_add_ps(sum[0], sum[1]);
        let t0 = _mm_add_ps(
            _mm256_castps256_ps128(sum[0]),
            _mm256_extractf128_ps::<1>(sum[0]),
        );
        let t1 = _mm_hadd_ps(t0, t0);
        let mut total = f64::from(_mm_cvtss_f32(_mm_hadd_ps(t1, t1)));
        for k in np..a.len() {
            total += f64::from(a[k].to_f32() * b[k].to_f32());
        }
        total as f32
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; `y` and `x` have equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad(y: &mut [f16], x: &[f16], v: f32) {
        let np = y.len() / STEP * STEP;
        let vv = _mm256_set1_ps(v);
        for i in (0..np).step_by(LANES) {
            // SAFETY: i + 8 <= np <= len.
            unsafe { store(y, i, _mm256_fmadd_ps(load(x, i), vv, load(y, i))) };
        }
        super::scalar::mad(&mut y[np..], &x[np..], v);
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale(y: &mut [f16], v: f32) {
        let np = y.len() / LANES * LANES;
        let vv = _mm256_set1_ps(v);
        for i in (0..np).step_by(LANES) {
            // SAFETY: i + 8 <= np <= len.
            unsafe { store(y, i, _mm256_mul_ps(load(y, i), vv)) };
        }
        super::scalar::scale(&mut y[np..], v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn halfs(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    proptest! {
        #[test]
        fn simd_matches_scalar_bit_for_bit(
            a in proptest::collection::vec(-4.0f32..4.0, 0..200),
            seed in -3.0f32..3.0,
        ) {
            let b: Vec<f32> = a.iter().map(|x| x * seed + 0.25).collect();
            let (ha, hb) = (halfs(&a), halfs(&b));
            prop_assert_eq!(dot(&ha, &hb).to_bits(), scalar::dot(&ha, &hb).to_bits());
            let (mut y1, mut y2) = (hb.clone(), hb.clone());
            mad(&mut y1, &ha, seed);
            scalar::mad(&mut y2, &ha, seed);
            prop_assert_eq!(&y1, &y2);
            scale(&mut y1, 0.37);
            scalar::scale(&mut y2, 0.37);
            prop_assert_eq!(y1, y2);
        }
    }

    #[test]
    fn dot_is_a_dot_product() {
        let a = halfs(&(0..70).map(|i| i as f32 * 0.5).collect::<Vec<_>>());
        let b = halfs(&[2.0; 70]);
        let want: f32 = (0..70).map(|i| i as f32).sum();
        assert_eq!(dot(&a, &b), want);
    }
}
