//! Dense f32 matrix products `C = A·Bᵀ (+ bias)` for encoder-style workloads (audio and vision
//! towers: thousands of rows against dense weights), where the quantized matvec kernels do not
//! apply.
//!
//! B (a weight in the `[out, in]` layout of a linear layer, or an activation such as attention
//! keys) is packed once into panels of `NR` columns so that the inner loop reads it
//! contiguously. The micro-kernel keeps an `MR x NR` tile of C in registers (12 AVX registers)
//! and walks K in blocks of `KC` so that a panel slice stays in L1 while `MC` rows of A stay in
//! L2. A portable scalar kernel with the same blocking is the reference the AVX2 kernel is
//! tested against and the fallback on other machines.
//!
//! Panels hold f32, or f16 when every value of B is exactly an f16 (weights shipped in half
//! precision): the kernel widens them as it reads, so the product is the same and a
//! memory-bound one (a decoder step, a handful of rows against every weight) reads half the
//! bytes.

use half::f16;

use crate::pool::ThreadPool;

/// Columns of C per micro-kernel tile (two 8-lane vectors).
pub const NR: usize = 16;
/// Rows of C per micro-kernel tile.
pub const MR: usize = 6;
/// K block: a `KC x NR` panel slice is 16 KiB, sized for L1.
const KC: usize = 256;
/// Rows of A swept against one panel slice before moving on (`MC x KC` floats stay in L2).
const MC: usize = 96;

/// B packed into column panels: panel `p` holds, for each `k`, the `NR` values
/// `B[p*NR + j][k]` (zero past the last column).
#[derive(Clone, Debug)]
pub struct PackedB {
    n: usize,
    k: usize,
    data: Panels,
}

/// The panels' values, in one of the element types the kernels read.
#[derive(Clone, Debug, PartialEq)]
enum Panels {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl PackedB {
    /// Packs `b`, an `n x k` row-major matrix (a linear layer's `[out, in]` weight, or keys).
    pub fn from_rows(b: &[f32], n: usize, k: usize) -> PackedB {
        assert_eq!(b.len(), n * k, "B must be n x k");
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * k * NR];
        for (col, row) in b.chunks_exact(k.max(1)).enumerate().take(n) {
            let (p, j) = (col / NR, col % NR);
            let panel = &mut data[p * k * NR..(p + 1) * k * NR];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * NR + j] = v;
            }
        }
        PackedB {
            n,
            k,
            data: Panels::F32(data),
        }
    }

    /// [`Self::from_rows`], keeping the panels in f16 when every value of `b` is exactly an
    /// f16 (the product is then unchanged and reads half the bytes), in f32 otherwise.
    pub fn from_rows_lossless_f16(b: &[f32], n: usize, k: usize) -> PackedB {
        let packed = PackedB::from_rows(b, n, k);
        let Panels::F32(values) = &packed.data else {
            unreachable!("from_rows packs f32")
        };
        let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        if halves.iter().zip(values).all(|(h, &v)| h.to_f32() == v) {
            PackedB {
                data: Panels::F16(halves),
                ..packed
            }
        } else {
            packed
        }
    }

    /// Whether the panels are held in f16 (see [`Self::from_rows_lossless_f16`]).
    pub fn is_f16(&self) -> bool {
        matches!(self.data, Panels::F16(_))
    }

    /// Packs `b`, a `k x n` row-major matrix (values laid out by time, as attention's V).
    pub fn from_cols(b: &[f32], k: usize, n: usize) -> PackedB {
        assert_eq!(b.len(), n * k, "B must be k x n");
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * k * NR];
        for p in 0..panels {
            let cols = NR.min(n - p * NR);
            let panel = &mut data[p * k * NR..(p + 1) * k * NR];
            for kk in 0..k {
                let src = &b[kk * n + p * NR..kk * n + p * NR + cols];
                panel[kk * NR..kk * NR + cols].copy_from_slice(src);
            }
        }
        PackedB {
            n,
            k,
            data: Panels::F32(data),
        }
    }

    /// Columns of C this B produces.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The shared (inner) dimension.
    pub fn k(&self) -> usize {
        self.k
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// Shapes of one product: A is `m` rows of `b.k()` values with row stride `lda`; C is `m` rows
/// of `b.n()` values with row stride `ldc`.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    pub lda: usize,
    pub ldc: usize,
}

