//! Block sizes, field offsets and the small decoding helpers shared by the dequantizers and the
//! dot products.

/// Elements per block of the 32-element formats (QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK8_1).
pub const QK: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

pub const Q4_0_BYTES: usize = 2 + QK / 2;
pub const Q4_1_BYTES: usize = 4 + QK / 2;
pub const Q5_0_BYTES: usize = 2 + 4 + QK / 2;
pub const Q5_1_BYTES: usize = 4 + 4 + QK / 2;
pub const Q8_0_BYTES: usize = 2 + QK;
pub const Q8_1_BYTES: usize = 4 + QK;
pub const Q2_K_BYTES: usize = QK_K / 16 + QK_K / 4 + 4;
pub const Q3_K_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
pub const Q4_K_BYTES: usize = 4 + 12 + QK_K / 2;
pub const Q5_K_BYTES: usize = 4 + 12 + QK_K / 8 + QK_K / 2;
pub const Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
pub const Q8_K_BYTES: usize = 4 + QK_K + 2 * (QK_K / 16);

// Field offsets inside the K-quant blocks.
pub const Q2_K_QS: usize = 16;
pub const Q2_K_D: usize = 80;
pub const Q3_K_QS: usize = 32;
pub const Q3_K_SCALES: usize = 96;
pub const Q3_K_D: usize = 108;
pub const Q4_K_QS: usize = 16;
pub const Q5_K_QH: usize = 16;
pub const Q5_K_QS: usize = 48;
pub const Q6_K_QH: usize = 128;
pub const Q6_K_SCALES: usize = 192;
pub const Q6_K_D: usize = 208;
pub const Q8_K_QS: usize = 4;
pub const Q8_K_BSUMS: usize = 260;

/// The f16 at `b[off..off + 2]`, as f32 (exact).
#[inline]
pub fn f16_at(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

/// The f32 at `b[off..off + 4]`.
#[inline]
pub fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The i16 at `b[off..off + 2]`.
#[inline]
pub fn i16_at(b: &[u8], off: usize) -> i16 {
    i16::from_le_bytes([b[off], b[off + 1]])
}

/// Exact IEEE half -> single conversion (the same value F16C's `vcvtph2ps` gives).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// IEEE single -> half, rounding to nearest even (ggml's `GGML_FP32_TO_FP16`).
#[inline]
pub fn f32_to_f16(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// bfloat16 -> f32 (exact: the bf16 bits are the top half of the f32).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// f32 -> bfloat16 as ggml's `ggml_compute_fp32_to_bf16`: NaNs become quiet NaNs, everything
/// else rounds to nearest even.
#[inline]
pub fn f32_to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// The eight 6-bit scales and eight 6-bit mins packed in the 12 `scales` bytes of Q4_K and
/// Q5_K (ggml's `get_scale_min_k4` for j = 0..8).
#[inline]
pub fn k4_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// [`k4_scales_mins`] packed in two u64 (byte j of the first is scale j, of the second min j),
/// computed four bytes at a time.
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub fn k4_scales_mins_packed(s: &[u8; 12]) -> (u64, u64) {
    let a = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let b = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let c = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_lo = a & 0x3f3f_3f3f;
    let mn_lo = b & 0x3f3f_3f3f;
    let sc_hi = (c & 0x0f0f_0f0f) | (((a >> 6) & 0x0303_0303) << 4);
    let mn_hi = ((c >> 4) & 0x0f0f_0f0f) | (((b >> 6) & 0x0303_0303) << 4);
    (
        u64::from(sc_lo) | (u64::from(sc_hi) << 32),
        u64::from(mn_lo) | (u64::from(mn_hi) << 32),
    )
}

/// The sixteen 6-bit scales of a Q3_K block, before subtracting 32, packed four to a u32
/// (byte j of the result is scale j), computed four bytes at a time.
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub fn q3k_scales_packed(s: &[u8; 12]) -> [u32; 4] {
    let a = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let b = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let c = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let (m4, m2) = (0x0f0f_0f0f, 0x0303_0303);
    [
        (a & m4) | ((c & m2) << 4),
        (b & m4) | (((c >> 2) & m2) << 4),
        ((a >> 4) & m4) | (((c >> 4) & m2) << 4),
        ((b >> 4) & m4) | (((c >> 6) & m2) << 4),
    ]
}

/// The sixteen signed scales of a Q3_K block (6-bit values packed in 12 bytes, minus 32).
#[inline]
pub fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let lo = (s[i % 8] >> (4 * (i / 8))) & 0x0f;
        let hi = (s[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        *o = ((lo | (hi << 4)) as i8) - 32;
    }
    out
}
