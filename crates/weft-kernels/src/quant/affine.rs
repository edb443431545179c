//! Weight blocks as 32-element affine groups `w = d * u + m` with small unsigned quants `u`:
//! the common form of the 4- and 5-bit types (Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K), from which
//! [`crate::packed`] builds its interleaved prefill layout. `d` and `m` are the f32 values
//! ggml's dequantizers multiply and add, so `d * u + m` equals [`super::dequantize_row`].

use super::layout::*;
use super::GgmlType;

/// 32 weights as `d * u[i] + m`, every `u[i]` at most [`AFFINE_MAX_U`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineGroup {
    pub u: [u8; QK],
    pub d: f32,
    pub m: f32,
}

/// The largest quant of an [`AffineGroup`] (5 bits): the packed kernel sums four byte-pair
/// products in i16 lanes, which holds for quants up to 31 times activations up to 127.
pub const AFFINE_MAX_U: u8 = 31;

impl GgmlType {
    /// Whether [`affine_groups`] decodes this type.
    pub fn is_affine(self) -> bool {
        matches!(
            self,
            GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q4_K
                | GgmlType::Q5_K
        )
    }
}

/// Decodes one block of an affine type into its `ty.block_len() / 32` groups.
///
/// # Panics
/// If `ty` is not affine ([`GgmlType::is_affine`]), `block` is not one whole block, or `out`
/// has the wrong length.
pub fn affine_groups(ty: GgmlType, block: &[u8], out: &mut [AffineGroup]) {
    assert!(ty.is_affine(), "{} has no affine form", ty.name());
    assert_eq!(block.len(), ty.block_bytes(), "one whole block");
    assert_eq!(out.len(), ty.block_len() / QK, "groups per block");
    match ty {
        GgmlType::Q4_0 => {
            let d = f16_at(block, 0);
            out[0] = group32(&block[2..18], None, d, -8.0 * d);
        }
        GgmlType::Q4_1 => {
            out[0] = group32(&block[4..20], None, f16_at(block, 0), f16_at(block, 2));
        }
        GgmlType::Q5_0 => {
            let d = f16_at(block, 0);
            let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            out[0] = group32(&block[6..22], Some(qh), d, -16.0 * d);
        }
        GgmlType::Q5_1 => {
            let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
            out[0] = group32(&block[8..24], Some(qh), f16_at(block, 0), f16_at(block, 2));
        }
        GgmlType::Q4_K | GgmlType::Q5_K => k_groups(ty, block, out),
        _ => unreachable!("checked above"),
    }
}

/// A 32-element block whose 16 `qs` bytes hold elements j (low nibble) and j + 16 (high), with
/// the fifth bits in `qh` (bit j for element j).
fn group32(qs: &[u8], qh: Option<u32>, d: f32, m: f32) -> AffineGroup {
    let high = |j: usize| qh.map_or(0, |h| (((h >> j) & 1) << 4) as u8);
    let mut u = [0u8; QK];
    for (j, &q) in qs.iter().enumerate() {
        u[j] = (q & 0x0f) | high(j);
        u[j + 16] = (q >> 4) | high(j + 16);
    }
    AffineGroup { u, d, m }
}

/// Q4_K / Q5_K: eight groups with 6-bit scales and mins, `d * sc * q - dmin * mn`.
fn k_groups(ty: GgmlType, block: &[u8], out: &mut [AffineGroup]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let (sc, mn) = k4_scales_mins(&block[4..16]);
    let (qs, qh) = match ty {
        GgmlType::Q4_K => (&block[Q4_K_QS..Q4_K_QS + QK_K / 2], None),
        _ => (
            &block[Q5_K_QS..Q5_K_QS + QK_K / 2],
            Some(&block[Q5_K_QH..Q5_K_QH + QK]),
        ),
    };
    for (g, group) in out.iter_mut().enumerate() {
        // Groups 2c and 2c + 1 share the 32 bytes of chunk c: low and high nibbles.
        let chunk = &qs[32 * (g / 2)..32 * (g / 2) + 32];
        let shift = 4 * (g % 2);
        let mut u = [0u8; QK];
        for (l, v) in u.iter_mut().enumerate() {
            let high = qh.map_or(0, |h| ((h[l] >> g) & 1) << 4);
            *v = ((chunk[l] >> shift) & 0x0f) | high;
        }
        *group = AffineGroup {
            u,
            d: d * sc[g] as f32,
            m: -(dmin * mn[g] as f32),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;
    use crate::test_util::{random_row, Rng};

    #[test]
    fn affine_groups_equal_dequantization() {
        let mut rng = Rng(11);
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_affine()) {
            let per_block = ty.block_len() / QK;
            let row = random_row(ty, 40, &mut rng);
            let mut want = vec![0.0f32; 40 * ty.block_len()];
            dequantize_row(ty, &row, &mut want);
            let empty = AffineGroup {
                u: [0; QK],
                d: 0.0,
                m: 0.0,
            };
            let mut groups = vec![empty; per_block];
            for (b, block) in row.chunks_exact(ty.block_bytes()).enumerate() {
                affine_groups(ty, block, &mut groups);
                for (g, group) in groups.iter().enumerate() {
                    for (i, &u) in group.u.iter().enumerate() {
                        let at = (b * per_block + g) * QK + i;
                        assert!(u <= AFFINE_MAX_U, "{} quant {u}", ty.name());
                        let got = group.d * u as f32 + group.m;
                        assert_eq!(got, want[at], "{} element {at}", ty.name());
                    }
                }
            }
        }
    }
}
