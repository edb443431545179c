//! Attention of query tokens over a paged KV cache, with an online (streaming) softmax so that
//! nothing of size `context` is materialised and the cost per key stays flat with depth.
//!
//! The cache stores K and V in f16 (like llama.cpp's default cache), in fixed-size blocks:
//! `[block][slot in block][kv head][head_dim]`. A sequence reaches its keys through a block
//! table. Queries are rounded to f16 before the dot product, as ggml does when it multiplies
//! an f16 cache by f32 queries.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Largest head dimension the kernel's stack buffers hold.
pub const MAX_HEAD_DIM: usize = 512;
/// Largest number of query heads sharing one KV head.
pub const MAX_GROUP: usize = 32;
/// Keys scored per tile before the softmax state is updated.
const TILE: usize = 32;

/// One layer's paged K/V storage, seen through one sequence's block table.
#[derive(Clone, Copy)]
pub struct PagedKv<'a> {
    pub k: &'a [f16],
    pub v: &'a [f16],
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_table: &'a [u32],
}

impl PagedKv<'_> {
    /// Element offset of `(kv index, kv head)` in `k`/`v`.
    #[inline]
    fn offset(&self, index: usize, kv_head: usize) -> usize {
        let block = self.block_table[index / self.block_size] as usize;
        ((block * self.block_size + index % self.block_size) * self.n_kv_heads + kv_head)
            * self.head_dim
    }
}

/// The shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplier applied to q·k (usually 1/sqrt(head_dim)).
    pub scale: f32,
}

/// Attends the query heads of one KV-head group over keys `keys` (a range of cache indices).
///
/// `q` holds all `n_heads * head_dim` query values of one token; only the heads of
/// `kv_head`'s group are read and the matching heads of `out` written.
pub fn attend_group(
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    kv_head: usize,
    keys: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    assert!(hd <= MAX_HEAD_DIM && group <= MAX_GROUP);
    let first_head = kv_head * group;

    // Queries of the group, rounded through f16 and pre-scaled.
    let mut qg = [0.0f32; MAX_GROUP * MAX_HEAD_DIM];
    for g in 0..group {
        let src = &q[(first_head + g) * hd..(first_head + g + 1) * hd];
        for (d, &s) in qg[g * hd..(g + 1) * hd].iter_mut().zip(src) {
            *d = f16::from_f32(s).to_f32();
        }
    }
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut denom = [0.0f32; MAX_GROUP];
    let acc = &mut out[first_head * hd..(first_head + group) * hd];
    acc.fill(0.0);

    let mut kbuf = [0.0f32; MAX_HEAD_DIM];
    let mut vbuf = [0.0f32; MAX_HEAD_DIM];
    let mut scores = [0.0f32; MAX_GROUP * TILE];
    let mut start = keys.start;
    while start < keys.end {
        let n = TILE.min(keys.end - start);
        for j in 0..n {
            let off = kv.offset(start + j, kv_head);
            kv.k[off..off + hd].convert_to_f32_slice(&mut kbuf[..hd]);
            for g in 0..group {
                scores[g * TILE + j] = dot(&qg[g * hd..(g + 1) * hd], &kbuf[..hd]) * shape.scale;
            }
        }
        for g in 0..group {
            let s = &mut scores[g * TILE..g * TILE + n];
            let tile_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let new_max = max[g].max(tile_max);
            if new_max > max[g] {
                let correction = (max[g] - new_max).exp();
                denom[g] *= correction;
                for a in &mut acc[g * hd..(g + 1) * hd] {
                    *a *= correction;
                }
                max[g] = new_max;
            }
            for v in s.iter_mut() {
                *v = (*v - new_max).exp();
                denom[g] += *v;
            }
        }
        for j in 0..n {
            let off = kv.offset(start + j, kv_head);
            kv.v[off..off + hd].convert_to_f32_slice(&mut vbuf[..hd]);
            for g in 0..group {
                let p = scores[g * TILE + j];
                for (a, &v) in acc[g * hd..(g + 1) * hd].iter_mut().zip(&vbuf[..hd]) {
                    *a += p * v;
                }
            }
        }
        start += n;
    }
    for g in 0..group {
        let inv = if denom[g] > 0.0 { 1.0 / denom[g] } else { 0.0 };
        for a in &mut acc[g * hd..(g + 1) * hd] {
            *a *= inv;
        }
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums let the compiler vectorise without reassociating.
    let mut s = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            s[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut total = s.iter().sum::<f32>();
    for i in chunks * 8..a.len() {
        total += a[i] * b[i];
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain softmax attention over f16-rounded inputs, as the reference.
    fn reference(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let r = |x: f32| f16::from_f32(x).to_f32();
        let scores: Vec<f32> = ks
            .iter()
            .map(|k| q.iter().zip(k).map(|(&a, &b)| r(a) * r(b)).sum::<f32>() * scale)
            .collect();
        let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f32 = e.iter().sum();
        let mut out = vec![0.0; q.len()];
        for (w, v) in e.iter().zip(vs) {
            for (o, &x) in out.iter_mut().zip(v) {
                *o += w / z * r(x);
            }
        }
        out
    }

    #[test]
    fn paged_online_softmax_matches_plain_softmax() {
        let (hd, n_heads, n_kv, block_size, n_keys) = (8, 4, 2, 4, 75);
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        let n_blocks = n_keys.div_ceil(block_size) + 3;
        // A shuffled block table: physical blocks in reverse order.
        let table: Vec<u32> = (0..n_keys.div_ceil(block_size) as u32).rev().map(|b| b + 2).collect();
        let mut k = vec![f16::ZERO; n_blocks * block_size * n_kv * hd];
        let mut v = k.clone();
        let mut ks = vec![vec![vec![0.0; hd]; n_keys]; n_kv];
        let mut vs = ks.clone();
        let view = PagedKv { k: &[], v: &[], block_size, n_kv_heads: n_kv, head_dim: hd, block_table: &table };
        for i in 0..n_keys {
            for h in 0..n_kv {
                let off = view.offset(i, h);
                for d in 0..hd {
                    let (a, b) = (rnd() * 3.0, rnd());
                    k[off + d] = f16::from_f32(a);
                    v[off + d] = f16::from_f32(b);
                    ks[h][i][d] = a;
                    vs[h][i][d] = b;
                }
            }
        }
        let q: Vec<f32> = (0..n_heads * hd).map(|_| rnd()).collect();
        let kv = PagedKv { k: &k, v: &v, ..view };
        let shape = AttnShape { n_heads, n_kv_heads: n_kv, head_dim: hd, scale: 0.35 };
        let mut out = vec![0.0; n_heads * hd];
        for h in 0..n_kv {
            attend_group(&q, &kv, &shape, h, 5..n_keys, &mut out);
        }
        for head in 0..n_heads {
            let g = head / (n_heads / n_kv);
            let want = reference(&q[head * hd..(head + 1) * hd], &ks[g][5..], &vs[g][5..], 0.35);
            for (a, b) in out[head * hd..(head + 1) * hd].iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }
}