/// A dense layer of an encoder, `x·Wᵀ + b`, its weight packed once for [`gemm`].
pub struct Linear {
    pub w: PackedB,
    pub b: Option<Vec<f32>>,
}

impl Linear {
    /// The layer applied to `rows` rows of `x`, split across the pool.
    pub fn apply(&self, pool: &ThreadPool, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.w.n(), self.w.k());
        let mut out = vec![0.0f32; rows * n];
        gemm(
            pool,
            x,
            rows,
            &self.w,
            self.b.as_deref(),
            &mut out,
            Strides { lda: k, ldc: n },
        );
        out
    }
}

/// `C = A·Bᵀ + bias` on the calling thread. `bias` (length n) may be absent.
pub fn gemm_st(a: &[f32], m: usize, b: &PackedB, bias: Option<&[f32]>, c: &mut [f32], s: Strides) {
    check(a, m, b, bias, c, s);
    let kernel = Kernel::detect();
    // SAFETY: `check` verified that every row/column the loops touch lies inside `a` and `c`,
    // and `c` is exclusively borrowed for the whole call.
    unsafe {
        run_block(
            kernel,
            a.as_ptr(),
            0..m,
            b,
            0..b.panels(),
            bias,
            c.as_mut_ptr(),
            s,
        )
    };
}

/// `C = A·Bᵀ + bias`, split across the pool: over rows when there are enough of them, over
/// column panels otherwise (decoder steps with a handful of rows).
pub fn gemm(
    pool: &ThreadPool,
    a: &[f32],
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    c: &mut [f32],
    s: Strides,
) {
    check(a, m, b, bias, c, s);
    let threads = pool.n_threads();
    // Below about a million multiply-adds, waking the other threads costs more than it saves.
    if threads <= 1 || m * b.n() * b.k() < 1 << 20 {
        return gemm_st(a, m, b, bias, c, s);
    }
    let kernel = Kernel::detect();
    let a_ptr = SyncPtr(a.as_ptr() as *mut f32);
    let c_ptr = SyncPtr(c.as_mut_ptr());
    let tiles = m.div_ceil(MR);
    if tiles >= 4 * threads {
        pool.for_each_chunk(tiles, |t| {
            let rows = t.start * MR..(t.end * MR).min(m);
            // SAFETY: `check` bounds every access; chunks are disjoint row ranges of C, so no
            // two threads write the same element, and A and B are only read.
            unsafe {
                run_block(
                    kernel,
                    a_ptr.get(),
                    rows,
                    b,
                    0..b.panels(),
                    bias,
                    c_ptr.get(),
                    s,
                )
            };
        });
    } else {
        pool.for_each_chunk(b.panels(), |panels| {
            // SAFETY: as above, with disjoint column ranges of C.
            unsafe { run_block(kernel, a_ptr.get(), 0..m, b, panels, bias, c_ptr.get(), s) };
        });
    }
}

/// `C = A·Bᵀ + bias` with the portable kernel only: the reference the SIMD path is tested
/// against.
pub fn gemm_scalar(
    a: &[f32],
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    c: &mut [f32],
    s: Strides,
) {
    check(a, m, b, bias, c, s);
    // SAFETY: bounds checked by `check`; `c` is exclusively borrowed.
    unsafe {
        run_block(
            Kernel::Scalar,
            a.as_ptr(),
            0..m,
            b,
            0..b.panels(),
            bias,
            c.as_mut_ptr(),
            s,
        )
    };
}

fn check(a: &[f32], m: usize, b: &PackedB, bias: Option<&[f32]>, c: &[f32], s: Strides) {
    if m == 0 {
        return;
    }
    assert!(
        s.lda >= b.k && s.ldc >= b.n,
        "row strides shorter than rows"
    );
    assert!(a.len() >= (m - 1) * s.lda + b.k, "A too short");
    assert!(c.len() >= (m - 1) * s.ldc + b.n, "C too short");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), b.n, "bias length");
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: the pointer is shared only inside `gemm`, whose threads write disjoint parts of C
// and only read A; the borrow it came from outlives the pool job.
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }
}

