//! `exp` by Cody-Waite reduction and a degree-6 polynomial, on one lane and on eight AVX2
//! lanes with the same operations in the same order, so the two agree bit for bit: the
//! kernels that need many exponentials (softmax, SiLU) vectorise with it, and their portable
//! versions give the same results. Relative error below 2e-7 on its clamped range.

/// ln 2 split in a part exact in f32 and a remainder (Cody-Waite reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Below this, exp is clamped (e^-87.3 is the smallest normal f32's order).
const EXP_MIN: f32 = -87.3;
/// Above this, exp is clamped, so its power of two stays finite (e^88 ≈ 1.65e38).
const EXP_MAX: f32 = 88.0;
/// Taylor coefficients 1/k! for k = 6 down to 2; |r| <= ln2 / 2 keeps the error < 2e-7.
const C: [f32; 5] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5];

/// e^x, `x` clamped to [-87.3, 88].
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = C[0];
    for c in &C[1..] {
        p = p.mul_add(r, *c);
    }
    let p = p.mul_add(r, 1.0).mul_add(r, 1.0);
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{C, EXP_MAX, EXP_MIN, LN2_HI, LN2_LO};

    /// [`super::exp`] on 8 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN)),
            _mm256_set1_ps(EXP_MAX),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(C[0]);
        for c in &C[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let one = _mm256_set1_ps(1.0);
        let p = _mm256_fmadd_ps(_mm256_fmadd_ps(p, r, one), r, one);
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Close to libm's exp, and outside the range clamped to finite values.
        #[test]
        fn exp_is_accurate(x in -100.0f32..100.0) {
            let got = exp(x);
            let want = x.clamp(EXP_MIN, EXP_MAX).exp();
            proptest::prop_assert!(got.is_finite());
            proptest::prop_assert!((got - want).abs() <= 4e-7 * want, "{x}: {got} vs {want}");
        }

        /// The eight-lane version gives the one-lane version's bits.
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn exp8_matches_exp(xs in proptest::array::uniform8(-100.0f32..100.0)) {
            if crate::quant::avx2_available() {
                let mut got = [0.0f32; 8];
                // SAFETY: the CPU has AVX2 and FMA (checked above); both arrays hold 8 floats.
                unsafe {
                    use std::arch::x86_64::*;
                    let v = x86::exp8(_mm256_loadu_ps(xs.as_ptr()));
                    _mm256_storeu_ps(got.as_mut_ptr(), v);
                }
                for (g, x) in got.iter().zip(xs) {
                    proptest::prop_assert_eq!(g.to_bits(), exp(x).to_bits());
                }
            }
        }
    }
}
