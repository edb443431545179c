//! GGML block-quantized formats: their layouts, dequantization to f32, the quantizers for the
//! activation ("dot") formats, and the dot products of one weight row with one activation row.
//!
//! Everything here computes what ggml computes:
//! - [`dequantize_row`] is bit-exact with ggml's `dequantize_row_*` (and with the `gguf`
//!   Python package's reference dequantizer);
//! - [`quantize_row`] for Q8_0 / Q8_1 / Q8_K follows ggml's `quantize_row_q8_*_ref`;
//! - [`vec_dot`] computes what ggml-cpu's `ggml_vec_dot_<type>_<dot type>` computes: exact integer
//!   dot products per block, scaled by the block scales and summed in f32 (the AVX2 versions
//!   only sum in a different order than the portable ones in [`scalar`]).
//!
//! Block layouts (little-endian, packed), as in ggml-common.h:
//!
//! | type | elements | bytes | fields |
//! |------|----------|-------|--------|
//! | Q4_0 | 32  | 18  | d: f16, qs[16] |
//! | Q4_1 | 32  | 20  | d, m: f16, qs[16] |
//! | Q5_0 | 32  | 22  | d: f16, qh[4], qs[16] |
//! | Q5_1 | 32  | 24  | d, m: f16, qh[4], qs[16] |
//! | Q8_0 | 32  | 34  | d: f16, qs: i8[32] |
//! | Q8_1 | 32  | 36  | d: f16, s: f16 (= d * sum(qs)), qs: i8[32] |
//! | Q2_K | 256 | 84  | scales[16], qs[64], d, dmin: f16 |
//! | Q3_K | 256 | 110 | hmask[32], qs[64], scales[12], d: f16 |
//! | Q4_K | 256 | 144 | d, dmin: f16, scales[12], qs[128] |
//! | Q5_K | 256 | 176 | d, dmin: f16, scales[12], qh[32], qs[128] |
//! | Q6_K | 256 | 210 | ql[128], qh[64], scales: i8[16], d: f16 |
//! | Q8_K | 256 | 292 | d: f32, qs: i8[256], bsums: i16[16] |

mod affine;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod dequant;
pub(crate) mod layout;
pub mod scalar;

pub use affine::{affine_groups, AffineGroup, AFFINE_MAX_U};
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::{available as avx2_available, hmax_ps, hsum_ps};
pub use layout::{Q8_1_BYTES, QK};
#[cfg(test)]
mod tests;

/// A GGML tensor element type supported by weft.
#[allow(non_camel_case_types)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
}

impl GgmlType {
    /// Every supported type, in GGML id order.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::BF16,
    ];

    /// The type with GGML type id `id` (`enum ggml_type`), if weft supports it.
    pub fn from_ggml_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// The GGML type id (`enum ggml_type`).
    pub fn ggml_id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::BF16 => 30,
        }
    }

    /// The name ggml gives the type ("Q4_K", "F16", ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => layout::QK,
            GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q8_K => layout::QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => layout::Q4_0_BYTES,
            GgmlType::Q4_1 => layout::Q4_1_BYTES,
            GgmlType::Q5_0 => layout::Q5_0_BYTES,
            GgmlType::Q5_1 => layout::Q5_1_BYTES,
            GgmlType::Q8_0 => layout::Q8_0_BYTES,
            GgmlType::Q8_1 => layout::Q8_1_BYTES,
            GgmlType::Q2_K => layout::Q2_K_BYTES,
            GgmlType::Q3_K => layout::Q3_K_BYTES,
            GgmlType::Q4_K => layout::Q4_K_BYTES,
            GgmlType::Q5_K => layout::Q5_K_BYTES,
            GgmlType::Q6_K => layout::Q6_K_BYTES,
            GgmlType::Q8_K => layout::Q8_K_BYTES,
        }
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks (or the
    /// size overflows).
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let blocks = n / self.block_len();
        if blocks * self.block_len() != n {
            return None;
        }
        blocks.checked_mul(self.block_bytes())
    }

    /// The activation format [`vec_dot`] expects for weights of this type: ggml-cpu's
    /// `vec_dot_type`, except that 16-bit float weights take f32 activations where ggml rounds
    /// them to the weights' type. Keeping f32 costs nothing when the weights' bytes dominate
    /// (decode) and keeps dense models as exact as the f32 references they are checked
    /// against (bf16 activations alone move log-probabilities by a tenth of a nat).
    pub fn dot_type(self) -> GgmlType {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => GgmlType::F32,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => GgmlType::Q8_1,
            GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q8_K => GgmlType::Q8_K,
        }
    }

    /// Whether [`quantize_row`] can produce this type (some type's dot type, or a 16-bit float
    /// format for caches).
    pub fn is_dot_type(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q8_0
                | GgmlType::Q8_1
                | GgmlType::Q8_K
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of blocks in a row of `n` elements of `ty` stored in `bytes` bytes; panics when the
/// sizes do not match.
fn check_row(ty: GgmlType, n: usize, bytes: usize, what: &str) -> usize {
    let want = ty.row_bytes(n);
    assert!(
        want == Some(bytes),
        "{what}: {n} elements of {ty} need {want:?} bytes, got {bytes}"
    );
    n / ty.block_len()
}

/// Converts one row of `ty` to f32. `src` holds whole blocks of `ty`; `dst.len()` is the number
/// of elements. Bit-exact with ggml's dequantizers.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    check_row(ty, dst.len(), src.len(), "dequantize_row");
    dequant::dequantize_row(ty, src, dst);
}

