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
//! - Q4_K: per 256-element super-block, the eight sub-block scales (`[sub-block][row]`
//!   bytes) and the eight mins, unpacked from their 6 bits; 1024 bytes of nibbles, vector
//!   `8c + k` holding, per row, bytes `4k..4k + 4` of the file's 32-byte chunk `c` (low
//!   nibbles: elements `64c + 4k..`, high: `64c + 32 + 4k..`); then eight f16 `d` and eight
//!   f16 `dmin`: 148 bytes per row super-block against the file's 144.
//! - Q6_K: the sixteen i8 scales as `[sub-block][row]` bytes; then for each half `h` and lane
//!   `k` three vectors, holding per row bytes `4k..4k + 4` of `qh[32h..]` (whose bit pairs are
//!   the high bits of four elements 32 apart) and of the `ql` chunks `2h` and `2h + 1` (chunk
//!   `c` has elements `128(c / 2) + 32(c % 2)..` in its low nibbles and 64 further in its high
//!   ones); eight f16 `d`: the file's 210 bytes per row.
//!
//! They compute what the file-format dot products compute (the same integer sums, scales and
//! activation formats) up to the order of f32 additions.

#[cfg(target_arch = "x86_64")]
mod avx2;

use crate::matmul::{QMatrix, QuantizedActs};
use crate::pool::ThreadPool;
use crate::quant::layout::{k4_scales_mins, Q8_K_BSUMS, Q8_K_QS, QK_K};
use crate::quant::{ActScale, GgmlType, QK};
use crate::row_groups::{self, GroupedMatrix, GROUP_ROWS};

/// Most tokens one kernel call multiplies by a group.
pub const TOKENS_MAX: usize = 3;

/// The interleaved encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Q8_0,
    Q4_1,
    Q5_0,
    Q4K,
    Q6K,
}

impl Encoding {
    fn of(ty: GgmlType) -> Option<Encoding> {
        match ty {
            GgmlType::Q8_0 => Some(Encoding::Q8_0),
            GgmlType::Q4_1 => Some(Encoding::Q4_1),
            GgmlType::Q5_0 => Some(Encoding::Q5_0),
            GgmlType::Q4_K => Some(Encoding::Q4K),
            GgmlType::Q6_K => Some(Encoding::Q6K),
            _ => None,
        }
    }

    /// Elements per row of one block.
    fn block_len(self) -> usize {
        match self {
            Encoding::Q8_0 | Encoding::Q4_1 | Encoding::Q5_0 => QK,
            Encoding::Q4K | Encoding::Q6K => QK_K,
        }
    }

    /// Bytes of the integer part of one group block (quants, and the K types' sub-block
    /// scales): the f16 scales follow.
    fn int_bytes(self) -> usize {
        match self {
            Encoding::Q8_0 => GROUP_ROWS * QK,
            Encoding::Q4_1 => GROUP_ROWS * QK / 2,
            Encoding::Q5_0 => GROUP_ROWS * QK / 2 + GROUP_ROWS * 4,
            Encoding::Q4K => GROUP_ROWS * (QK_K / 2 + 2 * K4_SUBS),
            Encoding::Q6K => GROUP_ROWS * (QK_K / 2 + QK_K / 4 + K6_SUBS),
        }
    }

    /// Bytes of one group block: the integer part, then f16 `d` (and `m` or `dmin`) per row.
    fn block_bytes(self) -> usize {
        let scales = match self {
            Encoding::Q8_0 | Encoding::Q5_0 | Encoding::Q6K => 1,
            Encoding::Q4_1 | Encoding::Q4K => 2,
        };
        self.int_bytes() + scales * 2 * GROUP_ROWS
    }

    fn dot_type(self) -> GgmlType {
        match self {
            Encoding::Q8_0 | Encoding::Q5_0 => GgmlType::Q8_0,
            Encoding::Q4_1 => GgmlType::Q8_1,
            Encoding::Q4K | Encoding::Q6K => GgmlType::Q8_K,
        }
    }
}

