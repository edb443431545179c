//! Element-wise and row-wise operations: norms, rotary embeddings, activations.
//!
//! These follow ggml's CPU definitions where the choice changes results (sum of squares
//! accumulated in f64, rotary angles built by repeated multiplication, GELU through f16), so
//! that models agree with llama.cpp to the last bits that matter.

use half::f16;
use std::sync::OnceLock;

use crate::float_ops::gelu_tanh;

/// RMS norm of each `dim`-long row of `x` into `out`, times `weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len() % dim, 0);
    for (row, out_row) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let scale = rms_scale(row, eps);
        for ((o, &v), &w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// RMS norm in place, row by row.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    assert_eq!(x.len() % dim, 0);
    for row in x.chunks_exact_mut(dim) {
        let scale = rms_scale(row, eps);
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

fn rms_scale(row: &[f32], eps: f32) -> f32 {
    // As ggml: squares in f32, accumulated in f64.
    let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / row.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// How rotary dimensions are paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): Llama as converted to GGUF.
    Interleaved,
    /// Halves (i, i + d/2): GPT-NeoX, Qwen2, Gemma.
    Neox,
}

/// Precomputed cos/sin for one position over `rot_dims / 2` frequencies.
pub fn rope_cache(pos: f32, rot_dims: usize, freq_base: f32, cos: &mut [f32], sin: &mut [f32]) {
    let theta_scale = freq_base.powf(-2.0 / rot_dims as f32);
    let mut theta = pos;
    for i in 0..rot_dims / 2 {
        cos[i] = theta.cos();
        sin[i] = theta.sin();
        theta *= theta_scale;
    }
}

/// Rotates each `head_dim`-long head of `x` in place by the angles in `cos`/`sin`.
pub fn rope_apply(x: &mut [f32], head_dim: usize, style: RopeStyle, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in x.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Interleaved => {
                for i in 0..half {
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * cos[i] - b * sin[i];
                    head[2 * i + 1] = a * sin[i] + b * cos[i];
                }
            }
            RopeStyle::Neox => {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = a * sin[i] + b * cos[i];
                }
            }
        }
    }
}

/// SiLU(gate) * up, in place into `gate`.
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// GELU (tanh approximation) of `x`, evaluated the way ggml does by default: the input is
/// rounded to f16 and the result is an f16 table entry.
pub fn gelu_f16_rounded(x: f32) -> f32 {
    gelu_looked_up(gelu_table(), x)
}

/// [`gelu_f16_rounded`] with the table in hand.
#[inline]
fn gelu_looked_up(table: &[f16], x: f32) -> f32 {
    if x <= -GELU_FLAT {
        0.0
    } else if x >= GELU_FLAT {
        x
    } else {
        table[f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

/// Beyond ±this, GELU is taken as 0 or the identity (as ggml does).
const GELU_FLAT: f32 = 10.0;

/// GELU of every f16 value, indexed by its bits: one lookup instead of a tanh per element
/// (ggml keeps the same table).
fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())))
            .collect()
    })
}

/// GELU(gate) * up, in place into `gate`.
pub fn geglu_inplace(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up rows");
    let table = gelu_table();
    #[cfg(target_arch = "x86_64")]
    if crate::quant::avx2_available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        return unsafe { x86::geglu_inplace(gate, up, table) };
    }
    geglu_scalar(gate, up, table);
}