/// Quantizes f32 activations into a dot type (Q8_0, Q8_1, Q8_K, F16, BF16, F32);
/// `dst.len() == ty.row_bytes(src.len())`.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    assert!(
        ty.is_dot_type(),
        "quantize_row: {ty} is not an activation format"
    );
    check_row(ty, src.len(), dst.len(), "quantize_row");
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        match ty {
            // SAFETY: `available()` checked that the CPU has AVX2, FMA and F16C; the lengths
            // were checked above.
            GgmlType::Q8_0 => return unsafe { avx2::quantize_q8_0(src, dst) },
            // SAFETY: as above.
            GgmlType::Q8_1 => return unsafe { avx2::quantize_q8_1(src, dst) },
            // SAFETY: as above.
            GgmlType::Q8_K => return unsafe { avx2::quantize_q8_k(src, dst) },
            _ => {}
        }
    }
    scalar::quantize_row_unchecked(ty, src, dst);
}

/// The f32 scale of one activation block, converted once per activation row so that tiles do
/// not convert it again for every weight row: `d` (Q8_0, Q8_1, Q8_K) and, for Q8_1, the stored
/// `s = d * sum(qs)` (an f16, what ggml's Q4_1 / Q5_1 dots use); and for Q8_0 and Q8_1 the
/// exact `qsum = sum(qs)` and `d * qsum` in f32, for weights whose offset ggml applies in
/// integers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ActScale {
    pub d: f32,
    pub s: f32,
    pub qsum: i32,
    /// `d * qsum as f32`, kept so that kernels do not convert it per weight block.
    pub d_qsum: f32,
}

impl ActScale {
    fn with_sum(d: f32, s: f32, qsum: i32) -> ActScale {
        ActScale {
            d,
            s,
            qsum,
            d_qsum: d * qsum as f32,
        }
    }
}

/// The [`ActScale`] of every block of one activation row of dot type `ty`.
pub fn act_scales(ty: GgmlType, x: &[u8], out: &mut [ActScale]) {
    let blocks = x.chunks_exact(ty.block_bytes());
    for (block, o) in blocks.zip(out.iter_mut()) {
        *o = match ty {
            GgmlType::Q8_0 => {
                ActScale::with_sum(layout::f16_at(block, 0), 0.0, quant_sum(&block[2..]))
            }
            GgmlType::Q8_1 => ActScale::with_sum(
                layout::f16_at(block, 0),
                layout::f16_at(block, 2),
                quant_sum(&block[4..]),
            ),
            GgmlType::Q8_K => ActScale {
                d: layout::f32_at(block, 0),
                ..ActScale::default()
            },
            _ => ActScale::default(),
        };
    }
}

/// The sum of signed 8-bit quants.
fn quant_sum(qs: &[u8]) -> i32 {
    qs.iter().map(|&q| q as i8 as i32).sum()
}

/// Most weight rows and most activation rows in one [`dot_tile`].
pub const TILE_MAX: usize = 4;

/// The dot products of `rows` consecutive weight rows (`w`, type `ty`, `n` elements each) with
/// `tokens` consecutive activation rows (`x`, quantized to `ty.dot_type()`, with their block
/// scales `xs` from [`act_scales`]): `out[r * tokens + t]`. Both counts are in 1..=[`TILE_MAX`].
/// The same numbers as [`vec_dot`] for every pair, up to the order of f32 additions.
#[allow(clippy::too_many_arguments)]
pub fn dot_tile(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    x: &[u8],
    xs: &[ActScale],
    rows: usize,
    tokens: usize,
    out: &mut [f32],
) {
    assert!((1..=TILE_MAX).contains(&rows) && (1..=TILE_MAX).contains(&tokens));
    let wrow = ty.row_bytes(n).expect("whole blocks");
    let xrow = ty.dot_type().row_bytes(n).expect("whole blocks");
    assert_eq!(w.len(), rows * wrow, "dot_tile weights");
    assert_eq!(x.len(), tokens * xrow, "dot_tile activations");
    assert_eq!(xs.len(), tokens * (n / ty.block_len()), "dot_tile scales");
    assert_eq!(out.len(), rows * tokens, "dot_tile output");
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: `available()` checked that the CPU has AVX2, FMA and F16C; the lengths and
        // the tile shape were checked above.
        let nb = n / ty.block_len();
        if unsafe { avx2::dot_tile(ty, nb, w, wrow, x, xrow, xs, rows, tokens, out) } {
            return;
        }
    }
    // No SIMD tile for this type or CPU: pair by pair.
    for r in 0..rows {
        for t in 0..tokens {
            let (wr, xr) = (&w[r * wrow..(r + 1) * wrow], &x[t * xrow..(t + 1) * xrow]);
            out[r * tokens + t] = vec_dot(ty, n, wr, xr);
        }
    }
}

/// Dot product of one weight row `w` (type `ty`, `n` elements) with activations `x` already
/// quantized to `ty.dot_type()`.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_row(ty, n, w.len(), "vec_dot weights");
    check_row(ty.dot_type(), n, x.len(), "vec_dot activations");
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: `available()` checked that the CPU has AVX2, FMA and F16C; the lengths were
        // checked above.
        if let Some(v) = unsafe { avx2::vec_dot(ty, n, w, x) } {
            return v;
        }
    }
    scalar::vec_dot_unchecked(ty, n, w, x)
}
