//! Attention of query tokens over a paged KV cache, flash-attention style: keys are visited in
//! tiles of [`KEY_TILE`]; for each tile the scores of all query rows sharing a KV head are
//! computed, the softmax state (running max and sum) is updated once per tile, and V is
//! accumulated in f32 with the accumulators held in registers across the tile. Nothing of size
//! `context` is materialised, so decode cost grows only with the keys read.
//!
//! A key range can be split into parts computed independently ([`attend_keys`]) and combined
//! ([`combine`]): decode of one sequence then spreads one head's long context over all threads
//! (flash-decoding) instead of leaving threads idle when there are fewer KV heads than cores.
//!
//! The cache stores K and V in f16, in fixed-size blocks laid out as [`KvLayout`] says.
//! A sequence reaches its keys through a block table.

use std::ops::Range;

use half::f16;

/// Largest head dimension supported.
pub const MAX_HEAD_DIM: usize = 512;
/// Largest number of query heads sharing one KV head.
pub const MAX_GROUP: usize = 32;
/// Most query rows (heads times tokens) one call attends together.
pub const MAX_ROWS: usize = 32;
/// Keys per tile: the softmax rescale happens once per tile. A multiple of 8 (the SIMD
/// kernels reduce scores eight keys at a time).
pub const KEY_TILE: usize = 32;

/// Where a cache entry lives in one layer's K (or V) storage: `[block][kv head][slot][head_dim]`.
/// One KV head's keys within a block are one contiguous run, which a tile reads front to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayout {
    /// Elements one block occupies (all KV heads).
    pub fn block_len(&self) -> usize {
        self.block_size * self.n_kv_heads * self.head_dim
    }

    /// Element offset of `slot` of physical `block` for `kv_head`.
    #[inline]
    pub fn offset(&self, block: usize, kv_head: usize, slot: usize) -> usize {
        ((block * self.n_kv_heads + kv_head) * self.block_size + slot) * self.head_dim
    }
}

/// One layer's paged K/V storage, seen through one sequence's block table.
#[derive(Clone, Copy)]
pub struct PagedKv<'a> {
    pub k: &'a [f16],
    pub v: &'a [f16],
    pub layout: KvLayout,
    pub block_table: &'a [u32],
}

