//! Weights interleaved eight rows at a time in their own compact encoding, for decode.
//!
//! Decode reads every weight once per token, so it wants the file's bit width; but the file's
//! row-major blocks make each 32-element dot product end in its own scale multiply and, at the
//! end of the row, a horizontal sum, which costs more instructions than the memory system
//! leaves time for. Here the bytes of eight rows are interleaved four at a time, as in
//! [`crate::packed`], so one 256-bit multiply serves eight rows and the scales of a block are
//! one vector, while every quant keeps its file width:
//!
//! - Q8_0: per block of a group, 256 quant bytes (32-byte lane `k` holds elements `4k..4k + 4`
//!   of each row) then eight f16 `d`: the file's 34 bytes per row block.
//! - Q4_1: per block, 128 bytes whose lane `k` holds, in the low nibbles, elements `4k..4k + 4`
//!   of each row and, in the high nibbles, elements `16 + 4k..16 + 4k + 4`; then eight f16 `d`
//!   and eight f16 `m`: the file's 20 bytes per row block.
//! - Q5_0: the nibbles as Q4_1, then 32 bytes of fifth bits (bit `k` of byte `4r + j` belongs
//!   to byte `4r + j` of quant lane `k`, the lanes numbered 0..8 as the kernel multiplies them:
//!   low nibbles first), then eight f16 `d`: the file's 22 bytes per row block.
//!
//! They compute what the file-format dot products compute (the same integer sums, scales and
//! activation formats) up to the order of f32 additions.

#[cfg(target_arch = "x86_64")]
mod avx2;

use crate::matmul::{QMatrix, QuantizedActs};
use crate::pool::ThreadPool;
use crate::quant::{ActScale, GgmlType, QK};
use crate::row_groups::{self, GROUP_ROWS};

/// Most tokens one kernel call multiplies by a group.
pub const TOKENS_MAX: usize = 3;

/// The interleaved encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Q8_0,
    Q4_1,
    Q5_0,
}

impl Encoding {
    fn of(ty: GgmlType) -> Option<Encoding> {
        match ty {
            GgmlType::Q8_0 => Some(Encoding::Q8_0),
            GgmlType::Q4_1 => Some(Encoding::Q4_1),
            GgmlType::Q5_0 => Some(Encoding::Q5_0),
            _ => None,
        }
    }

    /// Bytes of the quants of one group block.
    fn quant_bytes(self) -> usize {
        match self {
            Encoding::Q8_0 => GROUP_ROWS * QK,
            Encoding::Q4_1 => GROUP_ROWS * QK / 2,
            Encoding::Q5_0 => GROUP_ROWS * QK / 2 + GROUP_ROWS * 4,
        }
    }

    /// Bytes of one group block: quants, then f16 `d` (and `m`) per row.
    fn block_bytes(self) -> usize {
        let scales = match self {
            Encoding::Q8_0 | Encoding::Q5_0 => 1,
            Encoding::Q4_1 => 2,
        };
        self.quant_bytes() + scales * 2 * GROUP_ROWS
    }

    fn dot_type(self) -> GgmlType {
        match self {
            Encoding::Q8_0 | Encoding::Q5_0 => GgmlType::Q8_0,
            Encoding::Q4_1 => GgmlType::Q8_1,
        }
    }
}