/// Computes rows `rows` and column panels `panels` of C.
///
/// # Safety
/// `a` must hold `rows.end` rows of stride `s.lda` with `b.k` valid values each, and `c` must
/// hold `rows.end` rows of stride `s.ldc` with `b.n` valid values, not written concurrently in
/// the part this call covers.
#[allow(clippy::too_many_arguments)]
unsafe fn run_block(
    kernel: Kernel,
    a: *const f32,
    rows: std::ops::Range<usize>,
    b: &PackedB,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    c: *mut f32,
    s: Strides,
) {
    // SAFETY (both arms): this function's contract.
    match &b.data {
        Panels::F32(data) => unsafe { run_panels(kernel, a, rows, b, data, panels, bias, c, s) },
        Panels::F16(data) => unsafe { run_panels(kernel, a, rows, b, data, panels, bias, c, s) },
    }
}

/// [`run_block`] over `b`'s panel values `data`.
///
/// # Safety
/// As [`run_block`].
#[allow(clippy::too_many_arguments)]
unsafe fn run_panels<E: Element>(
    kernel: Kernel,
    a: *const f32,
    rows: std::ops::Range<usize>,
    b: &PackedB,
    data: &[E],
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    c: *mut f32,
    s: Strides,
) {
    let k = b.k;
    if k == 0 {
        for r in rows {
            for p in panels.clone() {
                let cols = NR.min(b.n - p * NR);
                for j in 0..cols {
                    let col = p * NR + j;
                    // SAFETY: inside C per the function contract.
                    unsafe { *c.add(r * s.ldc + col) = bias.map_or(0.0, |bb| bb[col]) };
                }
            }
        }
        return;
    }
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let first = k0 == 0;
        let mut m0 = rows.start;
        while m0 < rows.end {
            let m1 = (m0 + MC).min(rows.end);
            for p in panels.clone() {
                let cols = NR.min(b.n - p * NR);
                let bp = &data[p * k * NR + k0 * NR..p * k * NR + (k0 + kc) * NR];
                let bias_tile = if first {
                    bias.map(|bb| &bb[p * NR..p * NR + cols])
                } else {
                    None
                };
                let mut r = m0;
                while r < m1 {
                    let nrows = MR.min(m1 - r);
                    let tile = Tile {
                        // SAFETY: row r < rows.end and column k0 < k lie inside A.
                        a: unsafe { a.add(r * s.lda + k0) },
                        lda: s.lda,
                        // SAFETY: row r, column p*NR lie inside C.
                        c: unsafe { c.add(r * s.ldc + p * NR) },
                        ldc: s.ldc,
                        rows: nrows,
                        cols,
                        accumulate: !first,
                    };
                    match kernel {
                        Kernel::Scalar => tile_scalar(&tile, bp, kc, bias_tile),
                        // SAFETY: `detect` chose this kernel only when AVX2, FMA and F16C exist.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2 => unsafe { avx2::tile(&tile, bp, kc, bias_tile) },
                    }
                    r += MR;
                }
            }
            m0 = m1;
        }
        k0 += kc;
    }
}

/// One `rows x cols` (at most `MR x NR`) tile of C and the A rows feeding it.
struct Tile {
    a: *const f32,
    lda: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    /// Add to C (later K blocks) instead of overwriting it (first block, which adds the bias).
    accumulate: bool,
}

impl Tile {
    /// Writes one finished row of the tile.
    ///
    /// # Safety
    /// `r < self.rows`; the tile lies inside C (the `run_block` contract).
    unsafe fn store(&self, r: usize, acc: &[f32; NR], bias: Option<&[f32]>) {
        for j in 0..self.cols {
            // SAFETY: row r and column j are inside the tile, hence inside C.
            let dst = unsafe { &mut *self.c.add(r * self.ldc + j) };
            let v = acc[j] + bias.map_or(0.0, |b| b[j]);
            *dst = if self.accumulate { *dst + v } else { v };
        }
    }
}

