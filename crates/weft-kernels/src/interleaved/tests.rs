use proptest::prelude::*;

use super::*;
use crate::quant::{act_scales, dequantize_row, quantize_row, vec_dot};
use crate::row_groups::GROUP_ROWS;
use crate::test_util::{random_activations, random_matrix, Rng};

const TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

#[test]
fn other_types_are_not_interleaved() {
    let pool = ThreadPool::new(1);
    let data = vec![0u8; GgmlType::Q5_K.row_bytes(256).unwrap()];
    let w = QMatrix {
        ty: GgmlType::Q5_K,
        rows: 1,
        cols: 256,
        data: &data,
    };
    assert!(InterleavedMatrix::pack(&pool, &w).is_none());
}

/// Every output equals the file format's `vec_dot` of the same row and token up to f32
/// summation order, for row counts that are not a multiple of the group and token counts that
/// are not a multiple of the tile.
#[test]
fn matches_file_format_dots() {
    let pool = ThreadPool::new(3);
    let mut rng = Rng(9);
    for ty in TYPES {
        let (rows, cols, n) = (19, 3 * ty.block_len(), 5);
        let data = random_matrix(ty, rows, cols, &mut rng);
        let w = QMatrix {
            ty,
            rows,
            cols,
            data: &data,
        };
        let packed = InterleavedMatrix::pack(&pool, &w).expect("encoded type");
        let x: Vec<f32> = (0..n)
            .flat_map(|_| random_activations(cols, &mut rng))
            .collect();
        let mut xa = QuantizedActs::default();
        xa.quantize(&pool, packed.dot_type(), &x, cols);
        let mut out = vec![f32::NAN; n * rows];
        matmul_interleaved(&pool, &packed, &xa, &mut out);

        let row_bytes = ty.row_bytes(cols).unwrap();
        let mut xq = vec![0u8; ty.dot_type().row_bytes(cols).unwrap()];
        let (mut wf, mut xf) = (vec![0.0; cols], vec![0.0; cols]);
        for t in 0..n {
            quantize_row(ty.dot_type(), &x[t * cols..(t + 1) * cols], &mut xq);
            dequantize_row(ty.dot_type(), &xq, &mut xf);
            for r in 0..rows {
                let wr = &data[r * row_bytes..(r + 1) * row_bytes];
                let want = vec_dot(ty, cols, wr, &xq) as f64;
                dequantize_row(ty, wr, &mut wf);
                let scale: f64 = wf
                    .iter()
                    .zip(&xf)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                let got = out[t * rows + r] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * scale + 1e-5,
                    "{} token {t} row {r}: {got} vs {want}",
                    ty.name()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The SIMD group kernels, with each kind of byte products this CPU has, give the scalar
    /// ones' results bit for bit.
    #[test]
    fn group_tile_matches_scalar(seed in any::<u64>(), blocks in 1usize..6, tokens in 1usize..=TOKENS_MAX) {
        let pool = ThreadPool::new(1);
        let mut rng = Rng(seed);
        for ty in TYPES {
            let cols = blocks * ty.block_len();
            let data = random_matrix(ty, GROUP_ROWS, cols, &mut rng);
            let w = QMatrix { ty, rows: GROUP_ROWS, cols, data: &data };
            let packed = InterleavedMatrix::pack(&pool, &w).expect("encoded type");
            let dot = packed.dot_type();
            let xq: Vec<u8> = (0..tokens)
                .flat_map(|_| {
                    let mut q = vec![0u8; dot.row_bytes(cols).unwrap()];
                    quantize_row(dot, &random_activations(cols, &mut rng), &mut q);
                    q
                })
                .collect();
            let mut xs = vec![ActScale::default(); tokens * blocks];
            act_scales(dot, &xq, &mut xs);
            let acts = Acts { x: &xq, xs: &xs, blocks, xblock: dot.block_bytes(), quants: quants_offset(dot) };
            let mut slow = vec![[0.0f32; GROUP_ROWS]; tokens];
            group_tile_scalar(packed.encoding, packed.group(0), &acts, &mut slow);
            #[cfg(target_arch = "x86_64")]
            for dot in crate::byte_dot::ByteDot::all_available() {
                let mut fast = vec![[0.0f32; GROUP_ROWS]; tokens];
                // SAFETY: `dot`'s instructions run on this CPU; the shapes match.
                unsafe { super::avx2::group_tile(dot, packed.encoding, packed.group(0), &acts, &mut fast) };
                prop_assert_eq!(&fast, &slow, "{} {:?}", ty.name(), dot);
            }
        }
    }
}