/// Sub-blocks (of 32 elements) of a Q4_K super-block, each with a 6-bit scale and min.
const K4_SUBS: usize = QK_K / 32;
/// Sub-blocks (of 16 elements) of a Q6_K super-block, each with an i8 scale.
const K6_SUBS: usize = QK_K / 16;
/// A Q4_K group block: scales (`[sub-block][row]`), mins, then the 32 quant vectors.
const K4_SCALES: usize = 0;
const K4_MINS: usize = K4_SCALES + GROUP_ROWS * K4_SUBS;
const K4_QUANTS: usize = K4_MINS + GROUP_ROWS * K4_SUBS;
/// A Q6_K group block: scales (`[sub-block][row]`), then per (h, k) the `qh` vector and the
/// `ql` vectors of chunks 2h and 2h + 1, in the order the kernel reads them.
const K6_SCALES: usize = 0;
const K6_VECTORS: usize = K6_SCALES + GROUP_ROWS * K6_SUBS;

/// Offset of Q4_K quant vector `v` (`8c + k`) in a group block.
fn k4_quants(v: usize) -> usize {
    K4_QUANTS + 32 * v
}

/// Offset of a Q6_K group block's vector for half `h`, lane `k`: `part` 0 is `qh`, 1 + s the
/// `ql` of chunk 2h + s.
fn k6_vector(h: usize, k: usize, part: usize) -> usize {
    K6_VECTORS + 32 * (3 * (8 * h + k) + part)
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
        let group_bytes = w.cols / encoding.block_len() * encoding.block_bytes();
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
        self.cols / self.encoding.block_len() * self.encoding.block_bytes()
    }

    fn group(&self, g: usize) -> &[u8] {
        &self.data[g * self.group_bytes()..(g + 1) * self.group_bytes()]
    }
}

/// Writes row `r` of one file block into its group block.
fn place(encoding: Encoding, block: &[u8], r: usize, out: &mut [u8]) {
    let q = encoding.int_bytes();
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
        Encoding::Q4K => {
            // File: d, dmin, 12 bytes of packed scales and mins, 128 bytes of nibbles.
            for v in 0..QK_K / 8 {
                let at = k4_quants(v) + 4 * r;
                out[at..at + 4].copy_from_slice(&block[16 + 4 * v..16 + 4 * v + 4]);
            }
            let (sc, mn) = k4_scales_mins(&block[4..16]);
            for j in 0..K4_SUBS {
                out[K4_SCALES + GROUP_ROWS * j + r] = sc[j];
                out[K4_MINS + GROUP_ROWS * j + r] = mn[j];
            }
            out[q + 2 * r..q + 2 * r + 2].copy_from_slice(&block[..2]);
            let dmin = q + 2 * GROUP_ROWS + 2 * r;
            out[dmin..dmin + 2].copy_from_slice(&block[2..4]);
        }
        Encoding::Q6K => {
            // File: 128 bytes of ql, 64 of qh, 16 i8 scales, d.
            for h in 0..2 {
                for k in 0..8 {
                    let qh = 128 + 32 * h + 4 * k;
                    let at = k6_vector(h, k, 0) + 4 * r;
                    out[at..at + 4].copy_from_slice(&block[qh..qh + 4]);
                    for s in 0..2 {
                        let ql = 32 * (2 * h + s) + 4 * k;
                        let at = k6_vector(h, k, 1 + s) + 4 * r;
                        out[at..at + 4].copy_from_slice(&block[ql..ql + 4]);
                    }
                }
            }
            for b in 0..K6_SUBS {
                out[K6_SCALES + GROUP_ROWS * b + r] = block[192 + b];
            }
            out[q + 2 * r..q + 2 * r + 2].copy_from_slice(&block[208..210]);
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
    row_groups::matmul(pool, &mut [(w, xa, out)]);
}

impl GroupedMatrix for InterleavedMatrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn dot_type(&self) -> GgmlType {
        self.encoding.dot_type()
    }

    fn tile_tokens(&self) -> usize {
        TOKENS_MAX
    }

    fn tile(&self, x: &[u8], xs: &[ActScale], g: usize, sums: &mut [[f32; GROUP_ROWS]]) {
        let dot = self.encoding.dot_type();
        let acts = Acts {
            x,
            xs,
            blocks: self.cols / self.encoding.block_len(),
            xblock: dot.block_bytes(),
            quants: quants_offset(dot),
        };
        group_tile(self.encoding, self.group(g), &acts, sums);
    }
}

