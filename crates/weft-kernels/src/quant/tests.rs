use proptest::prelude::*;

use super::layout::*;
use super::*;
use crate::test_util::*;

/// The weight types (every type with a `vec_dot`).
const WEIGHT_TYPES: [GgmlType; 15] = GgmlType::ALL;

fn dequant(ty: GgmlType, b: &[u8]) -> Vec<f32> {
    let n = b.len() / ty.block_bytes() * ty.block_len();
    let mut out = vec![0.0; n];
    dequantize_row(ty, b, &mut out);
    out
}

/// Σ (|a_i| + |b_i|) |x_i| where w_i = a_i - b_i splits each weight into its scale part and its
/// min part: a bound on the magnitude of every partial sum a dot product of `w` and `x` adds.
fn magnitude(ty: GgmlType, w: &[u8], x: &[f32]) -> f64 {
    let (sc, mn) = scale_fields(ty);
    let mut scale_only = w.to_vec();
    let mut min_only = w.to_vec();
    for (a, b) in scale_only
        .chunks_exact_mut(ty.block_bytes())
        .zip(min_only.chunks_exact_mut(ty.block_bytes()))
    {
        for &off in mn {
            put_f16(a, off, 0.0);
        }
        for &off in sc {
            put_f16(b, off, 0.0);
        }
    }
    let a = dequant(ty, &scale_only);
    let b = if mn.is_empty() {
        vec![0.0; a.len()]
    } else {
        dequant(ty, &min_only)
    };
    a.iter()
        .zip(&b)
        .zip(x)
        .map(|((a, b), x)| (a.abs() as f64 + b.abs() as f64) * x.abs() as f64)
        .sum()
}

fn quantized(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    quantize_row(ty, x, &mut out);
    out
}

/// For Q8_1 activations: Σ over blocks of |m_w| * |s - d * Σq|, the difference between the
/// stored `s` and the sum of the dequantized activations, which the Q4_1 / Q5_1 dots use.
fn q8_1_s_error(ty: GgmlType, w: &[u8], xq: &[u8]) -> f64 {
    if ty.dot_type() != GgmlType::Q8_1 || ty == GgmlType::Q8_1 {
        return 0.0;
    }
    w.chunks_exact(ty.block_bytes())
        .zip(xq.chunks_exact(Q8_1_BYTES))
        .map(|(wb, xb)| {
            let m = f16_at(wb, 2) as f64;
            let sum: i32 = xb[4..].iter().map(|&q| q as i8 as i32).sum();
            let exact = (f16_at(xb, 0) * sum as f32) as f64;
            m.abs() * (f16_at(xb, 2) as f64 - exact).abs()
        })
        .sum()
}