/// A type panel values are stored in; the kernels widen each to f32 as they read it.
trait Element: Copy {
    fn to_f32(self) -> f32;

    /// The 8 values at `p`, widened.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `p` points at 8 readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Element for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: 8 readable floats (the caller's contract); no alignment needed.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl Element for f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: 8 readable halves = 16 bytes (the caller's contract); no alignment needed.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
    }
}

fn tile_scalar<E: Element>(t: &Tile, bp: &[E], kc: usize, bias: Option<&[f32]>) {
    for r in 0..t.rows {
        let mut acc = [0.0f32; NR];
        for kk in 0..kc {
            // SAFETY: row r < rows and column kk < kc lie inside A (the `run_block` contract).
            let av = unsafe { *t.a.add(r * t.lda + kk) };
            for (acc, &bv) in acc.iter_mut().zip(&bp[kk * NR..kk * NR + NR]) {
                *acc += av * bv.to_f32();
            }
        }
        // SAFETY: r < rows.
        unsafe { t.store(r, &acc, bias) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Element, Tile, MR, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2, FMA and F16C must be available; the tile must satisfy the `run_block` contract.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile<E: Element>(t: &Tile, bp: &[E], kc: usize, bias: Option<&[f32]>) {
        debug_assert!(bp.len() >= kc * NR);
        // Rows past the tile's end re-read its last row; their results are never stored.
        let mut rows = [t.a; MR];
        for (r, row) in rows.iter_mut().enumerate() {
            // SAFETY: min(r, rows-1) is a valid row of the tile.
            *row = unsafe { t.a.add(r.min(t.rows - 1) * t.lda) };
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let b = bp.as_ptr();
        for kk in 0..kc {
            // SAFETY: kk < kc and the panel slice holds kc * NR values.
            let (b0, b1) = unsafe { (E::load8(b.add(kk * NR)), E::load8(b.add(kk * NR + 8))) };
            for (row, acc) in rows.iter().zip(acc.iter_mut()) {
                // SAFETY: column kk < kc of a valid row of A.
                let av = unsafe { _mm256_broadcast_ss(&*row.add(kk)) };
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
        if t.cols == NR {
            // Full-width tile: add bias / old C and store with vector instructions.
            let (bias0, bias1) = match bias {
                // SAFETY: a full tile's bias slice holds NR = 16 values.
                Some(b) => unsafe {
                    (
                        _mm256_loadu_ps(b.as_ptr()),
                        _mm256_loadu_ps(b.as_ptr().add(8)),
                    )
                },
                None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
            };
            for (r, acc) in acc.iter().enumerate().take(t.rows) {
                // SAFETY: row r < rows of a tile NR columns wide inside C.
                unsafe {
                    let dst = t.c.add(r * t.ldc);
                    let (mut v0, mut v1) =
                        (_mm256_add_ps(acc[0], bias0), _mm256_add_ps(acc[1], bias1));
                    if t.accumulate {
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(dst));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(dst.add(8)));
                    }
                    _mm256_storeu_ps(dst, v0);
                    _mm256_storeu_ps(dst.add(8), v1);
                }
            }
            return;
        }
        let mut out = [0.0f32; NR];
        for (r, acc) in acc.iter().enumerate().take(t.rows) {
            // SAFETY: `out` holds NR = 16 floats.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
                t.store(r, &out, bias);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for kk in 0..k {
                    s += a[i * k + kk] as f64 * b[j * k + kk] as f64;
                }
                c[i * n + j] = s as f32 + bias.map_or(0.0, |bb| bb[j]);
            }
        }
        c
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2654435761).wrapping_add(seed * 97);
                ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn close(x: &[f32], y: &[f32], k: usize) {
        let tol = 1e-5 * (k as f32).sqrt().max(1.0) * 4.0;
        for (i, (a, b)) in x.iter().zip(y).enumerate() {
            assert!((a - b).abs() <= tol, "element {i}: {a} vs {b}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn simd_and_threads_match_scalar(m in 1usize..40, n in 1usize..70, k in 0usize..600,
                                         seed in 0u32..1000, with_bias in any::<bool>()) {
            let a = values(m * k, seed);
            let bt = values(n * k, seed + 1);
            let bias = with_bias.then(|| values(n, seed + 2));
            let packed = PackedB::from_rows(&bt, n, k);
            let s = Strides { lda: k, ldc: n };
            let mut c_scalar = vec![0.0; m * n];
            gemm_scalar(&a, m, &packed, bias.as_deref(), &mut c_scalar, s);
            close(&c_scalar, &naive(&a, m, &bt, n, k, bias.as_deref()), k);
            let mut c_simd = vec![0.0; m * n];
            gemm_st(&a, m, &packed, bias.as_deref(), &mut c_simd, s);
            close(&c_simd, &c_scalar, k);
            let pool = ThreadPool::new(3);
            let mut c_pool = vec![0.0; m * n];
            gemm(&pool, &a, m, &packed, bias.as_deref(), &mut c_pool, s);
            close(&c_pool, &c_scalar, k);
        }

        #[test]
        fn f16_panels_give_the_f32_product(m in 1usize..20, n in 1usize..40, k in 0usize..300,
                                           seed in 0u32..1000) {
            let a = values(m * k, seed);
            let bt: Vec<f32> = values(n * k, seed + 1)
                .into_iter()
                .map(|v| f16::from_f32(v).to_f32())
                .collect();
            let (wide, half) = (PackedB::from_rows(&bt, n, k), PackedB::from_rows_lossless_f16(&bt, n, k));
            prop_assert!(half.is_f16() && !wide.is_f16());
            let s = Strides { lda: k, ldc: n };
            type Product = fn(&[f32], usize, &PackedB, Option<&[f32]>, &mut [f32], Strides);
            let products: [Product; 3] = [gemm_scalar, gemm_st, |a, m, b, bias, c, s| {
                gemm(&ThreadPool::new(2), a, m, b, bias, c, s)
            }];
            for product in products {
                let (mut want, mut got) = (vec![0.0; m * n], vec![0.0; m * n]);
                product(&a, m, &wide, None, &mut want, s);
                product(&a, m, &half, None, &mut got, s);
                prop_assert_eq!(&got, &want);
            }
        }
    }

    #[test]
    fn values_not_exact_in_f16_keep_f32_panels() {
        let b = [1.0, 0.1, 2.0, 3.0];
        assert!(!PackedB::from_rows_lossless_f16(&b, 2, 2).is_f16());
        assert!(PackedB::from_rows_lossless_f16(&[1.0, 0.5, 2.0, 3.0], 2, 2).is_f16());
    }

    #[test]
    fn column_packing_equals_row_packing_of_the_transpose() {
        let (k, n) = (37, 21);
        let b = values(k * n, 5);
        let mut bt = vec![0.0; k * n];
        for kk in 0..k {
            for j in 0..n {
                bt[j * k + kk] = b[kk * n + j];
            }
        }
        assert_eq!(
            PackedB::from_cols(&b, k, n).data,
            PackedB::from_rows(&bt, n, k).data
        );
    }

    #[test]
    fn strided_rows_and_large_shapes() {
        // Row strides wider than the rows (attention heads inside a wider activation), and a
        // shape big enough to take the threaded row split.
        let (m, n, k) = (130, 40, 300);
        let (lda, ldc) = (k + 7, n + 3);
        let a = values(m * lda, 9);
        let bt = values(n * k, 10);
        let packed = PackedB::from_rows(&bt, n, k);
        let s = Strides { lda, ldc };
        let mut want = vec![0.0; m * ldc];
        gemm_scalar(&a, m, &packed, None, &mut want, s);
        let pool = ThreadPool::new(2);
        let mut got = vec![0.0; m * ldc];
        gemm(&pool, &a, m, &packed, None, &mut got, s);
        close(&got, &want, k);
        let dense: Vec<f32> = (0..m)
            .flat_map(|i| a[i * lda..i * lda + k].to_vec())
            .collect();
        let reference = naive(&dense, m, &bt, n, k, None);
        for i in 0..m {
            close(
                &got[i * ldc..i * ldc + n],
                &reference[i * n..(i + 1) * n],
                k,
            );
        }
    }
}
