//! Attention of query tokens over a paged KV cache, computed the way ggml's CPU flash
//! attention computes it, so that results match llama.cpp's: queries rounded to f16, scores
//! from f16 dot products, an online (streaming) softmax over the keys in order, and the
//! weighted sum of V kept in an f16 accumulator. Nothing of size `context` is materialised.
//!
//! The cache stores K and V in f16, in fixed-size blocks: `[block][slot in block][kv
//! head][head_dim]`. A sequence reaches its keys through a block table.

use half::f16;

use crate::f16v;

/// Largest head dimension the kernel's stack buffers hold.
pub const MAX_HEAD_DIM: usize = 512;
/// Largest number of query heads sharing one KV head.
pub const MAX_GROUP: usize = 32;

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

    let mut q16 = [f16::ZERO; MAX_GROUP * MAX_HEAD_DIM];
    for (d, &s) in q16[..group * hd]
        .iter_mut()
        .zip(&q[first_head * hd..(first_head + group) * hd])
    {
        *d = f16::from_f32(s);
    }
    let mut acc = [f16::ZERO; MAX_GROUP * MAX_HEAD_DIM];
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut sum = [0.0f32; MAX_GROUP];
    for index in keys {
        let off = kv.offset(index, kv_head);
        let (k, v) = (&kv.k[off..off + hd], &kv.v[off..off + hd]);
        for g in 0..group {
            let s = f16v::dot(&q16[g * hd..(g + 1) * hd], k) * shape.scale;
            let acc_g = &mut acc[g * hd..(g + 1) * hd];
            let (mut ms, mut vs) = (1.0f32, 1.0f32);
            if s > max[g] {
                ms = (max[g] - s).exp();
                max[g] = s;
                f16v::scale(acc_g, ms);
            } else {
                vs = (s - max[g]).exp();
            }
            f16v::mad(acc_g, v, vs);
            sum[g] = sum[g] * ms + vs;
        }
    }
    for g in 0..group {
        let inv = if sum[g] == 0.0 { 0.0 } else { 1.0 / sum[g] };
        let head = first_head + g;
        for (o, a) in out[head * hd..(head + 1) * hd]
            .iter_mut()
            .zip(&acc[g * hd..(g + 1) * hd])
        {
            *o = a.to_f32() * inv;
        }
    }
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
        let (hd, n_heads, n_kv, block_size, n_keys): (usize, usize, usize, usize, usize) =
            (8, 4, 2, 4, 75);
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        let n_blocks = n_keys.div_ceil(block_size) + 3;
        // A shuffled block table: physical blocks in reverse order.
        let table: Vec<u32> = (0..n_keys.div_ceil(block_size) as u32)
            .rev()
            .map(|b| b + 2)
            .collect();
        let mut k = vec![f16::ZERO; n_blocks * block_size * n_kv * hd];
        let mut v = k.clone();
        let mut ks = vec![vec![vec![0.0; hd]; n_keys]; n_kv];
        let mut vs = ks.clone();
        let view = PagedKv {
            k: &[],
            v: &[],
            block_size,
            n_kv_heads: n_kv,
            head_dim: hd,
            block_table: &table,
        };
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
        let kv = PagedKv {
            k: &k,
            v: &v,
            ..view
        };
        let shape = AttnShape {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            scale: 0.35,
        };
        let mut out = vec![0.0; n_heads * hd];
        for h in 0..n_kv {
            attend_group(&q, &kv, &shape, h, 5..n_keys, &mut out);
        }
        for head in 0..n_heads {
            let g = head / (n_heads / n_kv);
            let want = reference(
                &q[head * hd..(head + 1) * hd],
                &ks[g][5..],
                &vs[g][5..],
                0.35,
            );
            for (a, b) in out[head * hd..(head + 1) * hd].iter().zip(&want) {
                assert!((a - b).abs() < 4e-3, "{a} vs {b}");
            }
        }
    }
}