/// A weight matrix in the interleaved layout (see the module comment).
#[derive(Clone)]
pub struct InterleavedMatrix {
    encoding: Encoding,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl InterleavedMatrix {
    /// Interleaves `w` over the pool, or `None` when its type has no interleaved encoding.
    pub fn pack(pool: &ThreadPool, w: &QMatrix<'_>) -> Option<InterleavedMatrix> {
        let encoding = Encoding::of(w.ty)?;
        let row_bytes = w.ty.row_bytes(w.cols).expect("whole blocks");
        assert_eq!(w.data.len(), row_bytes * w.rows, "weight data size");
        let group_bytes = w.cols / QK * encoding.block_bytes();
        let data = row_groups::build(pool, w.rows, group_bytes, |g, dst| {
            for (r, row) in row_groups::group_rows(g, w.rows).enumerate() {
                let src = &w.data[row * row_bytes..(row + 1) * row_bytes];
                let blocks = src.chunks_exact(w.ty.block_bytes());
                for (block, out) in blocks.zip(dst.chunks_exact_mut(encoding.block_bytes())) {
                    place(encoding, block, r, out);
                }
            }
        });
        Some(InterleavedMatrix {
            encoding,
            rows: w.rows,
            cols: w.cols,
            data,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The activation format this matrix multiplies ([`QuantizedActs`] must hold it).
    pub fn dot_type(&self) -> GgmlType {
        self.encoding.dot_type()
    }

    fn group_bytes(&self) -> usize {
        self.cols / QK * self.encoding.block_bytes()
    }

    fn group(&self, g: usize) -> &[u8] {
        &self.data[g * self.group_bytes()..(g + 1) * self.group_bytes()]
    }
}

/// Writes row `r` of one file block into its group block.
fn place(encoding: Encoding, block: &[u8], r: usize, out: &mut [u8]) {
    let q = encoding.quant_bytes();
    let lane = |k: usize| k * 4 * GROUP_ROWS + 4 * r;
    match encoding {
        Encoding::Q8_0 => {
            for k in 0..QK / 4 {
                out[lane(k)..lane(k) + 4].copy_from_slice(&block[2 + 4 * k..2 + 4 * k + 4]);
            }
            out[q + 2 * r..q + 2 * r + 2].copy_from_slice(&block[..2]);
        }
        Encoding::Q4_1 => {
            // The file's byte j holds elements j (low nibble) and j + 16 (high): lane k takes
            // bytes 4k..4k + 4 as they are.
            for k in 0..QK / 8 {
                out[lane(k)..lane(k) + 4].copy_from_slice(&block[4 + 4 * k..4 + 4 * k + 4]);
            }
            out[q + 2 * r..q + 2 * r + 2].copy_from_slice(&block[..2]);
            let m = q + 2 * GROUP_ROWS + 2 * r;
            out[m..m + 2].copy_from_slice(&block[2..4]);
        }
        Encoding::Q5_0 => {
            for k in 0..QK / 8 {
                out[lane(k)..lane(k) + 4].copy_from_slice(&block[6 + 4 * k..6 + 4 * k + 4]);
            }
            let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            let bits = GROUP_ROWS * QK / 2;
            for j in 0..4 {
                let mut byte = 0u8;
                for k in 0..QK / 4 {
                    byte |= (((qh >> lane_element(k, j)) & 1) as u8) << k;
                }
                out[bits + 4 * r + j] = byte;
            }
            out[q + 2 * r..q + 2 * r + 2].copy_from_slice(&block[..2]);
        }
    }
}

/// The element of a 32-element block at byte `j` of quant lane `k` (low nibbles in lanes
/// 0..4, high nibbles in 4..8).
fn lane_element(k: usize, j: usize) -> usize {
    if k < 4 {
        4 * k + j
    } else {
        16 + 4 * (k - 4) + j
    }
}

/// `out[t][r] = Σ_c w[r][c] * x[t][c]` for every token of `xa`, which must hold the
/// activations quantized to [`InterleavedMatrix::dot_type`].
pub fn matmul_interleaved(
    pool: &ThreadPool,
    w: &InterleavedMatrix,
    xa: &QuantizedActs,
    out: &mut [f32],
) {
    assert!(
        xa.is(w.dot_type(), w.cols),
        "activations quantized for this matrix"
    );
    let blocks = w.cols / QK;
    let xblock = w.dot_type().block_bytes();
    let xrow = blocks * xblock;
    let (x, xs) = (xa.data(), xa.scales());
    row_groups::matmul::<TOKENS_MAX>(pool, w.rows, xa.n_tokens(), out, |g, tokens, sums| {
        let acts = Acts {
            x: &x[tokens.start * xrow..tokens.end * xrow],
            xs: &xs[tokens.start * blocks..tokens.end * blocks],
            blocks,
            xblock,
        };
        group_tile(w.encoding, w.group(g), &acts, sums);
    });
}

/// Up to [`TOKENS_MAX`] tokens' activation rows (`blocks` blocks of `xblock` bytes of the
/// encoding's dot type, whose quants end each block) with their scales.
struct Acts<'a> {
    x: &'a [u8],
    xs: &'a [ActScale],
    blocks: usize,
    xblock: usize,
}

impl Acts<'_> {
    /// Offset of the 32 quants of block `b` of token `t` in `x`.
    fn quants_at(&self, t: usize, b: usize) -> usize {
        (t * self.blocks + b + 1) * self.xblock - QK
    }

    fn quants(&self, t: usize, b: usize) -> &[u8] {
        let at = self.quants_at(t, b);
        &self.x[at..at + QK]
    }
}

/// One group times `out.len()` tokens: `out[t][r]`.
fn group_tile(encoding: Encoding, group: &[u8], acts: &Acts<'_>, out: &mut [[f32; GROUP_ROWS]]) {
    debug_assert_eq!(group.len(), acts.blocks * encoding.block_bytes());
    #[cfg(target_arch = "x86_64")]
    if crate::quant::avx2_available() {
        // SAFETY: the CPU supports AVX2/FMA/F16C; shapes are checked inside.
        unsafe { avx2::group_tile(encoding, group, acts, out) };
        return;
    }
    group_tile_scalar(encoding, group, acts, out);
}

/// The portable [`group_tile`]: exact integer block sums, then the same f32 operations in the
/// same order as the SIMD kernel.
fn group_tile_scalar(
    encoding: Encoding,
    group: &[u8],
    acts: &Acts<'_>,
    out: &mut [[f32; GROUP_ROWS]],
) {
    let bb = encoding.block_bytes();
    let q = encoding.quant_bytes();
    let f16 = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    for (t, sums) in out.iter_mut().enumerate() {
        *sums = [0.0; GROUP_ROWS];
        for b in 0..acts.blocks {
            let block = &group[b * bb..(b + 1) * bb];
            let x = acts.quants(t, b);
            let s = acts.xs[t * acts.blocks + b];
            for (r, sum) in sums.iter_mut().enumerate() {
                let lane = |k: usize| k * 4 * GROUP_ROWS + 4 * r;
                let mut isum = 0i32;
                for k in 0..QK / 4 {
                    for j in 0..4 {
                        let xv = x[4 * k + j] as i8 as i32;
                        let nibble = || {
                            let byte = block[lane(k % 4) + j];
                            (if k < 4 { byte & 0x0f } else { byte >> 4 }) as i32
                        };
                        let w = match encoding {
                            Encoding::Q8_0 => block[lane(k) + j] as i8 as i32,
                            Encoding::Q4_1 => nibble(),
                            Encoding::Q5_0 => {
                                let bits = block[GROUP_ROWS * QK / 2 + 4 * r + j];
                                nibble() | (((bits >> k) & 1) << 4) as i32
                            }
                        };
                        isum += w * xv;
                    }
                }
                if encoding == Encoding::Q5_0 {
                    isum -= 16 * s.qsum;
                }
                let d = f16(block, q + 2 * r);
                *sum = (isum as f32).mul_add(d * s.d, *sum);
                if encoding == Encoding::Q4_1 {
                    let m = f16(block, q + 2 * GROUP_ROWS + 2 * r);
                    *sum = m.mul_add(s.s, *sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