/// Where the quants of a block of activation type `dot` start: Q8_0 and Q8_1 end with their
/// 32, Q8_K has them after its f32 `d`.
fn quants_offset(dot: GgmlType) -> usize {
    match dot {
        GgmlType::Q8_K => Q8_K_QS,
        _ => dot.block_bytes() - QK,
    }
}

/// Up to [`TOKENS_MAX`] tokens' activation rows (`blocks` blocks of `xblock` bytes of the
/// encoding's dot type, their quants at `quants` in each block) with their scales.
struct Acts<'a> {
    x: &'a [u8],
    xs: &'a [ActScale],
    blocks: usize,
    xblock: usize,
    quants: usize,
}

impl Acts<'_> {
    /// Offset of the quants of block `b` of token `t` in `x`.
    fn quants_at(&self, t: usize, b: usize) -> usize {
        (t * self.blocks + b) * self.xblock + self.quants
    }

    /// The `n` quants of block `b` of token `t`.
    fn quants(&self, t: usize, b: usize, n: usize) -> &[u8] {
        let at = self.quants_at(t, b);
        &self.x[at..at + n]
    }

    /// Q8_K: the sums of quants `32i..32i + 16` and `32i + 16..32i + 32` of block `b` of
    /// token `t`, as the two i16 halves of one i32 (low first).
    fn bsum_pair(&self, t: usize, b: usize, i: usize) -> i32 {
        let at = (t * self.blocks + b) * self.xblock + Q8_K_BSUMS + 4 * i;
        i32::from_le_bytes(self.x[at..at + 4].try_into().expect("four bytes"))
    }
}

/// One group times `out.len()` tokens: `out[t][r]`.
fn group_tile(encoding: Encoding, group: &[u8], acts: &Acts<'_>, out: &mut [[f32; GROUP_ROWS]]) {
    debug_assert_eq!(group.len(), acts.blocks * encoding.block_bytes());
    #[cfg(target_arch = "x86_64")]
    if let Some(dot) = crate::byte_dot::ByteDot::detect() {
        // SAFETY: the CPU supports AVX2/FMA/F16C and `dot`'s instructions; shapes are checked
        // inside.
        unsafe { avx2::group_tile(dot, encoding, group, acts, out) };
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
    let q = encoding.int_bytes();
    let f16 = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    for (t, sums) in out.iter_mut().enumerate() {
        *sums = [0.0; GROUP_ROWS];
        for b in 0..acts.blocks {
            let block = &group[b * bb..(b + 1) * bb];
            let s = acts.xs[t * acts.blocks + b];
            for (r, sum) in sums.iter_mut().enumerate() {
                let d = f16(block, q + 2 * r);
                // Q4_1's m, Q4_K's dmin.
                let d2 = || f16(block, q + 2 * GROUP_ROWS + 2 * r);
                match encoding {
                    Encoding::Q8_0 => {
                        *sum = (legacy_isum(encoding, block, acts, t, b, r) as f32)
                            .mul_add(d * s.d, *sum);
                    }
                    Encoding::Q4_1 => {
                        *sum = (legacy_isum(encoding, block, acts, t, b, r) as f32)
                            .mul_add(d * s.d, *sum);
                        *sum = d2().mul_add(s.s, *sum);
                    }
                    Encoding::Q5_0 => {
                        let isum = legacy_isum(encoding, block, acts, t, b, r) - 16 * s.qsum;
                        *sum = (isum as f32).mul_add(d * s.d, *sum);
                    }
                    Encoding::Q4K => {
                        let (isum, msum) = q4k_isums(block, acts, t, b, r);
                        *sum = (isum as f32).mul_add(d * s.d, *sum);
                        *sum = (-(msum as f32)).mul_add(d2() * s.d, *sum);
                    }
                    Encoding::Q6K => {
                        *sum = (q6k_isum(block, acts, t, b, r) as f32).mul_add(d * s.d, *sum);
                    }
                }
            }
        }
    }
}

/// Σ w·x over row `r` of a Q8_0 / Q4_1 / Q5_0 group block and token `t`'s block `b`, with
/// the unsigned quants as stored (Q5_0's offset of 16 not yet applied).
fn legacy_isum(
    encoding: Encoding,
    block: &[u8],
    acts: &Acts<'_>,
    t: usize,
    b: usize,
    r: usize,
) -> i32 {
    let x = acts.quants(t, b, QK);
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
                Encoding::Q4K | Encoding::Q6K => unreachable!("a K encoding"),
            };
            isum += w * xv;
        }
    }
    isum
}

