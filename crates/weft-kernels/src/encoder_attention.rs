//! Bidirectional multi-head attention for dense encoders (Whisper's audio encoder, vision
//! towers): every row attends to every row of its own segment (a whole audio window, an
//! image, or one of a vision tower's attention windows), with no cache and no mask.

use std::ops::Range;
use std::sync::Mutex;

use crate::float_ops::softmax_scaled;
use crate::pool::ThreadPool;
use crate::sgemm::{gemm_st, PackedB, Strides};

/// Query rows attended at a time: their scores (`ROW_BLOCK x len`, 288 KB for a 1500-frame
/// window) stay in L2 from the product that makes them through the softmax to the product
/// that uses them, where the whole `len x len` matrix (9 MB) would go to memory and back.
const ROW_BLOCK: usize = 48;

/// Attention over rows of fused `[q | k | v]` (`3 * d` values a row, `heads` heads of
/// `d / heads`), each row attending within the segment that holds it; segments must tile
/// `0..rows` in order. Returns `rows x d`, heads side by side. One head per pool task.
pub fn self_attention(
    pool: &ThreadPool,
    qkv: &[f32],
    d: usize,
    heads: usize,
    segments: &[Range<usize>],
) -> Vec<f32> {
    let rows = qkv.len() / (3 * d);
    assert_eq!(qkv.len(), rows * 3 * d, "qkv rows");
    let mut next = 0;
    for s in segments {
        assert!(
            s.start == next && s.end >= s.start,
            "segments must tile the rows"
        );
        next = s.end;
    }
    assert_eq!(next, rows, "segments must cover the rows");
    let dh = d / heads;
    let scale = (dh as f32).powf(-0.5);
    let longest = segments.iter().map(|s| s.len()).max().unwrap_or(0);
    let outs: Vec<Mutex<Vec<f32>>> = (0..heads).map(|_| Mutex::new(Vec::new())).collect();
    pool.for_each_chunk(heads, |range| {
        let mut scores = vec![0.0f32; ROW_BLOCK * longest];
        let mut gathered = vec![0.0f32; longest * dh];
        for h in range {
            let mut out = vec![0.0f32; rows * dh];
            for seg in segments {
                let t = seg.len();
                let gather = |buf: &mut [f32], col: usize| {
                    for (r, row) in buf[..t * dh].chunks_exact_mut(dh).enumerate() {
                        let at = (seg.start + r) * 3 * d + col;
                        row.copy_from_slice(&qkv[at..at + dh]);
                    }
                };
                gather(&mut gathered, d + h * dh);
                let keys = PackedB::from_rows(&gathered[..t * dh], t, dh);
                gather(&mut gathered, 2 * d + h * dh);
                let values = PackedB::from_cols(&gathered[..t * dh], t, dh);
                for r0 in (0..t).step_by(ROW_BLOCK) {
                    let n = ROW_BLOCK.min(t - r0);
                    let scores = &mut scores[..n * t];
                    gemm_st(
                        &qkv[(seg.start + r0) * 3 * d + h * dh..],
                        n,
                        &keys,
                        None,
                        scores,
                        Strides { lda: 3 * d, ldc: t },
                    );
                    for row in scores.chunks_exact_mut(t) {
                        softmax_scaled(row, scale);
                    }
                    let first = seg.start + r0;
                    gemm_st(
                        scores,
                        n,
                        &values,
                        None,
                        &mut out[first * dh..(first + n) * dh],
                        Strides { lda: t, ldc: dh },
                    );
                }
            }
            *outs[h].lock().unwrap_or_else(|e| e.into_inner()) = out;
        }
    });
    let mut attn = vec![0.0f32; rows * d];
    for (h, out) in outs.into_iter().enumerate() {
        let out = out.into_inner().unwrap_or_else(|e| e.into_inner());
        for (r, row) in out.chunks_exact(dh).enumerate() {
            attn[r * d + h * dh..r * d + (h + 1) * dh].copy_from_slice(row);
        }
    }
    attn
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 attention of one segment, for comparison.
    fn reference(qkv: &[f32], d: usize, heads: usize, seg: Range<usize>) -> Vec<f64> {
        let dh = d / heads;
        let at = |r: usize, part: usize, h: usize, i: usize| {
            qkv[r * 3 * d + part * d + h * dh + i] as f64
        };
        let mut out = vec![0.0; seg.len() * d];
        for (qi, q) in seg.clone().enumerate() {
            for h in 0..heads {
                let s: Vec<f64> = seg
                    .clone()
                    .map(|k| {
                        (0..dh)
                            .map(|i| at(q, 0, h, i) * at(k, 1, h, i))
                            .sum::<f64>()
                            / (dh as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, k) in seg.clone().enumerate() {
                    for i in 0..dh {
                        out[qi * d + h * dh + i] += e[j] / z * at(k, 2, h, i);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn segments_attend_only_within_themselves() {
        let (d, heads, rows) = (32, 4, 130);
        let qkv: Vec<f32> = (0..rows * 3 * d)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 2.0)
            .collect();
        let segments = [0..60, 60..61, 61..130];
        let got = self_attention(&ThreadPool::new(2), &qkv, d, heads, &segments);
        for seg in segments {
            let want = reference(&qkv, d, heads, seg.clone());
            for (g, w) in got[seg.start * d..seg.end * d].iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
    }
}
