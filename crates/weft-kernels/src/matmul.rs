//! Matrix products of block-quantized weights with f32 activations.
//!
//! Activations are quantized once to the weight type's dot format (8-bit blocks for the
//! quantized types, as ggml does) and reused by every matrix that reads the same input (Q, K
//! and V; gate and up). The product runs as [`dot_tile`]s of up to 4 weight rows by 4 tokens,
//! so each weight block is decoded once per 4 tokens and each activation block serves 4 rows.
//! Work is split over weight rows, so each thread streams its own slice of the weights once for
//! all tokens of the batch.

use std::ops::Range;
use std::sync::OnceLock;

use crate::interleaved::{matmul_interleaved, InterleavedMatrix};
use crate::packed::{self, matmul_packed, PackedMatrix};
use crate::pool::{SharedMut, ThreadPool};
use crate::quant::{act_scales, dot_tile, quantize_row, ActScale, GgmlType, TILE_MAX};
use crate::row_groups::{self, GroupedMatrix};

/// A row-major weight matrix in its on-disk block format: `rows` rows of `cols` elements.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

/// Weight rows a thread takes at a time and multiplies by every token before taking more, so
/// they stay in cache (L2) across all token tiles.
const ROW_CHUNK: usize = 32;

/// Activation rows quantized to one dot type, with their block scales; keeps its buffers
/// between uses.
#[derive(Default)]
pub struct QuantizedActs {
    ty: Option<GgmlType>,
    cols: usize,
    n_tokens: usize,
    data: Vec<u8>,
    scales: Vec<ActScale>,
}

impl QuantizedActs {
    /// Quantizes `x` (`n_tokens` rows of `cols`) to `ty` (a dot type), splitting the rows
    /// over the pool.
    pub fn quantize(&mut self, pool: &ThreadPool, ty: GgmlType, x: &[f32], cols: usize) {
        assert!(cols > 0 && x.len().is_multiple_of(cols), "activation shape");
        let n_tokens = x.len() / cols;
        let row = ty
            .row_bytes(cols)
            .expect("row length is a whole number of blocks");
        let nb = cols / ty.block_len();
        self.data.resize(row * n_tokens, 0);
        self.scales.resize(nb * n_tokens, ActScale::default());
        let data = SharedMut(self.data.as_mut_ptr());
        let scales = SharedMut(self.scales.as_mut_ptr());
        pool.for_each_chunk(n_tokens, |tokens| {
            for t in tokens {
                // SAFETY: token rows are partitioned between threads, the buffers were sized
                // above and outlive the call.
                let (dst, xs) = unsafe { (data.slice(t * row, row), scales.slice(t * nb, nb)) };
                quantize_row(ty, &x[t * cols..(t + 1) * cols], dst);
                act_scales(ty, dst, xs);
            }
        });
        self.ty = Some(ty);
        self.cols = cols;
        self.n_tokens = n_tokens;
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// The quantized rows of `tokens`, and their block scales.
    pub(crate) fn tokens(&self, tokens: Range<usize>) -> (&[u8], &[ActScale]) {
        let ty = self.ty.expect("quantized activations");
        let row = ty.row_bytes(self.cols).expect("whole blocks");
        let blocks = self.cols / ty.block_len();
        (
            &self.data[tokens.start * row..tokens.end * row],
            &self.scales[tokens.start * blocks..tokens.end * blocks],
        )
    }

    /// Whether these are `x`'s rows in `ty` (for reuse across matrices).
    pub fn is(&self, ty: GgmlType, cols: usize) -> bool {
        self.ty == Some(ty) && self.cols == cols
    }
}

/// `out[t][r] = sum_c w[r][c] * x[t][c]` for every token `t` of `xa`, which must hold the
/// activations quantized to `w.ty.dot_type()`.
pub fn matmul_quantized(pool: &ThreadPool, w: &QMatrix<'_>, xa: &QuantizedActs, out: &mut [f32]) {
    let dot_ty = w.ty.dot_type();
    assert!(
        xa.is(dot_ty, w.cols),
        "activations quantized for this matrix"
    );
    let n_tokens = xa.n_tokens;
    assert_eq!(out.len(), n_tokens * w.rows, "output shape");
    let wrow = w.ty.row_bytes(w.cols).expect("weight row bytes");
    assert_eq!(w.data.len(), wrow * w.rows, "weight data size");

    let out_ptr = SharedMut(out.as_mut_ptr());
    pool.for_each_stealing(w.rows, ROW_CHUNK, |rows| {
        let mut tile = [0.0f32; TILE_MAX * TILE_MAX];
        for t0 in (0..n_tokens).step_by(TILE_MAX) {
            let nt = (n_tokens - t0).min(TILE_MAX);
            let (x, xs) = xa.tokens(t0..t0 + nt);
            for r0 in rows.clone().step_by(TILE_MAX) {
                let nr = (rows.end - r0).min(TILE_MAX);
                let wt = &w.data[r0 * wrow..(r0 + nr) * wrow];
                let tile = &mut tile[..nr * nt];
                dot_tile(w.ty, w.cols, wt, x, xs, nr, nt, tile);
                for r in 0..nr {
                    for t in 0..nt {
                        // SAFETY: row chunks are handed to one thread each, so each (token,
                        // row) element is written by exactly one thread, and `out` outlives
                        // the call.
                        unsafe { out_ptr.write((t0 + t) * w.rows + r0 + r, tile[r * nt + t]) };
                    }
                }
            }
        }
    });
}

/// Whether a product of weights of type `ty` over `n_tokens` tokens should read the packed
/// layout. Against the file's blocks that is [`packed::worth_packing`]; the interleaved
/// kernels re-decode a block for every three tokens, so where they exist the packed layout
/// pays only for larger batches, and Q5_0's fifth bits make that re-decoding dearer.
/// Measured with two threads on AVX2, weights from memory (products of 4 to 32 tokens,
/// SmolLM2/Gemma/Qwen shapes).
fn packed_beats_others(ty: GgmlType, n_tokens: usize) -> bool {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q4_K => n_tokens >= 16,
        GgmlType::Q5_0 => n_tokens >= 8,
        _ => packed::worth_packing(n_tokens),
    }
}