/// The portable [`geglu_inplace`], which the SIMD version must match bit for bit.
fn geglu_scalar(gate: &mut [f32], up: &[f32], table: &[f16]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu_looked_up(table, *g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::GELU_FLAT;

    /// [`super::geglu_inplace`]: eight inputs at a time are rounded to f16 with one
    /// instruction (to nearest even, as `f16::from_f32`), looked up, and widened back.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `up` is as long as `gate`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn geglu_inplace(gate: &mut [f32], up: &[f32], table: &[f16]) {
        assert!(up.len() == gate.len() && table.len() == 1 << 16);
        let (lo, hi) = (_mm256_set1_ps(-GELU_FLAT), _mm256_set1_ps(GELU_FLAT));
        let mut gates = gate.chunks_exact_mut(8);
        let mut ups = up.chunks_exact(8);
        for (g, u) in (&mut gates).zip(&mut ups) {
            // SAFETY (loads and stores): both chunks hold 8 floats; no alignment is required.
            let x = unsafe { _mm256_loadu_ps(g.as_ptr()) };
            let bits = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            let mut index = [0u16; 8];
            unsafe { _mm_storeu_si128(index.as_mut_ptr().cast(), bits) };
            let looked: [u16; 8] = std::array::from_fn(|i| table[index[i] as usize].to_bits());
            let y = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(looked.as_ptr().cast()) });
            // Flat beyond ±GELU_FLAT: 0 below, x above.
            let y = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(x, lo), y);
            let y = _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi));
            let u = unsafe { _mm256_loadu_ps(u.as_ptr()) };
            unsafe { _mm256_storeu_ps(g.as_mut_ptr(), _mm256_mul_ps(y, u)) };
        }
        super::geglu_scalar(gates.into_remainder(), ups.remainder(), table);
    }
}

/// `acc += x`, element-wise.
pub fn add_inplace(acc: &mut [f32], x: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// `acc += bias` for every `bias.len()`-long row of `acc`.
pub fn add_bias_rows(acc: &mut [f32], bias: &[f32]) {
    for row in acc.chunks_exact_mut(bias.len()) {
        add_inplace(row, bias);
    }
}

/// Multiplies every element by `s`.
pub fn scale_inplace(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// Index of the largest value (the first one on ties); NaNs are never chosen.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let w = [1.0f32, 1.0, 1.0, 1.0];
        let mut out = [0.0f32; 4];
        rms_norm(&x, &w, 0.0, &mut out);
        // rms = sqrt(25 / 4) = 2.5
        assert!((out[0] - 1.2).abs() < 1e-6 && (out[1] - 1.6).abs() < 1e-6);
    }

    #[test]
    fn rope_styles_rotate_the_right_pairs() {
        let mut cos = [0.0f32; 2];
        let mut sin = [0.0f32; 2];
        rope_cache(1.0, 4, 10000.0, &mut cos, &mut sin);
        assert!((cos[0] - 1f32.cos()).abs() < 1e-7);
        assert!((cos[1] - (0.01f32).cos()).abs() < 1e-6);
        let mut a = [1.0f32, 0.0, 1.0, 0.0];
        rope_apply(&mut a, 4, RopeStyle::Interleaved, &cos, &sin);
        assert!((a[1] - sin[0]).abs() < 1e-7 && (a[3] - sin[1]).abs() < 1e-7);
        let mut b = [1.0f32, 1.0, 0.0, 0.0];
        rope_apply(&mut b, 4, RopeStyle::Neox, &cos, &sin);
        assert!((b[2] - sin[0]).abs() < 1e-7 && (b[3] - sin[1]).abs() < 1e-7);
    }

    #[test]
    fn gelu_matches_reference_within_f16() {
        for i in -300..300 {
            let x = i as f32 / 25.0;
            let exact = gelu_tanh(x);
            assert!((gelu_f16_rounded(x) - exact).abs() <= 2e-2 * exact.abs().max(1.0));
        }
    }

    proptest::proptest! {
        /// The SIMD GEGLU gives the portable one's bits, over the table's range and past its
        /// flat ends, with a ragged tail.
        #[test]
        fn geglu_matches_scalar(
            pairs in proptest::collection::vec((-12.0f32..12.0, -4.0f32..4.0), 0..70),
        ) {
            let (gate, up): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let mut want = gate.clone();
            geglu_scalar(&mut want, &up, gelu_table());
            let mut got = gate;
            geglu_inplace(&mut got, &up);
            proptest::prop_assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    /// The table gives what rounding the input and the result to f16 around the formula gives.
    #[test]
    fn gelu_table_is_the_rounded_formula() {
        for i in -1990..1990 {
            let x = i as f32 / 199.0;
            let direct = f16::from_f32(gelu_tanh(f16::from_f32(x).to_f32())).to_f32();
            assert_eq!(gelu_f16_rounded(x), direct, "x = {x}");
        }
    }
}
