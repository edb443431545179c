//! What the row-interleaved weight layouts ([`crate::packed`], [`crate::interleaved`]) share:
//! rows taken eight at a time (a *group*, the last padded), built group by group over the pool,
//! and products computed as one group by a few tokens at a time.

use std::ops::Range;

use crate::matmul::QuantizedActs;
use crate::pool::{SharedMut, ThreadPool};
use crate::quant::{ActScale, GgmlType};

/// Rows interleaved in one group.
pub const GROUP_ROWS: usize = 8;
/// Groups a thread takes at a time: their weights stay in L1/L2 across every token.
const GROUPS_PER_CHUNK: usize = 4;

/// Groups covering `rows` rows.
pub(crate) fn groups(rows: usize) -> usize {
    rows.div_ceil(GROUP_ROWS)
}

/// The rows of group `g` (fewer than eight in the last one).
pub(crate) fn group_rows(g: usize, rows: usize) -> std::ops::Range<usize> {
    g * GROUP_ROWS..((g + 1) * GROUP_ROWS).min(rows)
}

/// A buffer of `groups(rows)` groups of `group_bytes`, zeroed, with each group written by
/// `fill(g, bytes)` on some thread of the pool.
pub(crate) fn build(
    pool: &ThreadPool,
    rows: usize,
    group_bytes: usize,
    fill: impl Fn(usize, &mut [u8]) + Sync,
) -> Vec<u8> {
    let n = groups(rows);
    let mut data = vec![0u8; n * group_bytes];
    let out = SharedMut(data.as_mut_ptr());
    pool.for_each_dynamic(n, 1, |gs| {
        for g in gs {
            // SAFETY: each group's bytes are written by the one thread that took it, and
            // `data` outlives the call.
            fill(g, unsafe { out.slice(g * group_bytes, group_bytes) });
        }
    });
    data
}

/// A weight matrix in a row-grouped layout, as [`matmul`] multiplies it.
pub(crate) trait GroupedMatrix: Sync {
    /// Rows of the matrix: a product holds this many values per token.
    fn rows(&self) -> usize;

    fn cols(&self) -> usize;

    /// The activation format the kernel reads ([`QuantizedActs`] must hold it).
    fn dot_type(&self) -> GgmlType;

    /// Most tokens one [`Self::tile`] call takes: at most [`TILE_TOKENS_MAX`].
    fn tile_tokens(&self) -> usize;

    /// `sums[i][j]` = row `8g + j` times token `i` of `x` (quantized rows in
    /// [`Self::dot_type`], with their block scales `xs`), for `sums.len()` in
    /// 1..=[`Self::tile_tokens`] tokens.
    fn tile(&self, x: &[u8], xs: &[ActScale], g: usize, sums: &mut [[f32; GROUP_ROWS]]);
}

/// The largest [`GroupedMatrix::tile_tokens`] of any layout.
pub(crate) const TILE_TOKENS_MAX: usize = 4;

/// Computes groups `gs` of `w` times every token of `xa` into `out` (token-major, `w.rows()`
/// per token): every token tile of `gs`, the groups inner so their weights stay in cache
/// across tokens.
///
/// # Safety
/// `out` points to `xa.n_tokens() * w.rows()` floats, and no other thread accesses these
/// groups' elements while this runs.
unsafe fn run_groups<M: GroupedMatrix + ?Sized>(
    w: &M,
    xa: &QuantizedActs,
    gs: Range<usize>,
    out: SharedMut<f32>,
) {
    let (rows, n_tokens, step) = (w.rows(), xa.n_tokens(), w.tile_tokens());
    assert!((1..=TILE_TOKENS_MAX).contains(&step), "tile size");
    let mut sums = [[0.0f32; GROUP_ROWS]; TILE_TOKENS_MAX];
    for t0 in (0..n_tokens).step_by(step) {
        let nt = (n_tokens - t0).min(step);
        let (x, xs) = xa.tokens(t0..t0 + nt);
        for g in gs.clone() {
            w.tile(x, xs, g, &mut sums[..nt]);
            let rows_g = group_rows(g, rows);
            for (t, s) in sums[..nt].iter().enumerate() {
                // SAFETY: in bounds and this thread's alone, by the caller's promise.
                let dst = unsafe { out.slice((t0 + t) * rows + rows_g.start, rows_g.len()) };
                dst.copy_from_slice(&s[..rows_g.len()]);
            }
        }
    }
}

/// Several products `out = w · xa`, each into its output, in one dispatch over the pool: their
/// groups form one range that the threads share out, so products of a few groups each (Q, K
/// and V of a decode step) neither wait for each other nor leave threads idle in between.
pub(crate) fn matmul<M: GroupedMatrix + ?Sized>(
    pool: &ThreadPool,
    products: &mut [(&M, &QuantizedActs, &mut [f32])],
) {
    // Each product with its output and its groups' place in the shared range.
    let mut end = 0;
    let parts: Vec<(&M, &QuantizedActs, SharedMut<f32>, Range<usize>)> = products
        .iter_mut()
        .map(|(w, xa, out)| {
            assert!(
                xa.is(w.dot_type(), w.cols()),
                "activations quantized for this matrix"
            );
            assert_eq!(out.len(), xa.n_tokens() * w.rows(), "output shape");
            let start = end;
            end += groups(w.rows());
            (*w, *xa, SharedMut(out.as_mut_ptr()), start..end)
        })
        .collect();
    pool.for_each_stealing(end, GROUPS_PER_CHUNK, |piece| {
        for &(w, xa, out, ref range) in &parts {
            let gs = piece.start.max(range.start)..piece.end.min(range.end);
            if !gs.is_empty() {
                // SAFETY: pieces are handed to one thread each, so each group of each product
                // is computed by exactly one thread; `out` holds the product's output (checked
                // above) and outlives the call.
                unsafe { run_groups(w, xa, gs.start - range.start..gs.end - range.start, out) };
            }
        }
    });
}
