//! Element-wise f32 math for the dense encoders (Whisper's, the vision towers), written so
//! that the compiler vectorizes it: Whisper's encoder softmax alone takes ~100 million
//! exponentials per 30-second window, which libm's `expf` would make a large share of the run
//! time.

/// e^x with a relative error below 2e-7 over the f32 range (Cody-Waite reduction to
/// |r| <= ln2/2, then a degree-6 polynomial); branch-free so that loops over it vectorize.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    // Comparisons rather than f32::clamp/max, whose NaN rules keep the loop scalar.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Sum with eight partial sums, so that it vectorizes.
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Maximum with eight partial maxima (NaN-free inputs).
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder() {
        m = if v > m { v } else { m };
    }
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(m, |a, &b| if b > a { b } else { a })
}

/// softmax(scale * x) in place, in separate passes so that each vectorizes.
pub fn softmax_scaled(x: &mut [f32], scale: f32) {
    let m = max(x);
    for v in x.iter_mut() {
        *v = exp((*v - m) * scale);
    }
    let inv = 1.0 / sum(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), evaluated in f32.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    (1.0 - y * exp(-a * a)).copysign(x)
}

/// GELU in its erf form (Whisper's, the Qwen2.5-VL merger's), not the tanh approximation, in
/// place.
pub fn gelu_inplace(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Layer norm over each row of `x` (rows of `gamma.len()` values), eps 1e-5 (PyTorch's
/// default, Whisper's).
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], out: &mut [f32]) {
    layer_norm_eps(x, gamma, beta, 1e-5, out);
}

/// [`layer_norm`] with the model's epsilon (SigLIP's is 1e-6).
pub fn layer_norm_eps(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    for (row, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &v), &g), &b) in out.iter_mut().zip(row).zip(gamma).zip(beta) {
            *o = (v - mean) * inv * g + b;
        }
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_COEF_A: f32 = 0.044_715;

/// GELU in its tanh approximation (PyTorch's `gelu(approximate="tanh")`), in f32 with libm's
/// tanh: the reference [`gelu_tanh_inplace`] is held to.
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// [`gelu_tanh`] of every element, in place (SigLIP's MLP activation), through
/// `0.5 * (1 + tanh(u)) = e / (e + 1)` with `e = e^(2u)` from the vectorizable [`exp`]
/// (which saturates rather than overflows): libm's tanh, one call per element, took a tenth
/// of Gemma 3's vision tower.
pub fn gelu_tanh_inplace(x: &mut [f32]) {
    for v in x {
        let u = SQRT_2_OVER_PI * *v * (1.0 + GELU_COEF_A * *v * *v);
        let e = exp(2.0 * u);
        *v *= e / (e + 1.0);
    }
}

/// SiLU(gate) * up, in place into `gate`, with the vectorizable [`exp`] (the Qwen2.5-VL
/// tower's MLP: libm's exp, one call per element, left the other core idle for seconds on
/// a large image).
pub fn silu_mul_inplace(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up rows");
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// Softmax of one row in place.
pub fn softmax_inplace(x: &mut [f32]) {
    softmax_scaled(x, 1.0);
}

/// log-softmax of one row in place. The exponentials vectorize (a vocabulary's worth per beam
/// and step, which libm would make a real share of decoding); their sum goes to f64 in
/// pieces, since beam scores add these values up.
pub fn log_softmax_inplace(x: &mut [f32]) {
    let m = max(x);
    let mut total = 0.0f64;
    for piece in x.chunks(512) {
        let mut acc = [0.0f32; 8];
        let chunks = piece.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - m)).sum();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += exp(v - m);
            }
        }
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
    let lse = m + total.ln() as f32;
    for v in x.iter_mut() {
        *v -= lse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.013;
        }
        assert_eq!(exp(-1e30), exp(-87.0));
    }

    #[test]
    fn log_softmax_matches_f64() {
        let x: Vec<f32> = (0..51_865)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 9.0)
            .collect();
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let mut got = x.clone();
        got[3] = f32::NEG_INFINITY;
        log_softmax_inplace(&mut got);
        assert_eq!(got[3], f32::NEG_INFINITY);
        for (i, (&g, &v)) in got.iter().zip(&x).enumerate().filter(|&(i, _)| i != 3) {
            assert!(
                (g as f64 - (v as f64 - lse)).abs() < 2e-5,
                "{i}: {g} vs {}",
                v as f64 - lse
            );
        }
    }

    #[test]
    fn erf_matches_reference_points() {
        // Values of erf from tables.
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x})");
            assert!((erf(-x) + want).abs() < 3e-7, "erf(-{x})");
        }
    }

    #[test]
    fn gelu_tanh_inplace_matches_libm_tanh() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.01).collect();
        let mut ys = xs.clone();
        gelu_tanh_inplace(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = gelu_tanh(x);
            // Absolute slack where the reference loses 1 + tanh(u) to cancellation.
            assert!(
                (y - want).abs() <= 2e-6 * want.abs() + 1e-7,
                "{x}: {y} vs {want}"
            );
        }
    }

    #[test]
    fn silu_mul_inplace_matches_libm_exp() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.01).collect();
        let up: Vec<f32> = xs.iter().map(|x| 1.5 - x * 0.1).collect();
        let mut ys = xs.clone();
        silu_mul_inplace(&mut ys, &up);
        for ((&x, &u), &y) in xs.iter().zip(&up).zip(&ys) {
            let want = x / (1.0 + (-x).exp()) * u;
            assert!(
                (y - want).abs() <= 1e-6 * want.abs() + 1e-7,
                "{x}: {y} vs {want}"
            );
        }
    }
}