fn check_dots(ty: GgmlType, nb: usize, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed);
    let n = nb * ty.block_len();
    let w = random_row(ty, nb, &mut rng);
    let x = random_activations(n, &mut rng);
    let xq = quantized(ty.dot_type(), &x);
    let xd = dequant(ty.dot_type(), &xq);
    let wd = dequant(ty, &w);

    let fast = vec_dot(ty, n, &w, &xq);
    let slow = scalar::vec_dot(ty, n, &w, &xq);
    let mag = magnitude(ty, &w, &xd) * 1.01 + 1e-30;
    prop_assert!(fast.is_finite() && slow.is_finite(), "{ty}: {fast} {slow}");

    // SIMD and scalar differ only in the order of f32 additions.
    let tol = 1e-5 * mag;
    prop_assert!(
        ((fast - slow) as f64).abs() <= tol,
        "{ty} nb={nb}: simd {fast} vs scalar {slow} (tol {tol})"
    );

    // Both equal the dot of the dequantized rows up to f32 rounding (and, for Q8_1, up to the
    // rounding of the stored block sums).
    let exact: f64 = wd.iter().zip(&xd).map(|(a, b)| *a as f64 * *b as f64).sum();
    let tol = 1e-5 * mag + 1.01 * q8_1_s_error(ty, &w, &xq);
    for (what, v) in [("simd", fast), ("scalar", slow)] {
        prop_assert!(
            (v as f64 - exact).abs() <= tol,
            "{ty} nb={nb}: {what} {v} vs dequantized {exact} (tol {tol})"
        );
    }

    // And the dot of the dequantized weights with the f32 activations, within the activation
    // quantization error (|x - xq| <= 0.6 * block amax / 127 for the 8-bit formats).
    let dot_len = ty.dot_type().block_len().max(32);
    let qerr: f64 = match ty.dot_type() {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => wd
            .iter()
            .zip(&x)
            .map(|(w, v)| (w * v).abs() as f64 * 1e-3)
            .sum(),
        GgmlType::BF16 => wd
            .iter()
            .zip(&x)
            .map(|(w, v)| (w * v).abs() as f64 * 8e-3)
            .sum(),
        _ => wd
            .chunks(dot_len)
            .zip(x.chunks(dot_len))
            .map(|(wb, xb)| {
                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
                wb.iter().map(|w| w.abs() as f64).sum::<f64>() * 0.6 * amax / 127.0
            })
            .sum(),
    };
    let (wdx, wdx_abs) = wd.iter().zip(&x).fold((0.0f64, 0.0f64), |(s, a), (w, x)| {
        (s + *w as f64 * *x as f64, a + (*w as f64 * *x as f64).abs())
    });
    let tol = qerr + 1e-5 * (mag + wdx_abs) + 1.01 * q8_1_s_error(ty, &w, &xq) + 1e-30;
    prop_assert!(
        (fast as f64 - wdx).abs() <= tol,
        "{ty} nb={nb}: {fast} vs f32 dot {wdx} (tol {tol})"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn vec_dot_all_types(seed in any::<u64>(), nb in 1usize..7) {
        for ty in WEIGHT_TYPES {
            // The float formats have one element per block: use longer rows.
            let nb = if ty.block_len() == 1 { nb * 37 } else { nb };
            check_dots(ty, nb, seed)?;
        }
    }

    #[test]
    fn dot_tile_matches_scalar_pairs(
        seed in any::<u64>(),
        nb in 1usize..5,
        rows in 1usize..=TILE_MAX,
        tokens in 1usize..=TILE_MAX,
    ) {
        let mut rng = Rng(seed);
        for ty in WEIGHT_TYPES.into_iter().filter(|t| !t.is_dot_type() || *t == GgmlType::Q8_0) {
            let n = nb * ty.block_len();
            let w: Vec<Vec<u8>> = (0..rows).map(|_| random_row(ty, nb, &mut rng)).collect();
            let xq: Vec<Vec<u8>> = (0..tokens)
                .map(|_| quantized(ty.dot_type(), &random_activations(n, &mut rng)))
                .collect();
            let mut xs = vec![ActScale::default(); tokens * nb];
            for (row, scales) in xq.iter().zip(xs.chunks_exact_mut(nb)) {
                act_scales(ty.dot_type(), row, scales);
            }
            let mut out = vec![0.0; rows * tokens];
            dot_tile(ty, n, &w.concat(), &xq.concat(), &xs, rows, tokens, &mut out);
            for r in 0..rows {
                for t in 0..tokens {
                    let want = scalar::vec_dot(ty, n, &w[r], &xq[t]);
                    let xd = dequant(ty.dot_type(), &xq[t]);
                    let tol = 1e-5 * magnitude(ty, &w[r], &xd) + 1e-30;
                    let got = out[r * tokens + t];
                    prop_assert!(
                        ((got - want) as f64).abs() <= tol,
                        "{ty} {rows}x{tokens} [{r}][{t}]: tile {got} vs scalar {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_quantizers_match_scalar(seed in any::<u64>(), nb in 1usize..4, halves in any::<bool>()) {
        let mut rng = Rng(seed);
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K, GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
            let n = nb * ty.block_len().max(QK_K);
            let x: Vec<f32> = if halves {
                // Exact halves with a block maximum of 127: every other value is a rounding tie.
                let mut x: Vec<f32> = (0..n).map(|_| (rng.next_u64() % 509) as f32 * 0.5 - 127.0).collect();
                for b in x.chunks_exact_mut(32) {
                    b[(rng.byte() % 32) as usize] = if rng.byte() & 1 == 0 { 127.0 } else { -127.0 };
                }
                x
            } else {
                random_activations(n, &mut rng)
            };
            let mut fast = vec![0u8; ty.row_bytes(n).unwrap()];
            let mut slow = fast.clone();
            quantize_row(ty, &x, &mut fast);
            scalar::quantize_row(ty, &x, &mut slow);
            prop_assert_eq!(&fast, &slow, "{}", ty);
        }
    }
}

#[test]
fn type_table() {
    let table = [
        (GgmlType::F32, 0, "F32", 1, 4, GgmlType::F32),
        (GgmlType::F16, 1, "F16", 1, 2, GgmlType::F32),
        (GgmlType::Q4_0, 2, "Q4_0", 32, 18, GgmlType::Q8_0),
        (GgmlType::Q4_1, 3, "Q4_1", 32, 20, GgmlType::Q8_1),
        (GgmlType::Q5_0, 6, "Q5_0", 32, 22, GgmlType::Q8_0),
        (GgmlType::Q5_1, 7, "Q5_1", 32, 24, GgmlType::Q8_1),
        (GgmlType::Q8_0, 8, "Q8_0", 32, 34, GgmlType::Q8_0),
        (GgmlType::Q8_1, 9, "Q8_1", 32, 36, GgmlType::Q8_1),
        (GgmlType::Q2_K, 10, "Q2_K", 256, 84, GgmlType::Q8_K),
        (GgmlType::Q3_K, 11, "Q3_K", 256, 110, GgmlType::Q8_K),
        (GgmlType::Q4_K, 12, "Q4_K", 256, 144, GgmlType::Q8_K),
        (GgmlType::Q5_K, 13, "Q5_K", 256, 176, GgmlType::Q8_K),
        (GgmlType::Q6_K, 14, "Q6_K", 256, 210, GgmlType::Q8_K),
        (GgmlType::Q8_K, 15, "Q8_K", 256, 292, GgmlType::Q8_K),
        (GgmlType::BF16, 30, "BF16", 1, 2, GgmlType::F32),
    ];
    assert_eq!(table.len(), GgmlType::ALL.len());
    for (ty, id, name, len, bytes, dot) in table {
        assert_eq!(GgmlType::from_ggml_id(id), Some(ty));
        assert_eq!(ty.ggml_id(), id);
        assert_eq!(ty.name(), name);
        assert_eq!(ty.to_string(), name);
        assert_eq!(ty.block_len(), len);
        assert_eq!(ty.block_bytes(), bytes);
        assert_eq!(ty.dot_type(), dot);
        assert!(dot.is_dot_type());
        assert_eq!(ty.row_bytes(4 * len), Some(4 * bytes));
        assert_eq!(ty.row_bytes(0), Some(0));
        if len > 1 {
            assert_eq!(ty.row_bytes(len + 1), None);
        }
    }
    for id in [4, 5, 16, 29, 31, 39, u32::MAX] {
        assert_eq!(GgmlType::from_ggml_id(id), None);
    }
    assert_eq!(GgmlType::Q8_K.row_bytes(usize::MAX / 256 * 256), None);
    assert_eq!(GgmlType::F32.row_bytes(usize::MAX), None);
    assert!(!GgmlType::Q4_K.is_dot_type());
}

/// Both quantize paths.
fn both(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let fast = quantized(ty, x);
    let mut slow = vec![0u8; fast.len()];
    scalar::quantize_row(ty, x, &mut slow);
    assert_eq!(fast, slow, "{ty}");
    fast
}

/// x[0] = -127 and x[j] = j - 15.5 for j = 1..32: d = 1, and every other value is a tie.
fn tie_block() -> Vec<f32> {
    let mut x: Vec<f32> = (0..32).map(|j| j as f32 - 15.5).collect();
    x[0] = -127.0;
    x
}

#[test]
fn q8_0_hand_computed() {
    let y = both(GgmlType::Q8_0, &tie_block());
    assert_eq!(&y[..2], &0x3c00u16.to_le_bytes()); // d = 1.0
    assert_eq!(y[2] as i8, -127);
    // Ties to even, as ggml-cpu's x86 quantizer: -14.5 -> -14, -13.5 -> -14, ..., 15.5 -> 16.
    let want: Vec<i8> = (1..32)
        .map(|j| (j as f32 - 15.5).round_ties_even() as i8)
        .collect();
    let got: Vec<i8> = y[3..].iter().map(|&q| q as i8).collect();
    assert_eq!(got, want);

    // amax = 254: d = 2, q = roundf(x / 2).
    let mut x = vec![0.0f32; 32];
    x[3] = -254.0;
    x[4] = 127.0;
    x[5] = -1.0;
    x[6] = 3.0;
    let y = both(GgmlType::Q8_0, &x);
    assert_eq!(&y[..2], &0x4000u16.to_le_bytes()); // d = 2.0
    assert_eq!(y[2 + 3] as i8, -127);
    assert_eq!(y[2 + 4] as i8, 64); // 63.5 rounds to even
    assert_eq!(y[2 + 5] as i8, 0); // -0.5 too
    assert_eq!(y[2 + 6] as i8, 2); // 1.5
    assert!(y[2..]
        .iter()
        .enumerate()
        .all(|(j, &q)| (3..7).contains(&j) || q == 0));

    let y = both(GgmlType::Q8_0, &[0.0; 32]);
    assert!(y.iter().all(|&b| b == 0));
}

#[test]
fn q8_1_hand_computed() {
    let y = both(GgmlType::Q8_1, &tie_block());
    assert_eq!(&y[..2], &0x3c00u16.to_le_bytes());
    // Ties to even: the quants are -127 and round_ties_even(j - 15.5) for j = 1..32.
    let sum: i32 = -127
        + (1..32)
            .map(|j| (j as f32 - 15.5).round_ties_even() as i32)
            .sum::<i32>();
    assert_eq!(f16_at(&y, 2), sum as f32);
    assert_eq!(y[4] as i8, -127);
    assert_eq!(y[5] as i8, -14);
    assert_eq!(y[35] as i8, 16);
}

#[test]
fn q8_k_hand_computed() {
    // The largest magnitude, 127, appears first with a + sign at 5 and later as -127 at 200:
    // iscale = -127 / 127 = -1, d = -1, q = nearest-even(-x).
    let mut x: Vec<f32> = (0..256).map(|j| (j % 20) as f32 - 9.5).collect();
    x[5] = 127.0;
    x[200] = -127.0;
    let y = both(GgmlType::Q8_K, &x);
    assert_eq!(f32_at(&y, 0), -1.0);
    let q: Vec<i32> = y[Q8_K_QS..Q8_K_QS + 256]
        .iter()
        .map(|&q| q as i8 as i32)
        .collect();
    assert_eq!(q[5], -127);
    assert_eq!(q[200], 127);
    // -(-9.5) = 9.5 -> 10, -(-8.5) = 8.5 -> 8, 7.5 -> 8, 6.5 -> 6, ..., 0.5 -> 0, -0.5 -> 0,
    // -1.5 -> -2, ..., -9.5 -> -10.
    let ties = [
        10, 8, 8, 6, 6, 4, 4, 2, 2, 0, 0, -2, -2, -4, -4, -6, -6, -8, -8, -10,
    ];
    for (j, &qj) in q.iter().enumerate() {
        if j != 5 && j != 200 {
            assert_eq!(qj, ties[j % 20], "element {j}");
        }
    }
    for g in 0..16 {
        let want: i32 = q[16 * g..16 * g + 16].iter().sum();
        assert_eq!(i16_at(&y, Q8_K_BSUMS + 2 * g) as i32, want, "bsum {g}");
    }
    // bsum 0 by hand: elements 0..16 are ties[0..16] with element 5 replaced by -127.
    assert_eq!(
        i16_at(&y, Q8_K_BSUMS),
        10 + 8 + 8 + 6 + 6 - 127 + 4 + 2 + 2 - 2 - 2 - 4 - 4 - 6
    );

    // A negative maximum flips the sign: iscale = +127 / 2.
    let mut x = vec![0.0f32; 256];
    x[10] = -2.0;
    x[11] = 1.0;
    x[12] = 2.0;
    let y = both(GgmlType::Q8_K, &x);
    assert_eq!(f32_at(&y, 0), 1.0 / (127.0 / 2.0));
    assert_eq!(y[Q8_K_QS + 10] as i8, -127);
    assert_eq!(y[Q8_K_QS + 11] as i8, 64); // 63.5 -> 64 (even)
    assert_eq!(y[Q8_K_QS + 12] as i8, 127);

    let y = both(GgmlType::Q8_K, &[0.0; 256]);
    assert!(y.iter().all(|&b| b == 0));
}

#[test]
fn float_formats_round_trip() {
    let x = [
        1.0f32,
        -2.5,
        65504.0,
        1e-8,
        3.3,
        -0.0,
        1.0e10,
        f32::MIN_POSITIVE,
    ];
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let y = both(ty, &x);
        let back = dequant(ty, &y);
        for (a, b) in x.iter().zip(&back) {
            let want = match ty {
                GgmlType::F32 => *a,
                GgmlType::F16 => half::f16::from_f32(*a).to_f32(),
                _ => half::bf16::from_f32(*a).to_f32(),
            };
            assert_eq!(b.to_bits(), want.to_bits(), "{ty} {a}");
        }
    }
    // bf16 rounds to nearest even and keeps NaNs quiet.
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
}

#[test]
fn k4_scale_unpacking_agrees() {
    let mut rng = Rng(99);
    for _ in 0..1000 {
        let s: [u8; 12] = std::array::from_fn(|_| rng.byte());
        let (sc, mn) = k4_scales_mins(&s);
        let (psc, pmn) = k4_scales_mins_packed(&s);
        assert_eq!(psc.to_le_bytes(), sc);
        assert_eq!(pmn.to_le_bytes(), mn);
        let packed = q3k_scales_packed(&s);
        let want = q3k_scales(&s);
        for (i, w) in want.iter().enumerate() {
            assert_eq!(packed[i / 4].to_le_bytes()[i % 4] as i8 - 32, *w);
        }
    }
}

#[test]
fn dequantize_small_cases() {
    // Q4_0: d = 0.5, nibbles 0..15 -> (q - 8) / 2.
    let mut b = vec![0u8; 18];
    put_f16(&mut b, 0, 0.5);
    for j in 0..16 {
        b[2 + j] = (j as u8) | (((15 - j) as u8) << 4);
    }
    let v = dequant(GgmlType::Q4_0, &b);
    for j in 0..16 {
        assert_eq!(v[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(v[16 + j], (7.0 - j as f32) * 0.5);
    }
    // Q6_K: all quants 32 (zero), one scale set.
    let mut b = vec![0u8; Q6_K_BYTES];
    b[..128].fill(0x00);
    b[Q6_K_QH..Q6_K_QH + 64].fill(0b1010_1010); // high bits 2 everywhere: q = 32 - 32 = 0
    put_f16(&mut b, Q6_K_D, 1.0);
    b[Q6_K_SCALES] = 3;
    b[0] = 0x05; // element 0 -> 37 - 32 = 5; element 64 -> 32 - 32 = 0
    let v = dequant(GgmlType::Q6_K, &b);
    assert_eq!(v[0], 15.0);
    assert!(v[1..].iter().all(|&x| x == 0.0));
}

#[test]
#[should_panic(expected = "vec_dot weights")]
fn vec_dot_checks_lengths() {
    vec_dot(GgmlType::Q4_0, 64, &[0u8; 18], &[0u8; 68]);
}
