//! Matrix products of block-quantized weights with f32 activations.
//!
//! Activations are first quantized to the weight type's dot format (8-bit blocks for the
//! quantized types, as ggml does), then every output is one `vec_dot` of a weight row with an
//! activation row. Work is split over weight rows, so each thread streams its own slice of the
//! weights once for all tokens of the batch.

use crate::pool::{chunk_range, ThreadPool};
use crate::quant::{quantize_row, vec_dot, GgmlType};

/// A row-major weight matrix in its on-disk block format: `rows` rows of `cols` elements.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

/// Weight rows handled together for every token, so they stay in cache across tokens.
const ROW_TILE: usize = 16;

/// `out[t][r] = sum_c w[r][c] * x[t][c]` for `t < n_tokens`.
///
/// `x` is `n_tokens * w.cols` long, `out` is `n_tokens * w.rows` long; `xq` is scratch space
/// that keeps its capacity between calls.
pub fn matmul(
    pool: &ThreadPool,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    xq: &mut Vec<u8>,
) {
    assert_eq!(x.len(), n_tokens * w.cols, "activation shape");
    assert_eq!(out.len(), n_tokens * w.rows, "output shape");
    let dot_ty = w.ty.dot_type();
    let xrow = dot_ty
        .row_bytes(w.cols)
        .expect("weight row length is a whole number of blocks");
    let wrow = w.ty.row_bytes(w.cols).expect("weight row bytes");
    assert_eq!(w.data.len(), wrow * w.rows, "weight data size");

    xq.resize(xrow * n_tokens, 0);
    for (src, dst) in x.chunks_exact(w.cols).zip(xq.chunks_exact_mut(xrow)) {
        quantize_row(dot_ty, src, dst);
    }
    let xq: &[u8] = xq;
    let out_ptr = SharedOut(out.as_mut_ptr());
    let threads = pool.n_threads();
    pool.run(|t| {
        let rows = chunk_range(w.rows, threads, t);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r1 = (r0 + ROW_TILE).min(rows.end);
            for tok in 0..n_tokens {
                let xt = &xq[tok * xrow..(tok + 1) * xrow];
                for r in r0..r1 {
                    let v = vec_dot(w.ty, w.cols, &w.data[r * wrow..(r + 1) * wrow], xt);
                    // SAFETY: rows are partitioned between threads, so each (tok, r) element
                    // is written by exactly one thread, and `out` outlives `pool.run`.
                    unsafe { out_ptr.write(tok * w.rows + r, v) };
                }
            }
            r0 = r1;
        }
    });
}

/// A raw pointer to an output buffer whose elements are partitioned between threads.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: used only for disjoint writes from the threads of one `pool.run` call.
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}
impl SharedOut {
    /// # Safety
    /// `i` must be in bounds and no other thread may access element `i` concurrently.
    #[inline]
    unsafe fn write(self, i: usize, v: f32) {
        // SAFETY: guaranteed by the caller.
        unsafe { *self.0.add(i) = v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;

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
            let mut scratch = Vec::new();
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
