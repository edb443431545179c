//! Weights repacked for prompt processing: the 4- and 5-bit types as unsigned bytes, eight rows
//! interleaved, so that one 256-bit multiply works on eight rows at once.
//!
//! The file's block formats (used by [`crate::matmul`]) keep each row's bytes together: a dot
//! product then ends in a horizontal sum and pays a scale broadcast per row and block, and a
//! 4- or 5-bit block must be unpacked before every use. Decode streams each weight once and is
//! bound by memory, so it reads that compact form. Prefill reuses every weight for many tokens
//! and is bound by arithmetic, so it reads this one, built once from the file (which stays the
//! source of truth):
//!
//! - rows are taken eight at a time (a *group*; the last one padded with zero rows);
//! - for each 32-element block of a group: 256 quant bytes, where 32-byte lane `k` holds
//!   elements `4k..4k + 4` of each of the eight rows (4 bytes per row), then the eight rows'
//!   f32 `d` and f32 `m` (see [`crate::quant::AffineGroup`]).
//!
//! A token's four activation bytes `4k..4k + 4`, broadcast to every 32-bit lane, multiply lane
//! `k` into eight per-row sums at once; the block's scales are then one vector per group, and
//! the results land as eight consecutive outputs. Activations are Q8_1 blocks; `d * Σ q` carries
//! each group's `m`, rounded to f16 as ggml's Q4_1 / Q5_1 dots round it, exact for the types
//! whose offset ggml applies in integers.

#[cfg(target_arch = "x86_64")]
mod avx2;

use crate::matmul::{QMatrix, QuantizedActs};
use crate::pool::ThreadPool;
use crate::quant::{affine_groups, ActScale, AffineGroup, GgmlType, Q8_1_BYTES, QK};
use crate::row_groups::{self, GroupedMatrix, GROUP_ROWS};

/// Bytes of one group's 32-element block: the quants, then `d` and `m` for each row.
const BLOCK_BYTES: usize = GROUP_ROWS * QK + 2 * GROUP_ROWS * 4;
/// Most tokens one kernel call multiplies by a group.
const TOKENS_MAX: usize = 4;

/// Whether a product over `n_tokens` tokens should read the packed layout rather than the
/// file's blocks: from this many tokens on, arithmetic rather than weight bytes bounds it.
pub fn worth_packing(n_tokens: usize) -> bool {
    n_tokens >= MIN_TOKENS
}

/// See [`worth_packing`].
const MIN_TOKENS: usize = 4;

/// A weight matrix in the interleaved layout (see the module comment).
#[derive(Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    /// Whether `m` multiplies the exact activation sums (see the module comment).
    exact_sums: bool,
    /// `groups * blocks` blocks of [`BLOCK_BYTES`], group-major.
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Repacks `w` over the pool, or `None` when its type has no affine form
    /// ([`GgmlType::is_affine`]).
    pub fn pack(pool: &ThreadPool, w: &QMatrix<'_>) -> Option<PackedMatrix> {
        if !w.ty.is_affine() {
            return None;
        }
        let row_bytes = w.ty.row_bytes(w.cols).expect("whole blocks");
        assert_eq!(w.data.len(), row_bytes * w.rows, "weight data size");
        let per_block = w.ty.block_len() / QK;
        let group_bytes = w.cols / QK * BLOCK_BYTES;
        let data = row_groups::build(pool, w.rows, group_bytes, |g, bytes| {
            let empty = AffineGroup {
                u: [0; QK],
                d: 0.0,
                m: 0.0,
            };
            let mut decoded = vec![empty; per_block];
            for (r, row) in row_groups::group_rows(g, w.rows).enumerate() {
                let src = &w.data[row * row_bytes..(row + 1) * row_bytes];
                for (fb, block) in src.chunks_exact(w.ty.block_bytes()).enumerate() {
                    affine_groups(w.ty, block, &mut decoded);
                    for (i, group) in decoded.iter().enumerate() {
                        let b = fb * per_block + i;
                        place(&mut bytes[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES], r, group);
                    }
                }
            }
        });
        Some(PackedMatrix {
            rows: w.rows,
            cols: w.cols,
            exact_sums: !matches!(w.ty, GgmlType::Q4_1 | GgmlType::Q5_1),
            data,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (about 1.25 per weight).
    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }

    fn group_bytes(&self) -> usize {
        self.cols / QK * BLOCK_BYTES
    }

    fn group(&self, g: usize) -> &[u8] {
        &self.data[g * self.group_bytes()..(g + 1) * self.group_bytes()]
    }
}

/// Writes row `r`'s group into one packed block.
fn place(block: &mut [u8], r: usize, group: &AffineGroup) {
    for k in 0..QK / 4 {
        let at = k * 4 * GROUP_ROWS + 4 * r;
        block[at..at + 4].copy_from_slice(&group.u[4 * k..4 * k + 4]);
    }
    let scales = GROUP_ROWS * QK;
    block[scales + 4 * r..scales + 4 * r + 4].copy_from_slice(&group.d.to_le_bytes());
    let mins = scales + 4 * GROUP_ROWS;
    block[mins + 4 * r..mins + 4 * r + 4].copy_from_slice(&group.m.to_le_bytes());
}

/// `out[t][r] = Σ_c w[r][c] * x[t][c]` for every token of `xa`, which must hold the
/// activations quantized to Q8_1 with `w.cols()` columns.
pub fn matmul_packed(pool: &ThreadPool, w: &PackedMatrix, xa: &QuantizedActs, out: &mut [f32]) {
    row_groups::matmul(pool, &mut [(w, xa, out)]);
}

impl GroupedMatrix for PackedMatrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn dot_type(&self) -> GgmlType {
        GgmlType::Q8_1
    }

    fn tile_tokens(&self) -> usize {
        TOKENS_MAX
    }

    fn tile(&self, x: &[u8], xs: &[ActScale], g: usize, sums: &mut [[f32; GROUP_ROWS]]) {
        let acts = Acts {
            x,
            xs,
            blocks: self.cols / QK,
            exact_sums: self.exact_sums,
        };
        group_tile(self.group(g), &acts, sums);
    }
}