impl PagedKv<'_> {
    /// Element offsets in `k`/`v` of `kv_head`'s entries for cache indices `start..start +
    /// out.len()`, walking the block table instead of dividing per index.
    fn offsets(&self, start: usize, kv_head: usize, out: &mut [usize]) {
        let bs = self.layout.block_size;
        let (mut block, mut slot) = (start / bs, start % bs);
        for o in out {
            if slot == bs {
                block += 1;
                slot = 0;
            }
            *o = self
                .layout
                .offset(self.block_table[block] as usize, kv_head, slot);
            slot += 1;
        }
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

impl AttnShape {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// The softmax state of one KV-head group's query heads over some keys: per head the largest
/// score, the sum of `exp(score - max)`, and the unnormalised weighted sum of V (`group *
/// head_dim` values).
pub struct Partial<'a> {
    pub max: &'a mut [f32],
    pub sum: &'a mut [f32],
    pub acc: &'a mut [f32],
}

/// Attends query rows to one KV head: `q` holds `row_keys.len()` rows of `head_dim` values
/// (the heads of one KV-head group, for one or several tokens of a sequence); row r attends the
/// cache indices in both `row_keys[r]` (its causal, possibly windowed, range) and `keys` (the
/// part being computed). Rows sharing the KV head load and convert each key and value once
/// per tile.
pub fn attend_keys(
    q: &[f32],
    row_keys: &[Range<usize>],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    kv_head: usize,
    keys: Range<usize>,
    part: Partial<'_>,
) {
    let (hd, rows) = (shape.head_dim, row_keys.len());
    assert!(hd <= MAX_HEAD_DIM && rows <= MAX_ROWS && hd == kv.layout.head_dim);
    assert_eq!(q.len(), rows * hd);
    assert!(part.max.len() == rows && part.sum.len() == rows && part.acc.len() == rows * hd);
    part.max.fill(f32::NEG_INFINITY);
    part.sum.fill(0.0);
    part.acc.fill(0.0);
    // p[r * KEY_TILE + j]: score, then weight, of row r for key j of the tile.
    let mut p = [0.0f32; MAX_ROWS * KEY_TILE];
    // The cache is far bigger than the caches of the CPU, and a tile's keys are a few short
    // runs the hardware prefetcher barely starts on: each tile asks for the next tile's keys
    // and values while it computes, a few lines at a time through its loops (a burst of
    // hundreds of requests would only queue), so loads overlap arithmetic instead of
    // stalling it.
    let mut offsets = [0usize; KEY_TILE];
    let mut next = [0usize; KEY_TILE];
    let tile_len = |start: usize| (keys.end - start).min(KEY_TILE);
    let mut start = keys.start;
    if start < keys.end {
        let first = &mut next[..tile_len(start)];
        kv.offsets(start, kv_head, first);
        simd::prefetch(kv.k, first, hd);
        simd::prefetch(kv.v, first, hd);
    }
    while start < keys.end {
        let n = tile_len(start);
        std::mem::swap(&mut offsets, &mut next);
        let offsets = &offsets[..n];
        let ahead = if start + n < keys.end {
            let ahead = &mut next[..tile_len(start + n)];
            kv.offsets(start + n, kv_head, ahead);
            &ahead[..]
        } else {
            &[]
        };
        simd::scores(q, kv.k, offsets, &mut p[..rows * KEY_TILE], ahead);
        for (r, range) in row_keys.iter().enumerate() {
            let row = &mut p[r * KEY_TILE..(r + 1) * KEY_TILE];
            // The tile's keys this row may see.
            let lo = range.start.clamp(start, start + n) - start;
            let hi = range.end.clamp(start, start + n) - start;
            if lo >= hi {
                row.fill(0.0);
                continue;
            }
            let (new_max, tile_sum) = simd::softmax_tile(row, lo..hi, shape.scale, part.max[r]);
            if new_max > part.max[r] {
                // exp(-inf) = 0 clears the empty state.
                let c = (part.max[r] - new_max).exp();
                part.sum[r] *= c;
                for a in &mut part.acc[r * hd..(r + 1) * hd] {
                    *a *= c;
                }
                part.max[r] = new_max;
            }
            part.sum[r] += tile_sum;
        }
        simd::accumulate(part.acc, &p[..rows * KEY_TILE], kv.v, offsets, ahead);
        start += n;
    }
}

/// Combines the partial states of `rows` query rows over disjoint key ranges into their
/// normalised output (`out`: `rows * head_dim`). Part `i` keeps its rows in slots `i * slots..`
/// of `max` and `sum` (and `acc`, `head_dim` values per slot); slots past `rows` are ignored.
pub fn combine(
    rows: usize,
    slots: usize,
    head_dim: usize,
    max: &[f32],
    sum: &[f32],
    acc: &[f32],
    out: &mut [f32],
) {
    let parts = max.len() / slots;
    assert!(rows <= slots && max.len() == parts * slots && sum.len() == max.len());
    assert_eq!(acc.len(), max.len() * head_dim);
    for g in 0..rows {
        let m = (0..parts)
            .map(|i| max[i * slots + g])
            .fold(f32::NEG_INFINITY, f32::max);
        let o = &mut out[g * head_dim..(g + 1) * head_dim];
        o.fill(0.0);
        let mut total = 0.0;
        for i in 0..parts {
            let k = i * slots + g;
            if max[k] == f32::NEG_INFINITY {
                continue;
            }
            let c = (max[k] - m).exp();
            total += sum[k] * c;
            for (o, a) in o.iter_mut().zip(&acc[k * head_dim..(k + 1) * head_dim]) {
                *o += a * c;
            }
        }
        let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
}

/// The attention inner loops, runtime-dispatched: AVX2+FMA+F16C on x86-64 when the head
/// dimension is a multiple of 8, the portable versions otherwise.
///
/// Both tile loops take the query rows (or their accumulators) as `rows` rows of `hd` values,
/// the tile's per-row scores or weights as `rows` rows of [`KEY_TILE`] values, and the tile's
/// keys (or values) as element offsets into the layer's K (or V) storage, each the start of
/// `hd` values.
mod simd {
    use std::ops::Range;

    use half::f16;

    use super::KEY_TILE;

    #[cfg(target_arch = "x86_64")]
    fn avx2(len: usize) -> bool {
        use std::sync::OnceLock;
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        len.is_multiple_of(8)
            && *AVAILABLE.get_or_init(|| {
                std::env::var_os("WEFT_FORCE_SCALAR").is_none()
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            })
    }

    /// Rows and head dimension of a tile call, checked.
    fn tile_shape(row_values: usize, tile_values: usize, offsets: &[usize]) -> (usize, usize) {
        assert!(tile_values > 0 && tile_values.is_multiple_of(KEY_TILE));
        assert!(offsets.len() <= KEY_TILE);
        let rows = tile_values / KEY_TILE;
        assert!(row_values.is_multiple_of(rows));
        (rows, row_values / rows)
    }

    /// `out[r * KEY_TILE + j] = q_r · k[offsets[j]..][..hd]` for each row r and key j; the
    /// keys at `ahead` (the next tile's) are prefetched on the way.
    pub fn scores(q: &[f32], k: &[f16], offsets: &[usize], out: &mut [f32], ahead: &[usize]) {
        let (_, hd) = tile_shape(q.len(), out.len(), offsets);
        #[cfg(target_arch = "x86_64")]
        if avx2(hd) {
            // SAFETY: the CPU has AVX2, FMA and F16C and hd is a multiple of 8 (checked
            // above); the shapes were checked by `tile_shape`.
            return unsafe { x86::scores(q, k, offsets, out, ahead) };
        }
        let _ = ahead;
        scalar::scores(q, k, offsets, out)
    }

    /// `acc_r += sum_j w[r * KEY_TILE + j] * v[offsets[j]..][..hd]` for each row r; the
    /// values at `ahead` (the next tile's) are prefetched on the way.
    pub fn accumulate(acc: &mut [f32], w: &[f32], v: &[f16], offsets: &[usize], ahead: &[usize]) {
        let (_, hd) = tile_shape(acc.len(), w.len(), offsets);
        #[cfg(target_arch = "x86_64")]
        if avx2(hd) {
            // SAFETY: as in `scores`.
            return unsafe { x86::accumulate(acc, w, v, offsets, ahead) };
        }
        let _ = ahead;
        scalar::accumulate(acc, w, v, offsets)
    }

    /// f16 values per 64-byte cache line.
    const LINE: usize = 32;

    /// Asks the CPU to bring the `hd` values at each of `offsets` in `data` towards L1, without
    /// waiting for them. A hint: it changes no result.
    pub fn prefetch(data: &[f16], offsets: &[usize], hd: usize) {
        for &off in offsets {
            let run = &data[off..off + hd];
            #[cfg(target_arch = "x86_64")]
            for i in (0..hd).step_by(LINE) {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                // SAFETY: SSE is part of x86-64; a prefetch reads nothing architecturally and
                // never faults, and the address is inside `run`.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(run[i..].as_ptr().cast()) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = run;
        }
    }

    /// One row's online-softmax step over a tile: the scores `row[keys]` are scaled by `scale`
    /// and `m` becomes the larger of `max` and their largest; then `row[j] = exp(row[j] - m)`
    /// for `j` in `keys` and 0 elsewhere in the tile. Returns `m` and the sum of the weights.
    /// `keys` must not be empty.
    pub fn softmax_tile(row: &mut [f32], keys: Range<usize>, scale: f32, max: f32) -> (f32, f32) {
        assert!(row.len() == KEY_TILE && keys.start < keys.end && keys.end <= KEY_TILE);
        #[cfg(target_arch = "x86_64")]
        if avx2(8) {
            // SAFETY: the CPU has AVX2 and FMA (checked above); the row and range were checked.
            return unsafe { x86::softmax_tile(row, keys, scale, max) };
        }
        scalar::softmax_tile(row, keys, scale, max)
    }

    /// ln 2 split in a part exact in f32 and a remainder (Cody-Waite reduction).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    /// Below this, exp is clamped (e^-87.3 is the smallest normal f32's order).
    const EXP_MIN: f32 = -87.3;
    /// Taylor coefficients 1/k! for k = 6 down to 2; |r| <= ln2 / 2 keeps the error < 2e-7.
    const C: [f32; 5] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5];

    pub mod scalar {
        use std::ops::Range;

        use half::f16;

        use super::{tile_shape, C, EXP_MIN, KEY_TILE, LN2_HI, LN2_LO};

        pub fn scores(q: &[f32], k: &[f16], offsets: &[usize], out: &mut [f32]) {
            let (_, hd) = tile_shape(q.len(), out.len(), offsets);
            for (qr, out) in q.chunks_exact(hd).zip(out.chunks_exact_mut(KEY_TILE)) {
                for (o, &off) in out.iter_mut().zip(offsets) {
                    *o = qr
                        .iter()
                        .zip(&k[off..off + hd])
                        .map(|(a, b)| a * b.to_f32())
                        .sum();
                }
            }
        }

        pub fn accumulate(acc: &mut [f32], w: &[f32], v: &[f16], offsets: &[usize]) {
            let (_, hd) = tile_shape(acc.len(), w.len(), offsets);
            for (ar, wr) in acc.chunks_exact_mut(hd).zip(w.chunks_exact(KEY_TILE)) {
                for (&wj, &off) in wr.iter().zip(offsets) {
                    for (a, b) in ar.iter_mut().zip(&v[off..off + hd]) {
                        *a += wj * b.to_f32();
                    }
                }
            }
        }

        pub fn softmax_tile(
            row: &mut [f32],
            keys: Range<usize>,
            scale: f32,
            max: f32,
        ) -> (f32, f32) {
            let (lo, hi) = (keys.start, keys.end);
            for s in &mut row[keys.clone()] {
                *s *= scale;
            }
            let m = row[keys].iter().copied().fold(max, f32::max);
            let mut sum = 0.0;
            for s in &mut row[lo..hi] {
                *s = exp(*s - m);
                sum += *s;
            }
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
            (m, sum)
        }

        /// The same steps as the SIMD version, one lane.
        pub fn exp(x: f32) -> f32 {
            let x = x.max(EXP_MIN);
            let n = (x * std::f32::consts::LOG2_E).round_ties_even();
            let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
            let mut p = C[0];
            for c in &C[1..] {
                p = p.mul_add(r, *c);
            }
            let p = p.mul_add(r, 1.0).mul_add(r, 1.0);
            p * f32::from_bits(((n as i32 + 127) as u32) << 23)
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;
        use std::ops::Range;

        use half::f16;

        use super::{tile_shape, C, EXP_MIN, KEY_TILE, LN2_HI, LN2_LO};
        use crate::quant::{hmax_ps, hsum_ps};

        /// Query rows one pass of `scores` over a tile's keys serves: one accumulator each,
        /// in registers, with the converted key.
        const SCORE_ROWS_PER_PASS: usize = 8;
        /// Rows one pass of `accumulate` serves: with the value columns of a pass, their
        /// accumulators fill 12 of the 16 vector registers.
        const ROWS_PER_PASS: usize = 4;

        /// # Safety
        /// The CPU must support AVX.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load(x: &[f32], i: usize) -> __m256 {
            let x = &x[i..i + 8];
            // SAFETY: 8 readable floats; `loadu` has no alignment requirement.
            unsafe { _mm256_loadu_ps(x.as_ptr()) }
        }

        /// # Safety
        /// The CPU must support AVX.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn store(x: &mut [f32], i: usize, v: __m256) {
            let x = &mut x[i..i + 8];
            // SAFETY: 8 writable floats; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_ps(x.as_mut_ptr(), v) }
        }

        /// Lane j of the result is the sum of the lanes of `v[j]`.
        ///
        /// # Safety
        /// The CPU must support AVX.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn sum_lanes8(v: &[__m256; 8]) -> __m256 {
            // Pairwise adds leave, per 128-bit half, the sums of four vectors' halves.
            let a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
            let b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            )
        }

        /// # Safety
        /// The CPU must support AVX2, FMA and F16C; the head dimension is a multiple of 8.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn scores(
            q: &[f32],
            k: &[f16],
            offsets: &[usize],
            out: &mut [f32],
            ahead: &[usize],
        ) {
            let (rows, hd) = tile_shape(q.len(), out.len(), offsets);
            for r0 in (0..rows).step_by(SCORE_ROWS_PER_PASS) {
                let (q, out) = (&q[r0 * hd..], &mut out[r0 * KEY_TILE..]);
                // The first pass prefetches.
                let ahead = if r0 == 0 { ahead } else { &[] };
                // SAFETY (each arm): guaranteed by the caller; `q` and `out` hold these rows.
                // Keys per step: with the rows, enough independent accumulators (at least
                // six) to hide the FMA latency, few enough to stay in registers.
                match (rows - r0).min(SCORE_ROWS_PER_PASS) {
                    1 => unsafe { scores_pass::<1, 8>(q, hd, k, offsets, out, ahead) },
                    2 => unsafe { scores_pass::<2, 4>(q, hd, k, offsets, out, ahead) },
                    3 => unsafe { scores_pass::<3, 2>(q, hd, k, offsets, out, ahead) },
                    4 => unsafe { scores_pass::<4, 2>(q, hd, k, offsets, out, ahead) },
                    5 => unsafe { scores_pass::<5, 2>(q, hd, k, offsets, out, ahead) },
                    6 => unsafe { scores_pass::<6, 2>(q, hd, k, offsets, out, ahead) },
                    7 => unsafe { scores_pass::<7, 1>(q, hd, k, offsets, out, ahead) },
                    _ => unsafe { scores_pass::<8, 1>(q, hd, k, offsets, out, ahead) },
                }
            }
        }

        /// [`scores`] for `R` rows, eight keys at a time: the dot products of `K` keys at once
        /// are accumulated in registers, and eight keys' accumulators reduce to one vector of
        /// scores per row. Each eight keys prefetch eight of `ahead`.
        ///
        /// # Safety
        /// As [`scores`]; `q` holds R rows of `hd` and `out` R rows of `KEY_TILE`.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn scores_pass<const R: usize, const K: usize>(
            q: &[f32],
            hd: usize,
            k: &[f16],
            offsets: &[usize],
            out: &mut [f32],
            ahead: &[usize],
        ) {
            assert!(q.len() >= R * hd && out.len() >= R * KEY_TILE && hd.is_multiple_of(8));
            for (g, offs) in offsets.chunks(8).enumerate() {
                let (lo, hi) = ((8 * g).min(ahead.len()), (8 * g + 8).min(ahead.len()));
                super::prefetch(k, &ahead[lo..hi], hd);
                let mut dots = [[_mm256_setzero_ps(); 8]; R];
                let mut j = 0;
                while j + K <= offs.len() {
                    // SAFETY: as this function's.
                    let acc = unsafe { dot_keys::<R, K>(q, hd, k, &offs[j..j + K]) };
                    for (d, a) in dots.iter_mut().zip(acc) {
                        d[j..j + K].copy_from_slice(&a);
                    }
                    j += K;
                }
                for (j, off) in offs.iter().enumerate().skip(j) {
                    // SAFETY: as this function's.
                    let acc = unsafe { dot_keys::<R, 1>(q, hd, k, std::slice::from_ref(off)) };
                    for (d, a) in dots.iter_mut().zip(acc) {
                        d[j] = a[0];
                    }
                }
                for (r, d) in dots.iter().enumerate() {
                    // SAFETY: KEY_TILE is a multiple of 8, so the 8 lanes stay in row r.
                    unsafe { store(out, r * KEY_TILE + g * 8, sum_lanes8(d)) };
                }
            }
        }

        /// The lane-wise partial dot products of `R` query rows with the `K` keys at `offs`.
        ///
        /// # Safety
        /// As [`scores_pass`]; `offs.len() == K`.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn dot_keys<const R: usize, const K: usize>(
            q: &[f32],
            hd: usize,
            k: &[f16],
            offs: &[usize],
        ) -> [[__m256; K]; R] {
            let keys: [*const f16; K] = std::array::from_fn(|j| k[offs[j]..offs[j] + hd].as_ptr());
            let q = q.as_ptr();
            let mut acc = [[_mm256_setzero_ps(); K]; R];
            for i in (0..hd).step_by(8) {
                // SAFETY (all loads): i + 8 <= hd (a multiple of 8), each key has hd values and
                // q has R rows of hd (asserted by the caller).
                let kv: [__m256; K] = std::array::from_fn(|j| {
                    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(keys[j].add(i).cast()) })
                });
                for (r, ar) in acc.iter_mut().enumerate() {
                    let qv = unsafe { _mm256_loadu_ps(q.add(r * hd + i)) };
                    for (a, &kj) in ar.iter_mut().zip(&kv) {
                        *a = _mm256_fmadd_ps(qv, kj, *a);
                    }
                }
            }
            acc
        }

        /// # Safety
        /// The CPU must support AVX2, FMA and F16C; the head dimension is a multiple of 8.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn accumulate(
            acc: &mut [f32],
            w: &[f32],
            v: &[f16],
            offsets: &[usize],
            ahead: &[usize],
        ) {
            let (rows, hd) = tile_shape(acc.len(), w.len(), offsets);
            for r0 in (0..rows).step_by(ROWS_PER_PASS) {
                let n = (rows - r0).min(ROWS_PER_PASS);
                let (acc, w) = (&mut acc[r0 * hd..(r0 + n) * hd], &w[r0 * KEY_TILE..]);
                // The first pass prefetches.
                let ahead = if r0 == 0 { ahead } else { &[] };
                // SAFETY (each arm): guaranteed by the caller; `acc` and `w` hold these rows.
                // Rows times columns of eight stay within 12 of the 16 vector registers.
                match n {
                    1 => unsafe { accumulate_pass::<1, 4>(acc, hd, w, v, offsets, ahead) },
                    2 => unsafe { accumulate_pass::<2, 4>(acc, hd, w, v, offsets, ahead) },
                    3 => unsafe { accumulate_pass::<3, 4>(acc, hd, w, v, offsets, ahead) },
                    _ => unsafe { accumulate_pass::<4, 2>(acc, hd, w, v, offsets, ahead) },
                }
            }
        }

        /// [`accumulate`] for `R` rows, `C` columns of eight at a time while they fit; the
        /// columns starting a cache line prefetch that line of every value of `ahead`.
        ///
        /// # Safety
        /// As [`accumulate`]; `acc` holds R rows of `hd` and `w` R rows of `KEY_TILE`.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn accumulate_pass<const R: usize, const C: usize>(
            acc: &mut [f32],
            hd: usize,
            w: &[f32],
            v: &[f16],
            offsets: &[usize],
            ahead: &[usize],
        ) {
            let prefetch = |col: usize, width: usize| {
                // The line starts in columns col..col + width.
                let line = col.next_multiple_of(super::LINE);
                if line < (col + width).min(hd) {
                    for &off in ahead {
                        super::prefetch(v, &[off + line], super::LINE.min(hd - line));
                    }
                }
            };
            let mut col = 0;
            while col + 8 * C <= hd {
                prefetch(col, 8 * C);
                // SAFETY: as this function's.
                unsafe { accumulate_columns::<R, C>(acc, hd, col, w, v, offsets) };
                col += 8 * C;
            }
            while col < hd {
                prefetch(col, 8);
                // SAFETY: as this function's.
                unsafe { accumulate_columns::<R, 1>(acc, hd, col, w, v, offsets) };
                col += 8;
            }
        }

        /// Columns `col..col + 8 * C` of [`accumulate`]'s `R` rows, held in registers across
        /// the tile's keys.
        ///
        /// # Safety
        /// As [`accumulate_pass`]; `col + 8 * C <= hd`.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn accumulate_columns<const R: usize, const C: usize>(
            acc: &mut [f32],
            hd: usize,
            col: usize,
            w: &[f32],
            v: &[f16],
            offsets: &[usize],
        ) {
            assert!(acc.len() >= R * hd && w.len() >= R * KEY_TILE && col + 8 * C <= hd);
            assert!(offsets.len() <= KEY_TILE);
            let w = w.as_ptr();
            // SAFETY (loads and stores of `acc`): col + 8 * C <= hd, and acc holds R rows of
            // hd (asserted above).
            let mut a: [[__m256; C]; R] = std::array::from_fn(|r| {
                std::array::from_fn(|c| unsafe { load(acc, r * hd + col + 8 * c) })
            });
            for (j, &off) in offsets.iter().enumerate() {
                let value = v[off + col..off + col + 8 * C].as_ptr();
                // SAFETY: `value` holds 8 * C halves.
                let vv: [__m256; C] = std::array::from_fn(|c| {
                    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(value.add(8 * c).cast()) })
                });
                for (r, ar) in a.iter_mut().enumerate() {
                    // SAFETY: j < KEY_TILE and w holds R rows of KEY_TILE (asserted above).
                    let wr = _mm256_set1_ps(unsafe { *w.add(r * KEY_TILE + j) });
                    for (x, &y) in ar.iter_mut().zip(&vv) {
                        *x = _mm256_fmadd_ps(wr, y, *x);
                    }
                }
            }
            for (r, ar) in a.iter().enumerate() {
                for (c, &x) in ar.iter().enumerate() {
                    unsafe { store(acc, r * hd + col + 8 * c, x) };
                }
            }
        }

        /// [`super::softmax_tile`] on four vectors of eight scores, the keys outside the range
        /// masked: to -inf for the max, to 0 for the weights.
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA; `row` holds [`KEY_TILE`] scores.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn softmax_tile(
            row: &mut [f32],
            keys: Range<usize>,
            scale: f32,
            max: f32,
        ) -> (f32, f32) {
            const VECS: usize = KEY_TILE / 8;
            let (lo, hi) = (
                _mm256_set1_epi32(keys.start as i32),
                _mm256_set1_epi32(keys.end as i32),
            );
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let inside: [__m256; VECS] = std::array::from_fn(|g| {
                let j = _mm256_add_epi32(lane, _mm256_set1_epi32(8 * g as i32));
                // lo <= j < hi, as j > lo - 1 and hi > j.
                let above = _mm256_cmpgt_epi32(j, _mm256_sub_epi32(lo, _mm256_set1_epi32(1)));
                _mm256_castsi256_ps(_mm256_and_si256(above, _mm256_cmpgt_epi32(hi, j)))
            });
            let scale = _mm256_set1_ps(scale);
            // SAFETY (loads and stores): the row holds VECS vectors.
            let s: [__m256; VECS] =
                std::array::from_fn(|g| _mm256_mul_ps(unsafe { load(row, 8 * g) }, scale));
            let mut m = _mm256_set1_ps(max);
            for (&s, &inside) in s.iter().zip(&inside) {
                m = _mm256_max_ps(
                    m,
                    _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), s, inside),
                );
            }
            // SAFETY (the reductions): the CPU has AVX2 (the caller's promise).
            let m = unsafe { hmax_ps(m) };
            let mv = _mm256_set1_ps(m);
            let mut sum = _mm256_setzero_ps();
            for (g, (&s, &inside)) in s.iter().zip(&inside).enumerate() {
                // SAFETY: the CPU has AVX2 and FMA (the caller's promise).
                let w = _mm256_and_ps(unsafe { exp8(_mm256_sub_ps(s, mv)) }, inside);
                sum = _mm256_add_ps(sum, w);
                unsafe { store(row, 8 * g, w) };
            }
            (m, unsafe { hsum_ps(sum) })
        }

        /// [`super::scalar::exp`] on 8 lanes.
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn exp8(x: __m256) -> __m256 {
            let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
            let mut p = _mm256_set1_ps(C[0]);
            for c in &C[1..] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
            }
            let one = _mm256_set1_ps(1.0);
            let p = _mm256_fmadd_ps(_mm256_fmadd_ps(p, r, one), r, one);
            let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// Plain softmax attention over f16-rounded keys and values, as the reference.
    fn reference(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let r = |x: f32| f16::from_f32(x).to_f32();
        let scores: Vec<f32> = ks
            .iter()
            .map(|k| q.iter().zip(k).map(|(&a, &b)| a * r(b)).sum::<f32>() * scale)
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
    fn rows_see_only_their_own_keys() {
        // Two rows over the same key range; row 1 is restricted to keys 3..9. Its result must
        // equal attending keys 3..9 alone.
        let (hd, block_size, n_keys): (usize, usize, usize) = (16, 4, 20);
        let table: Vec<u32> = (0..n_keys.div_ceil(block_size) as u32).collect();
        let k: Vec<f16> = values(5, n_keys * hd, 2.0)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let v: Vec<f16> = values(6, n_keys * hd, 1.0)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let kv = PagedKv {
            k: &k,
            v: &v,
            layout: KvLayout {
                block_size,
                n_kv_heads: 1,
                head_dim: hd,
            },
            block_table: &table,
        };
        let shape = AttnShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: hd,
            scale: 0.5,
        };
        let q = values(7, 2 * hd, 1.0);
        let run = |rows: &[Range<usize>], q: &[f32]| {
            let n = rows.len();
            let (mut max, mut sum, mut acc) = (vec![0.0; n], vec![0.0; n], vec![0.0; n * hd]);
            let part = Partial {
                max: &mut max,
                sum: &mut sum,
                acc: &mut acc,
            };
            attend_keys(q, rows, &kv, &shape, 0, 0..n_keys, part);
            let mut out = vec![0.0; n * hd];
            combine(n, n, hd, &max, &sum, &acc, &mut out);
            out
        };
        let both = run(&[0..n_keys, 3..9], &q);
        let alone = run(std::slice::from_ref(&(3..9)), &q[hd..]);
        for (a, b) in both[hd..].iter().zip(&alone) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn split_tiled_attention_matches_plain_softmax() {
        for hd in [8, 12, 64] {
            check_attention(hd, 6, 2, 4, 75);
            check_attention(hd, 2, 2, 16, 3);
        }
    }

    fn check_attention(hd: usize, n_heads: usize, n_kv: usize, block_size: usize, n_keys: usize) {
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
        let layout = KvLayout {
            block_size,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        for i in 0..n_keys {
            for h in 0..n_kv {
                let off = layout.offset(table[i / block_size] as usize, h, i % block_size);
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
            layout,
            block_table: &table,
        };
        let shape = AttnShape {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            scale: 0.35,
        };
        let group = n_heads / n_kv;
        let mut out = vec![0.0; n_heads * hd];
        // Keys from 1 on, in three uneven parts (one may be empty), combined. Each part has a
        // spare slot past its rows, holding garbage that must not reach the output.
        let bounds = [1, 1 + n_keys / 5, 1 + n_keys / 5, n_keys];
        let slots = group + 1;
        for h in 0..n_kv {
            let parts = bounds.len() - 1;
            let (mut max, mut sum) = (vec![f32::NAN; parts * slots], vec![f32::NAN; parts * slots]);
            let mut acc = vec![f32::NAN; parts * slots * hd];
            for i in 0..parts {
                let (at, end) = (i * slots, i * slots + group);
                attend_keys(
                    &q[h * group * hd..(h + 1) * group * hd],
                    &vec![0..n_keys; group],
                    &kv,
                    &shape,
                    h,
                    bounds[i]..bounds[i + 1],
                    Partial {
                        max: &mut max[at..end],
                        sum: &mut sum[at..end],
                        acc: &mut acc[at * hd..end * hd],
                    },
                );
            }
            let out = &mut out[h * group * hd..(h + 1) * group * hd];
            combine(group, slots, hd, &max, &sum, &acc, out);
        }
        for head in 0..n_heads {
            let g = head / (n_heads / n_kv);
            let want = reference(
                &q[head * hd..(head + 1) * hd],
                &ks[g][1..],
                &vs[g][1..],
                0.35,
            );
            for (a, b) in out[head * hd..(head + 1) * hd].iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "hd {hd}: {a} vs {b}");
            }
        }
    }

    fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    proptest! {
        #[test]
        fn simd_loops_match_scalar(
            seed in any::<u64>(),
            rows in 1usize..11,
            chunks in 1usize..10,
            n_keys in 1usize..=KEY_TILE,
        ) {
            let hd = 8 * chunks;
            // The tile's keys at scattered, distinct places of a larger store.
            let store_keys = KEY_TILE + 7;
            let offsets: Vec<usize> = (0..n_keys).map(|j| (j * 5 + seed as usize) % store_keys * hd).collect();
            let k: Vec<f16> = values(seed ^ 1, store_keys * hd, 3.0).into_iter().map(f16::from_f32).collect();
            let q = values(seed, rows * hd, 2.0);
            let (mut fast, mut slow) = (vec![0.0; rows * KEY_TILE], vec![0.0; rows * KEY_TILE]);
            simd::scores(&q, &k, &offsets, &mut fast, &offsets);
            simd::scalar::scores(&q, &k, &offsets, &mut slow);
            for r in 0..rows {
                for j in 0..n_keys {
                    let (a, b) = (fast[r * KEY_TILE + j], slow[r * KEY_TILE + j]);
                    prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "scores {a} vs {b}");
                }
            }
            let w = values(seed ^ 2, rows * KEY_TILE, 1.0);
            let mut fast = values(seed ^ 3, rows * hd, 1.0);
            let mut slow = fast.clone();
            simd::accumulate(&mut fast, &w, &k, &offsets, &offsets);
            simd::scalar::accumulate(&mut slow, &w, &k, &offsets);
            for (a, b) in fast.iter().zip(&slow) {
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "accumulate {a} vs {b}");
            }
            // Scores spread over a wide range so that exp underflows for some; a row's
            // visible keys are any non-empty sub-range of the tile.
            let input = values(seed ^ 4, KEY_TILE, 40.0);
            let mut fast = input.clone();
            let lo = (seed >> 8) as usize % n_keys;
            let hi = lo + 1 + (seed >> 16) as usize % (n_keys - lo);
            let prev_max = if seed & 1 == 0 { f32::NEG_INFINITY } else { 5.0 };
            let mut slow = fast.clone();
            let (m_fast, sum_fast) = simd::softmax_tile(&mut fast, lo..hi, 0.7, prev_max);
            let (m_slow, sum_slow) = simd::scalar::softmax_tile(&mut slow, lo..hi, 0.7, prev_max);
            prop_assert_eq!(m_fast, m_slow);
            prop_assert!((sum_fast - sum_slow).abs() <= 1e-6 * sum_slow, "sum {sum_fast} vs {sum_slow}");
            for (j, (a, b)) in fast.iter().zip(&slow).enumerate() {
                let want = if (lo..hi).contains(&j) { (input[j] * 0.7 - m_slow).exp() } else { 0.0 };
                prop_assert!((a - b).abs() <= 1e-7 * b, "weight {a} vs scalar {b}");
                prop_assert!((a - want).abs() <= 3e-7 * want + 1e-37, "weight {a} vs exp {want}");
            }
        }
    }
}
