use proptest::prelude::*;

use super::*;
use crate::quant::{dequantize_row, quantize_row};
use crate::row_groups::GROUP_ROWS;
use crate::test_util::{random_activations, random_matrix, Rng};

const AFFINE: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
];

fn acts(pool: &ThreadPool, x: &[f32], cols: usize) -> QuantizedActs {
    let mut xa = QuantizedActs::default();
    xa.quantize(pool, GgmlType::Q8_1, x, cols);
    xa
}

#[test]
fn other_types_are_not_packed() {
    let pool = ThreadPool::new(1);
    let data = vec![0u8; GgmlType::Q8_0.row_bytes(64).unwrap()];
    let w = QMatrix {
        ty: GgmlType::Q8_0,
        rows: 1,
        cols: 64,
        data: &data,
    };
    assert!(PackedMatrix::pack(&pool, &w).is_none());
}

/// The packed product equals the dequantized weights times the dequantized Q8_1 activations,
/// up to f32 rounding, for row counts that are not a multiple of the group and token counts
/// that are not a multiple of the tile.
#[test]
fn matches_dequantized_product() {
    let pool = ThreadPool::new(3);
    let mut rng = Rng(5);
    for ty in AFFINE {
        let (rows, cols, n) = (21, 2 * 256, 7);
        let data = random_matrix(ty, rows, cols, &mut rng);
        let w = QMatrix {
            ty,
            rows,
            cols,
            data: &data,
        };
        let packed = PackedMatrix::pack(&pool, &w).expect("affine type");
        assert_eq!(packed.size_bytes(), 3 * (cols / QK) * BLOCK_BYTES);
        let x: Vec<f32> = (0..n)
            .flat_map(|_| random_activations(cols, &mut rng))
            .collect();
        let xa = acts(&pool, &x, cols);
        let mut out = vec![f32::NAN; n * rows];
        matmul_packed(&pool, &packed, &xa, &mut out);

        let mut wf = vec![0.0; cols];
        let mut xf = vec![0.0; cols];
        let row_bytes = ty.row_bytes(cols).unwrap();
        let mut xq = vec![0u8; GgmlType::Q8_1.row_bytes(cols).unwrap()];
        for t in 0..n {
            quantize_row(GgmlType::Q8_1, &x[t * cols..(t + 1) * cols], &mut xq);
            dequantize_row(GgmlType::Q8_1, &xq, &mut xf);
            for r in 0..rows {
                dequantize_row(ty, &data[r * row_bytes..(r + 1) * row_bytes], &mut wf);
                let want: f64 = wf.iter().zip(&xf).map(|(&a, &b)| a as f64 * b as f64).sum();
                let scale: f64 = wf
                    .iter()
                    .zip(&xf)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                let got = out[t * rows + r] as f64;
                // Q4_1 / Q5_1 use Q8_1's stored s = d * Σq, an f16, as ggml does.
                let tol = if packed.exact_sums { 1e-5 } else { 2e-3 };
                assert!(
                    (got - want).abs() <= tol * scale + 1e-4,
                    "{} token {t} row {r}: {got} vs {want}",
                    ty.name()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The SIMD group kernel, with each kind of byte products this CPU has, gives the scalar
    /// one's results bit for bit.
    #[test]
    fn group_tile_matches_scalar(seed in any::<u64>(), blocks in 1usize..5, tokens in 1usize..=TOKENS_MAX) {
        let pool = ThreadPool::new(1);
        let mut rng = Rng(seed);
        for ty in AFFINE {
            let cols = blocks * ty.block_len();
            let data = random_matrix(ty, GROUP_ROWS, cols, &mut rng);
            let w = QMatrix { ty, rows: GROUP_ROWS, cols, data: &data };
            let packed = PackedMatrix::pack(&pool, &w).expect("affine type");
            let x: Vec<f32> = (0..tokens).flat_map(|_| random_activations(cols, &mut rng)).collect();
            let xa = acts(&pool, &x, cols);
            let (x, xs) = xa.tokens(0..tokens);
            let acts = Acts { x, xs, blocks: cols / QK, exact_sums: packed.exact_sums };
            let mut slow = vec![[0.0f32; GROUP_ROWS]; tokens];
            group_tile_scalar(packed.group(0), &acts, &mut slow);
            #[cfg(target_arch = "x86_64")]
            for dot in crate::byte_dot::ByteDot::all_available() {
                let mut fast = vec![[0.0f32; GROUP_ROWS]; tokens];
                // SAFETY: `dot`'s instructions run on this CPU; the shapes match.
                unsafe { super::avx2::group_tile(dot, packed.group(0), &acts, &mut fast) };
                prop_assert_eq!(&fast, &slow, "{} {:?}", ty.name(), dot);
            }
        }
    }
}