/// Up to [`TOKENS_MAX`] tokens' Q8_1 activation rows of `blocks` blocks, with their scales.
struct Acts<'a> {
    x: &'a [u8],
    xs: &'a [ActScale],
    blocks: usize,
    exact_sums: bool,
}

impl Acts<'_> {
    /// Block `b` of token `t`: its scale and the sum that multiplies the weights' `m`.
    #[inline(always)]
    fn scales(&self, t: usize, b: usize) -> (f32, f32) {
        let s = self.xs[t * self.blocks + b];
        (s.d, offset_sum(&s, self.exact_sums))
    }
}

/// The activation sum of a block that multiplies the weights' `m`: exact or the stored f16
/// one (see the module comment).
#[inline(always)]
fn offset_sum(s: &ActScale, exact_sums: bool) -> f32 {
    if exact_sums {
        s.d_qsum
    } else {
        s.s
    }
}

/// One group (eight rows) times `out.len()` tokens: `out[t][r]`.
fn group_tile(group: &[u8], acts: &Acts<'_>, out: &mut [[f32; GROUP_ROWS]]) {
    debug_assert_eq!(group.len(), acts.blocks * BLOCK_BYTES);
    debug_assert_eq!(acts.x.len(), out.len() * acts.blocks * Q8_1_BYTES);
    #[cfg(target_arch = "x86_64")]
    if let Some(dot) = crate::byte_dot::ByteDot::detect() {
        // SAFETY: the CPU supports AVX2/FMA and `dot`'s instructions, and the shapes were
        // checked by the caller.
        unsafe { avx2::group_tile(dot, group, acts, out) };
        return;
    }
    group_tile_scalar(group, acts, out);
}

/// The portable [`group_tile`]: exact integer block sums, then the same f32 operations in the
/// same order as the SIMD kernel (so the two agree bit for bit).
fn group_tile_scalar(group: &[u8], acts: &Acts<'_>, out: &mut [[f32; GROUP_ROWS]]) {
    let xrow = acts.blocks * Q8_1_BYTES;
    for (t, sums) in out.iter_mut().enumerate() {
        *sums = [0.0; GROUP_ROWS];
        for b in 0..acts.blocks {
            let block = &group[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
            let xq = &acts.x[t * xrow + b * Q8_1_BYTES + 4..t * xrow + (b + 1) * Q8_1_BYTES];
            let (xd, xsum) = acts.scales(t, b);
            for (r, sum) in sums.iter_mut().enumerate() {
                let mut isum = 0i32;
                for (k, xk) in xq.chunks_exact(4).enumerate() {
                    let at = k * 4 * GROUP_ROWS + 4 * r;
                    for (&u, &x) in block[at..at + 4].iter().zip(xk) {
                        isum += u as i32 * x as i8 as i32;
                    }
                }
                let (d, m) = block_scales(block, r);
                *sum = (isum as f32).mul_add(d * xd, *sum);
                *sum = m.mul_add(xsum, *sum);
            }
        }
    }
}

/// Row `r`'s `d` and `m` in one packed block.
fn block_scales(block: &[u8], r: usize) -> (f32, f32) {
    let at = GROUP_ROWS * QK + 4 * r;
    let f = |i: usize| f32::from_le_bytes(block[i..i + 4].try_into().expect("4 bytes"));
    (f(at), f(at + 4 * GROUP_ROWS))
}

#[cfg(test)]
mod tests;