/// Q4_K, row `r` of a group super-block and token `t`'s block `b`: Σ scale·(Σ q·x) over the
/// sub-blocks, and Σ min·(Σ x).
fn q4k_isums(block: &[u8], acts: &Acts<'_>, t: usize, b: usize, r: usize) -> (i32, i32) {
    let x = acts.quants(t, b, QK_K);
    let mut isum = 0i32;
    for c in 0..QK_K / 64 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for k in 0..8 {
            for j in 0..4 {
                let byte = block[k4_quants(8 * c + k) + 4 * r + j];
                lo += (byte & 0x0f) as i32 * x[64 * c + 4 * k + j] as i8 as i32;
                hi += (byte >> 4) as i32 * x[64 * c + 32 + 4 * k + j] as i8 as i32;
            }
        }
        let scale = |j: usize| block[K4_SCALES + GROUP_ROWS * j + r] as i32;
        isum += scale(2 * c) * lo + scale(2 * c + 1) * hi;
    }
    let msum = (0..K4_SUBS)
        .map(|j| {
            let pair = acts.bsum_pair(t, b, j);
            let bsum = (pair as i16) as i32 + (pair >> 16);
            block[K4_MINS + GROUP_ROWS * j + r] as i32 * bsum
        })
        .sum();
    (isum, msum)
}

/// Q6_K, row `r` of a group super-block and token `t`'s block `b`: Σ scale·(q - 32)·x.
fn q6k_isum(block: &[u8], acts: &Acts<'_>, t: usize, b: usize, r: usize) -> i32 {
    let x = acts.quants(t, b, QK_K);
    let scale = |sub: usize| block[K6_SCALES + GROUP_ROWS * sub + r] as i8 as i32;
    let mut isum = 0i32;
    for h in 0..2 {
        for k in 0..8 {
            for j in 0..4 {
                let qh = block[k6_vector(h, k, 0) + 4 * r + j];
                for s in 0..2 {
                    let ql = block[k6_vector(h, k, 1 + s) + 4 * r + j];
                    for n in 0..2 {
                        let low = if n == 0 { ql & 0x0f } else { ql >> 4 };
                        let high = (qh >> (2 * (2 * n + s))) & 3;
                        let e = 128 * h + 64 * n + 32 * s + 4 * k + j;
                        let q = (low | (high << 4)) as i32 - 32;
                        isum += scale(e / 16) * q * x[e] as i8 as i32;
                    }
                }
            }
        }
    }
    isum
}

#[cfg(test)]
mod tests;