/// The kernel layouts of one weight matrix, built from its file blocks on first use (the file
/// stays the source of truth): packed for batches where [`packed_beats_others`],
/// interleaved otherwise, each `None` when the type has no such layout.
#[derive(Clone, Default)]
pub struct Layouts {
    packed: OnceLock<Option<PackedMatrix>>,
    interleaved: OnceLock<Option<InterleavedMatrix>>,
}

/// How a product over a given number of tokens reads `w` ([`Layouts::plan`]).
pub enum Plan<'a> {
    Packed(&'a PackedMatrix),
    Interleaved(&'a InterleavedMatrix),
    File,
}

impl Layouts {
    /// The layout a product of `w` (whose layouts these are) over `n_tokens` tokens reads,
    /// building it if this is its first use.
    pub fn plan(&self, pool: &ThreadPool, w: &QMatrix<'_>, n_tokens: usize) -> Plan<'_> {
        if packed_beats_others(w.ty, n_tokens) {
            if let Some(p) = self.packed.get_or_init(|| PackedMatrix::pack(pool, w)) {
                return Plan::Packed(p);
            }
        }
        match self
            .interleaved
            .get_or_init(|| InterleavedMatrix::pack(pool, w))
        {
            Some(i) => Plan::Interleaved(i),
            None => Plan::File,
        }
    }
}

impl Plan<'_> {
    /// The activation format the product reads (for [`QuantizedActs::quantize`]).
    pub fn dot_type(&self, w: &QMatrix<'_>) -> GgmlType {
        match self {
            Plan::Packed(_) => GgmlType::Q8_1,
            Plan::Interleaved(i) => i.dot_type(),
            Plan::File => w.ty.dot_type(),
        }
    }

    /// `out[t][r] = Σ_c w[r][c] * x[t][c]`, `xa` holding the activations quantized to
    /// [`Plan::dot_type`].
    pub fn matmul(&self, pool: &ThreadPool, w: &QMatrix<'_>, xa: &QuantizedActs, out: &mut [f32]) {
        match self {
            Plan::Packed(p) => matmul_packed(pool, p, xa, out),
            Plan::Interleaved(i) => matmul_interleaved(pool, i, xa, out),
            Plan::File => matmul_quantized(pool, w, xa, out),
        }
    }
}

/// One product of [`matmul_many`]: `out[t][r] = Σ_c w[r][c] * x[t][c]` read as `plan` says,
/// `xa` holding the activations quantized to [`Plan::dot_type`].
pub struct Product<'a> {
    pub plan: Plan<'a>,
    pub w: QMatrix<'a>,
    pub xa: &'a QuantizedActs,
    pub out: &'a mut [f32],
}

