//! What the row-interleaved weight layouts ([`crate::packed`], [`crate::interleaved`]) share:
//! rows taken eight at a time (a *group*, the last padded), built group by group over the pool,
//! and products computed as one group by a few tokens at a time.

use crate::pool::{SharedMut, ThreadPool};

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

/// `out[t * rows + r]` for every token and row, where `tile(g, tokens, sums)` computes
/// `sums[i][j]` = row `8g + j` times token `tokens.start + i` for at most `TOKENS` tokens.
pub(crate) fn matmul<const TOKENS: usize>(
    pool: &ThreadPool,
    rows: usize,
    n_tokens: usize,
    out: &mut [f32],
    tile: impl Fn(usize, std::ops::Range<usize>, &mut [[f32; GROUP_ROWS]]) + Sync,
) {
    assert_eq!(out.len(), n_tokens * rows, "output shape");
    let out_ptr = SharedMut(out.as_mut_ptr());
    pool.for_each_stealing(groups(rows), GROUPS_PER_CHUNK, |gs| {
        let mut sums = [[0.0f32; GROUP_ROWS]; TOKENS];
        for t0 in (0..n_tokens).step_by(TOKENS) {
            let nt = (n_tokens - t0).min(TOKENS);
            for g in gs.clone() {
                tile(g, t0..t0 + nt, &mut sums[..nt]);
                let rows_g = group_rows(g, rows);
                for (t, s) in sums[..nt].iter().enumerate() {
                    // SAFETY: groups are handed to one thread each, so each (token, row)
                    // element is written by exactly one thread, and `out` outlives the call.
                    let dst =
                        unsafe { out_ptr.slice((t0 + t) * rows + rows_g.start, rows_g.len()) };
                    dst.copy_from_slice(&s[..rows_g.len()]);
                }
            }
        }
    });
}