/// Several products (say Q, K and V of one input) at once: those read through a row-grouped
/// layout share one dispatch over the pool, so the threads never wait between them; the rest
/// run one after another.
pub fn matmul_many(pool: &ThreadPool, products: &mut [Product<'_>]) {
    let mut grouped: Vec<(&dyn GroupedMatrix, &QuantizedActs, &mut [f32])> =
        Vec::with_capacity(products.len());
    for p in products.iter_mut() {
        let w: &dyn GroupedMatrix = match p.plan {
            Plan::Packed(w) => w,
            Plan::Interleaved(w) => w,
            Plan::File => {
                matmul_quantized(pool, &p.w, p.xa, p.out);
                continue;
            }
        };
        grouped.push((w, p.xa, &mut *p.out));
    }
    if !grouped.is_empty() {
        row_groups::matmul(pool, &mut grouped);
    }
}

/// Quantizes `x` (`n_tokens` rows) into `xa` and multiplies: [`matmul_quantized`] for an
/// input that only one matrix reads.
pub fn matmul(
    pool: &ThreadPool,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    xa: &mut QuantizedActs,
) {
    assert_eq!(x.len(), n_tokens * w.cols, "activation shape");
    xa.quantize(pool, w.ty.dot_type(), x, w.cols);
    matmul_quantized(pool, w, xa, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;
    use crate::test_util::{random_activations, random_matrix, Rng};

    /// Products run together give each one's own result bit for bit, whatever their layouts
    /// (interleaved, packed, the file's) and shapes, with rows that end mid-group and pieces
    /// of the shared range that straddle two products.
    #[test]
    fn many_products_match_one_at_a_time() {
        let pool = ThreadPool::new(3);
        let mut rng = Rng(21);
        // (type, rows, tokens): Q4_K over 20 tokens reads the packed layout, Q5_K the file's.
        let shapes = [
            (GgmlType::Q5_0, 37, 1),
            (GgmlType::Q4_K, 9, 1),
            (GgmlType::Q6_K, 70, 1),
            (GgmlType::Q4_K, 45, 20),
            (GgmlType::Q5_K, 11, 2),
            (GgmlType::Q8_0, 3, 5),
        ];
        let cols = 512;
        let weights: Vec<Vec<u8>> = shapes
            .iter()
            .map(|&(ty, rows, _)| random_matrix(ty, rows, cols, &mut rng))
            .collect();
        let layouts = vec![Layouts::default(); shapes.len()];
        let mats: Vec<QMatrix<'_>> = shapes
            .iter()
            .zip(&weights)
            .map(|(&(ty, rows, _), data)| QMatrix {
                ty,
                rows,
                cols,
                data,
            })
            .collect();
        let acts: Vec<QuantizedActs> = shapes
            .iter()
            .zip(&mats)
            .zip(&layouts)
            .map(|((&(_, _, n), w), l)| {
                let mut xa = QuantizedActs::default();
                let plan = l.plan(&pool, w, n);
                xa.quantize(
                    &pool,
                    plan.dot_type(w),
                    &random_activations(n * cols, &mut rng),
                    cols,
                );
                xa
            })
            .collect();
        let mut want: Vec<Vec<f32>> = Vec::new();
        for ((w, l), xa) in mats.iter().zip(&layouts).zip(&acts) {
            let mut out = vec![0.0; xa.n_tokens() * w.rows];
            l.plan(&pool, w, xa.n_tokens())
                .matmul(&pool, w, xa, &mut out);
            want.push(out);
        }
        let mut got: Vec<Vec<f32>> = want.iter().map(|o| vec![f32::NAN; o.len()]).collect();
        let mut products: Vec<Product<'_>> = mats
            .iter()
            .zip(&layouts)
            .zip(&acts)
            .zip(got.iter_mut())
            .map(|(((w, l), xa), out)| Product {
                plan: l.plan(&pool, w, xa.n_tokens()),
                w: *w,
                xa,
                out,
            })
            .collect();
        assert!(matches!(products[3].plan, Plan::Packed(_)));
        assert!(matches!(products[4].plan, Plan::File));
        matmul_many(&pool, &mut products);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(g), bits(w), "product {i}");
        }
    }

    #[test]
    fn matches_dequantized_product() {
        let pool = ThreadPool::new(3);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::F32] {
            let (rows, cols, n) = (37, 64, 5);
            let row_bytes = ty.row_bytes(cols).unwrap();
            // Build weights by quantizing f32 rows through the dot format of Q8_0 when the
            // type is Q8_0 (its own format), else from random bytes with sane scales.
            let mut seed = 7u32;
            let mut rnd = || {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            };
            let wf: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
            let mut data = vec![0u8; rows * row_bytes];
            if ty == GgmlType::Q4_0 {
                for (r, row) in data.chunks_exact_mut(row_bytes).enumerate() {
                    for (b, block) in row.chunks_exact_mut(ty.block_bytes()).enumerate() {
                        let d = half::f16::from_f32(0.01 * (1 + (r + b) % 5) as f32);
                        block[..2].copy_from_slice(&d.to_le_bytes());
                        for (i, q) in block[2..].iter_mut().enumerate() {
                            *q = ((r * 31 + b * 7 + i * 13) % 256) as u8;
                        }
                    }
                }
            } else {
                for (src, dst) in wf.chunks_exact(cols).zip(data.chunks_exact_mut(row_bytes)) {
                    quantize_row(ty, src, dst);
                }
            }
            let x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
            let w = QMatrix {
                ty,
                rows,
                cols,
                data: &data,
            };
            let mut out = vec![0.0; n * rows];
            let mut scratch = QuantizedActs::default();
            matmul(&pool, &w, &x, n, &mut out, &mut scratch);
            let mut wrow = vec![0.0; cols];
            for r in 0..rows {
                dequantize_row(ty, &data[r * row_bytes..(r + 1) * row_bytes], &mut wrow);
                for t in 0..n {
                    let want: f32 = wrow
                        .iter()
                        .zip(&x[t * cols..(t + 1) * cols])
                        .map(|(a, b)| a * b)
                        .sum();
                    let got = out[t * rows + r];
                    let tol = 0.02 * wrow.iter().map(|v| v.abs()).sum::<f32>().max(1e-3);
                    assert!(
                        (got - want).abs() <= tol,
                        "{ty:?} r{r} t{t}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
