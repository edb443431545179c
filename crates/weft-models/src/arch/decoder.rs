//! The decoder-only transformer shared by Llama, Qwen2 and Gemma 3: the architectures differ
//! only in switches (QKV bias, QK-norm, post-norms, GELU vs SiLU, embedding scale, per-layer
//! windows and RoPE bases), which `DecoderConfig` and the optional tensors carry.

use std::sync::Arc;

use weft_kernels::attention::{attend_keys, combine, AttnShape, Partial, MAX_ROWS};
use weft_kernels::matmul::{matmul_many, Layouts, Product, QMatrix, QuantizedActs};
use weft_kernels::ops;
use weft_kernels::pool::ThreadPool;
use weft_kernels::quant::{dequantize_row, GgmlType};

use super::config::{Arch, DecoderConfig, MAX_MROPE_HALF};
use crate::batch::{Batch, BatchError, LogitsWanted};
use crate::kv_cache::{KvCache, KvShape};
use crate::weights::{TensorInfo, WeightSource};
use crate::ModelError;

/// A weight matrix in the memory-mapped weights (the source of truth), plus the layouts the
/// kernels build from it on first use.
#[derive(Clone)]
struct Mat {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    info: TensorInfo,
    layouts: Layouts,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Mat,
    w_up: Mat,
    w_down: Mat,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded decoder: configuration plus weights that point into the source's mapping.
pub struct Decoder {
    config: DecoderConfig,
    weights: Arc<dyn WeightSource>,
    token_embd: Mat,
    output_norm: Vec<f32>,
    output: Mat,
    layers: Vec<Layer>,
    vocab_size: usize,
}

/// Buffers reused across forward passes so that the hot path does not allocate once they
/// have grown to the largest batch seen.
#[derive(Default)]
pub struct ForwardScratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    attn_work: AttnScratch,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// `h` (the normed input of a block) quantized for the matrices that read it.
    hq: QuantizedInput,
    /// Inputs read by one matrix only (attention output, FFN activation, final norm).
    xq: QuantizedInput,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    out_rows: Vec<f32>,
    logits: Vec<f32>,
}

impl Decoder {
    /// Builds the network `config` describes from `weights` (GGUF-named), checking every
    /// tensor's shape.
    pub fn load(
        weights: Arc<dyn WeightSource>,
        config: DecoderConfig,
    ) -> Result<Decoder, ModelError> {
        let loader = Loader {
            weights: &*weights,
            norm_offset: config.norm_weight_offset,
        };
        let c = &config;
        let token_embd = loader.mat("token_embd.weight", c.n_embd, None)?;
        let vocab_size = token_embd.rows;
        let output = match weights.tensor("output.weight") {
            Some(_) => loader.mat("output.weight", c.n_embd, Some(vocab_size))?,
            None => token_embd.clone(),
        };
        let q_width = c.n_heads * c.head_dim;
        let kv_width = c.n_kv_heads * c.head_dim;
        let mut layers = Vec::with_capacity(c.n_layers);
        for il in 0..c.n_layers {
            let t = |suffix: &str| format!("blk.{il}.{suffix}");
            let gemma = c.arch == Arch::Gemma3;
            layers.push(Layer {
                attn_norm: loader.norm(&t("attn_norm.weight"), c.n_embd)?,
                wq: loader.mat(&t("attn_q.weight"), c.n_embd, Some(q_width))?,
                wk: loader.mat(&t("attn_k.weight"), c.n_embd, Some(kv_width))?,
                wv: loader.mat(&t("attn_v.weight"), c.n_embd, Some(kv_width))?,
                wo: loader.mat(&t("attn_output.weight"), q_width, Some(c.n_embd))?,
                bq: loader.optional_vector(&t("attn_q.bias"), q_width)?,
                bk: loader.optional_vector(&t("attn_k.bias"), kv_width)?,
                bv: loader.optional_vector(&t("attn_v.bias"), kv_width)?,
                q_norm: loader.norm_if(gemma, &t("attn_q_norm.weight"), c.head_dim)?,
                k_norm: loader.norm_if(gemma, &t("attn_k_norm.weight"), c.head_dim)?,
                post_attn_norm: loader.norm_if(
                    gemma,
                    &t("post_attention_norm.weight"),
                    c.n_embd,
                )?,
                ffn_norm: loader.norm(&t("ffn_norm.weight"), c.n_embd)?,
                w_gate: loader.mat(&t("ffn_gate.weight"), c.n_embd, Some(c.n_ff))?,
                w_up: loader.mat(&t("ffn_up.weight"), c.n_embd, Some(c.n_ff))?,
                w_down: loader.mat(&t("ffn_down.weight"), c.n_ff, Some(c.n_embd))?,
                post_ffn_norm: loader.norm_if(gemma, &t("post_ffw_norm.weight"), c.n_embd)?,
            });
        }
        let output_norm = loader.norm("output_norm.weight", c.n_embd)?;
        Ok(Decoder {
            config,
            weights,
            token_embd,
            output_norm,
            output,
            layers,
            vocab_size,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Writes the input embedding of `token` (scaled as the model scales it) into `out`
    /// (`n_embd` values). `token` must be in the vocabulary.
    pub fn embed(&self, token: u32, out: &mut [f32]) {
        let embd = self.mat(&self.token_embd);
        let row = embd
            .ty
            .row_bytes(self.config.n_embd)
            .expect("validated at load");
        let tok = token as usize;
        dequantize_row(embd.ty, &embd.data[tok * row..(tok + 1) * row], out);
        if self.config.embed_scale != 1.0 {
            ops::scale_inplace(out, self.config.embed_scale);
        }
    }

    /// The shape a KV cache for this model must have.
    pub fn kv_shape(&self) -> KvShape {
        KvShape {
            n_layers: self.config.n_layers,
            n_kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Bytes one decode step reads with `context` tokens in the cache: every weight matrix once
    /// (the embedding only for its one row) plus the K/V each layer attends to. Bandwidth
    /// divided by this bounds decode speed.
    pub fn bytes_read_per_token(&self, context: usize) -> u64 {
        let weights: u64 = self
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .chain([&self.output])
            .map(|m| m.info.size)
            .sum();
        let c = &self.config;
        let kv_per_layer_token =
            (2 * c.n_kv_heads * c.head_dim * std::mem::size_of::<u16>()) as u64;
        let kv: u64 = c
            .layers
            .iter()
            .map(|la| la.window.map_or(context, |w| context.min(w)) as u64 * kv_per_layer_token)
            .sum();
        weights + kv
    }

    fn mat(&self, m: &Mat) -> QMatrix<'_> {
        QMatrix {
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            data: self.weights.tensor_data(&m.info),
        }
    }

    /// Runs every token of `batch` through the network, writing their K/V into `kv`, and
    /// returns the requested logits rows (`batch.logits_rows()` rows of `vocab_size`). A
    /// batch that does not fit the cache or the model is refused before anything is written.
    pub fn forward<'s>(
        &self,
        batch: &Batch<'_>,
        kv: &mut KvCache,
        pool: &ThreadPool,
        s: &'s mut ForwardScratch,
    ) -> Result<&'s [f32], BatchError> {
        batch.check(
            kv.n_blocks(),
            kv.block_size(),
            self.vocab_size,
            self.config.n_embd,
        )?;
        let c = &self.config;
        let n = batch.tokens.len();
        assert_eq!(kv.shape(), self.kv_shape(), "KV cache shape");
        let (d, q_width, kv_width) = (c.n_embd, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        resize(&mut s.x, n * d);
        resize(&mut s.h, n * d);
        resize(&mut s.q, n * q_width);
        resize(&mut s.k, n * kv_width);
        resize(&mut s.v, n * kv_width);
        resize(&mut s.attn, n * q_width);
        resize(&mut s.o, n * d);
        resize(&mut s.gate, n * c.n_ff);
        resize(&mut s.up, n * c.n_ff);

        for (&tok, x) in batch.tokens.iter().zip(s.x.chunks_exact_mut(d)) {
            self.embed(tok, x);
        }
        for e in batch.embeddings {
            s.x[e.token * d..(e.token + 1) * d].copy_from_slice(e.values);
        }

        // Layers share their rotation tables unless their RoPE base or scale differs (Gemma 3's
        // local and global layers): build them once per distinct setting in a row.
        let mut tables_for = None;
        for (il, layer) in self.layers.iter().enumerate() {
            let la = c.layers[il];
            let rope = (la.rope_base, la.rope_scale);
            if tables_for != Some(rope) {
                self.rope_tables(batch, la.rope_base, la.rope_scale, s);
                tables_for = Some(rope);
            }
            ops::rms_norm(&s.x, &layer.attn_norm, c.rms_eps, &mut s.h);
            s.hq.invalidate();
            self.project_many(
                pool,
                [
                    (&layer.wq, &mut s.q[..]),
                    (&layer.wk, &mut s.k[..]),
                    (&layer.wv, &mut s.v[..]),
                ],
                &s.h,
                &mut s.hq,
            );
            if let Some(b) = &layer.bq {
                ops::add_bias_rows(&mut s.q, b);
            }
            if let Some(b) = &layer.bk {
                ops::add_bias_rows(&mut s.k, b);
            }
            if let Some(b) = &layer.bv {
                ops::add_bias_rows(&mut s.v, b);
            }
            if let Some(w) = &layer.q_norm {
                ops::rms_norm_inplace(&mut s.q, w, c.rms_eps);
            }
            if let Some(w) = &layer.k_norm {
                ops::rms_norm_inplace(&mut s.k, w, c.rms_eps);
            }
            let half = c.rope_dims / 2;
            for t in 0..n {
                let (cos, sin) = (
                    &s.rope_cos[t * half..(t + 1) * half],
                    &s.rope_sin[t * half..(t + 1) * half],
                );
                rope_heads(&mut s.q[t * q_width..(t + 1) * q_width], c, cos, sin);
                rope_heads(&mut s.k[t * kv_width..(t + 1) * kv_width], c, cos, sin);
            }
            for seq in batch.seqs {
                for i in 0..seq.len {
                    let t = seq.start + i;
                    kv.write(
                        il,
                        seq.block_table,
                        seq.cached + i,
                        &s.k[t * kv_width..(t + 1) * kv_width],
                        &s.v[t * kv_width..(t + 1) * kv_width],
                    );
                }
            }
            self.attention(batch, kv, il, pool, &s.q, &mut s.attn, &mut s.attn_work);
            s.xq.invalidate();
            self.project(pool, &layer.wo, &s.attn, &mut s.xq, &mut s.o);
            if let Some(w) = &layer.post_attn_norm {
                ops::rms_norm_inplace(&mut s.o, w, c.rms_eps);
            }
            ops::add_inplace(&mut s.x, &s.o);

            ops::rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, &mut s.h);
            s.hq.invalidate();
            self.project_many(
                pool,
                [
                    (&layer.w_gate, &mut s.gate[..]),
                    (&layer.w_up, &mut s.up[..]),
                ],
                &s.h,
                &mut s.hq,
            );
            // One token's row stays on this thread; a prompt's rows are shared out.
            let (up, width) = (&s.up, c.n_ff);
            pool.for_each_rows_mut(&mut s.gate, width, |first, gate| {
                let up = &up[first * width..first * width + gate.len()];
                match c.arch {
                    Arch::Gemma3 => ops::geglu_inplace(gate, up),
                    Arch::Llama | Arch::Qwen2 => ops::swiglu_inplace(gate, up),
                }
            });
            s.xq.invalidate();
            self.project(pool, &layer.w_down, &s.gate, &mut s.xq, &mut s.o);
            if let Some(w) = &layer.post_ffn_norm {
                ops::rms_norm_inplace(&mut s.o, w, c.rms_eps);
            }
            ops::add_inplace(&mut s.x, &s.o);
        }

        // Gather the rows that need logits, then norm and project only those.
        let n_out = batch.logits_rows();
        s.out_rows.clear();
        for seq in batch.seqs {
            let rows = match seq.logits {
                LogitsWanted::None => 0..0,
                LogitsWanted::Last => seq.start + seq.len.saturating_sub(1)..seq.start + seq.len,
                LogitsWanted::All => seq.start..seq.start + seq.len,
            };
            s.out_rows
                .extend_from_slice(&s.x[rows.start * d..rows.end * d]);
        }
        ops::rms_norm_inplace(&mut s.out_rows, &self.output_norm, c.rms_eps);
        resize(&mut s.logits, n_out * self.vocab_size);
        s.xq.invalidate();
        if n_out > 0 {
            self.project(pool, &self.output, &s.out_rows, &mut s.xq, &mut s.logits);
        }
        Ok(&s.logits)
    }

    /// `out = x · mᵀ` for every row of `x`, quantizing `x` through `xq` (once per dot type).
    fn project(
        &self,
        pool: &ThreadPool,
        m: &Mat,
        x: &[f32],
        xq: &mut QuantizedInput,
        out: &mut [f32],
    ) {
        self.project_many(pool, [(m, out)], x, xq);
    }

    /// [`Self::project`] for several matrices reading the same `x`, in one pool dispatch.
    fn project_many<const N: usize>(
        &self,
        pool: &ThreadPool,
        products: [(&Mat, &mut [f32]); N],
        x: &[f32],
        xq: &mut QuantizedInput,
    ) {
        let planned = products.map(|(m, out)| {
            let w = self.mat(m);
            let plan = m.layouts.plan(pool, &w, x.len() / m.cols);
            let dot = plan.dot_type(&w);
            xq.prepare(pool, dot, x, m.cols);
            (w, plan, dot, out)
        });
        let xq = &*xq;
        let mut products = planned.map(|(w, plan, dot, out)| {
            let xa = xq.form(dot, w.cols).expect("prepared above");
            Product { plan, w, xa, out }
        });
        matmul_many(pool, &mut products);
    }

    /// Fills cos/sin tables for every token of the batch for one RoPE base.
    /// cos/sin of every token's rotation. With multimodal RoPE (`mrope_section`), the
    /// frequencies come in three runs, turned by the position's time, height and width
    /// components in turn; a text token's three components are equal, which gives plain RoPE.
    fn rope_tables(&self, batch: &Batch<'_>, base: f32, scale: f32, s: &mut ForwardScratch) {
        let (dims, half) = (self.config.rope_dims, self.config.rope_dims / 2);
        resize(&mut s.rope_cos, batch.tokens.len() * half);
        resize(&mut s.rope_sin, batch.tokens.len() * half);
        let rows = s
            .rope_cos
            .chunks_exact_mut(half)
            .zip(s.rope_sin.chunks_exact_mut(half));
        for (p, (cos, sin)) in batch.positions.iter().zip(rows) {
            let Some(sections) = self.config.mrope_section else {
                ops::rope_cache(p.index() as f32 * scale, dims, base, cos, sin);
                continue;
            };
            let (mut c, mut si) = ([0.0f32; MAX_MROPE_HALF], [0.0f32; MAX_MROPE_HALF]);
            let mut start = 0;
            for (component, len) in sections.into_iter().enumerate() {
                let end = (start + len).min(half);
                let pos = p.0[component] as f32 * scale;
                ops::rope_cache(pos, dims, base, &mut c[..half], &mut si[..half]);
                cos[start..end].copy_from_slice(&c[start..end]);
                sin[start..end].copy_from_slice(&si[start..end]);
                start = end;
            }
        }
    }

    /// Causal (optionally windowed) attention of every new token over its sequence's cache;
    /// a token in one of its sequence's bidirectional spans also sees the span's later keys
    /// (the window still bounds keys from below).
    ///
    /// Work items are (token, KV head, key range): when there are too few (token, KV head)
    /// pairs to keep every thread busy — decode of one sequence — each pair's keys are split
    /// into parts whose softmax states are combined afterwards.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        batch: &Batch<'_>,
        kv: &KvCache,
        il: usize,
        pool: &ThreadPool,
        q: &[f32],
        out: &mut [f32],
        work: &mut AttnScratch,
    ) {
        let c = &self.config;
        let (hd, q_width) = (c.head_dim, c.n_heads * c.head_dim);
        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: hd,
            scale: c.attn_scale,
        };
        let group = shape.group();
        // Tokens of one sequence attended together: their rows share every K/V load.
        let q_tile = (MAX_ROWS / group).clamp(1, 8);
        let window = c.layers[il].window;
        // The keys of the token at `index`. Both ends never decrease with the index (a span's
        // tokens all end at its end, and the next token after it), so a block's range runs from
        // its first token's start to its last token's end.
        let key_range = |index: usize, spans: &[std::ops::Range<usize>]| {
            let start = window.map_or(0, |w| (index + 1).saturating_sub(w));
            // Text has no spans: the search is over an empty slice.
            let span = &spans[spans.partition_point(|s| s.end <= index)..];
            match span.first() {
                Some(s) if s.start <= index => start..s.end,
                _ => start..index + 1,
            }
        };
        let n_blocks: usize = batch.seqs.iter().map(|s| s.len.div_ceil(q_tile)).sum();
        let n_pairs = n_blocks * c.n_kv_heads;
        work.items.clear();
        work.pairs.clear();
        for (si, seq) in batch.seqs.iter().enumerate() {
            for b0 in (0..seq.len).step_by(q_tile) {
                let nt = (seq.len - b0).min(q_tile);
                let spans = seq.bidirectional;
                let keys = key_range(seq.cached + b0, spans).start
                    ..key_range(seq.cached + b0 + nt - 1, spans).end;
                let n_keys = keys.len();
                let parts = ATTN_ITEMS_TARGET
                    .div_ceil(n_pairs)
                    .min(n_keys.div_ceil(MIN_KEYS_PER_PART))
                    .max(1);
                for kv_head in 0..c.n_kv_heads {
                    let part0 = work.items.len();
                    for p in 0..parts {
                        let part =
                            keys.start + n_keys * p / parts..keys.start + n_keys * (p + 1) / parts;
                        work.items.push(AttnItem {
                            seq: si,
                            first: b0,
                            tokens: nt,
                            kv_head,
                            keys: part,
                        });
                    }
                    work.pairs
                        .push((work.items[part0].clone(), part0..part0 + parts));
                }
            }
        }
        // Rows of the largest block: one decode token's block has only `group`.
        let rows_max = group * work.items.iter().map(|i| i.tokens).max().unwrap_or(0);
        let n_items = work.items.len();
        work.max.resize(n_items * rows_max, 0.0);
        work.sum.resize(n_items * rows_max, 0.0);
        work.acc.resize(n_items * rows_max * hd, 0.0);
        work.threads
            .resize_with(pool.n_threads(), AttnThread::default);
        for t in &mut work.threads {
            t.rows_q.resize(rows_max * hd, 0.0);
            t.rows_out.resize(rows_max * hd, 0.0);
        }
        let (max, sum, acc) = (
            Shared(work.max.as_mut_ptr()),
            Shared(work.sum.as_mut_ptr()),
            Shared(work.acc.as_mut_ptr()),
        );
        let items = &work.items;
        pool.for_each_dynamic_with(n_items, 1, &mut work.threads, |thread, range| {
            let AttnThread {
                rows_q, row_keys, ..
            } = thread;
            for i in range {
                let item = &items[i];
                let seq = &batch.seqs[item.seq];
                let rows = item.tokens * group;
                row_keys.clear();
                for ti in 0..item.tokens {
                    let t = seq.start + item.first + ti;
                    let h0 = t * q_width + item.kv_head * group * hd;
                    rows_q[ti * group * hd..(ti + 1) * group * hd]
                        .copy_from_slice(&q[h0..h0 + group * hd]);
                    let keys = key_range(seq.cached + item.first + ti, seq.bidirectional);
                    row_keys.extend(std::iter::repeat_n(keys, group));
                }
                // SAFETY: item i alone writes its own slots of the partial buffers, which were
                // sized above and outlive the call.
                let part = unsafe {
                    Partial {
                        max: max.slice(i * rows_max, rows),
                        sum: sum.slice(i * rows_max, rows),
                        acc: acc.slice(i * rows_max * hd, rows * hd),
                    }
                };
                let view = kv.view(il, seq.block_table);
                let q_rows = &rows_q[..rows * hd];
                attend_keys(
                    q_rows,
                    row_keys,
                    &view,
                    &shape,
                    item.kv_head,
                    item.keys.clone(),
                    part,
                );
            }
        });
        let out_ptr = Shared(out.as_mut_ptr());
        let (pairs, max, sum, acc) = (&work.pairs, &work.max, &work.sum, &work.acc);
        pool.for_each_dynamic_with(pairs.len(), 16, &mut work.threads, |thread, range| {
            for (item, parts) in &pairs[range] {
                // Each part has rows_max slots, of which the block's first `tokens * group` are
                // used.
                let (m, su, a) = (
                    &max[parts.start * rows_max..parts.end * rows_max],
                    &sum[parts.start * rows_max..parts.end * rows_max],
                    &acc[parts.start * rows_max * hd..parts.end * rows_max * hd],
                );
                let rows = item.tokens * group;
                let rows_out = &mut thread.rows_out[..rows * hd];
                combine(rows, rows_max, hd, m, su, a, rows_out);
                let seq = &batch.seqs[item.seq];
                for ti in 0..item.tokens {
                    let t = seq.start + item.first + ti;
                    let o = t * q_width + item.kv_head * group * hd;
                    // SAFETY: each (token, KV head) owns its group's heads of the output row.
                    let dst = unsafe { out_ptr.slice(o, group * hd) };
                    dst.copy_from_slice(&rows_out[ti * group * hd..(ti + 1) * group * hd]);
                }
            }
        });
    }
}

/// Work items attention aims for when splitting key ranges: enough to balance 16 threads.
const ATTN_ITEMS_TARGET: usize = 64;

/// Keys below which splitting a (token, KV head) pair's range no longer pays for combining.
const MIN_KEYS_PER_PART: usize = 256;

/// One attention work item: a block of a sequence's new tokens, one KV-head group, over a range
/// of keys.
#[derive(Clone)]
struct AttnItem {
    /// Index of the sequence in the batch.
    seq: usize,
    /// First token of the block, counted from the sequence's first new token.
    first: usize,
    tokens: usize,
    kv_head: usize,
    keys: std::ops::Range<usize>,
}

/// Attention work lists and partial softmax states, reused across layers and passes.
#[derive(Default)]
struct AttnScratch {
    items: Vec<AttnItem>,
    /// Each (token block, KV head) and its items (which differ only in `keys`).
    pairs: Vec<(AttnItem, std::ops::Range<usize>)>,
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
    /// Each pool thread's buffers, kept between calls.
    threads: Vec<AttnThread>,
}

/// One thread's attention buffers: a block's query rows and their key ranges, and a pair's
/// combined output rows.
#[derive(Default)]
struct AttnThread {
    rows_q: Vec<f32>,
    row_keys: Vec<std::ops::Range<usize>>,
    rows_out: Vec<f32>,
}

fn rope_heads(x: &mut [f32], c: &DecoderConfig, cos: &[f32], sin: &[f32]) {
    if c.rope_dims == c.head_dim {
        ops::rope_apply(x, c.head_dim, c.rope_style, cos, sin);
    } else {
        for head in x.chunks_exact_mut(c.head_dim) {
            ops::rope_apply(
                &mut head[..c.rope_dims],
                c.rope_dims,
                c.rope_style,
                cos,
                sin,
            );
        }
    }
}

/// One activation matrix quantized to whichever dot types the matrices reading it need, each
/// at most once: Q, K and V (and gate and up) share one quantization of their input.
#[derive(Default)]
struct QuantizedInput {
    forms: Vec<QuantizedActs>,
    /// `forms[..valid]` hold the current input.
    valid: usize,
}

impl QuantizedInput {
    /// The input changed: forget its quantized forms (keeping their buffers).
    fn invalidate(&mut self) {
        self.valid = 0;
    }

    /// Makes sure `x` (rows of `cols`) is held quantized to `ty`.
    fn prepare(&mut self, pool: &ThreadPool, ty: GgmlType, x: &[f32], cols: usize) {
        if self.form(ty, cols).is_none() {
            if self.forms.len() == self.valid {
                self.forms.push(QuantizedActs::default());
            }
            self.forms[self.valid].quantize(pool, ty, x, cols);
            self.valid += 1;
        }
    }

    /// The input quantized to `ty`, if [`Self::prepare`] made it.
    fn form(&self, ty: GgmlType, cols: usize) -> Option<&QuantizedActs> {
        self.forms[..self.valid].iter().find(|f| f.is(ty, cols))
    }
}

fn resize(v: &mut Vec<f32>, n: usize) {
    v.resize(n, 0.0);
}

/// A pointer to a buffer whose disjoint parts are written by different threads.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only used for disjoint writes within one parallel call.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}
impl Shared {
    /// # Safety
    /// `start..start + len` must be in bounds, and no other thread may use those elements
    /// while the returned slice lives.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Looks tensors up by name and checks their shapes against the configuration.
struct Loader<'a> {
    weights: &'a dyn WeightSource,
    /// Added to norm weights (`DecoderConfig::norm_weight_offset`).
    norm_offset: f32,
}

impl Loader<'_> {
    fn info(&self, name: &str) -> Result<&TensorInfo, ModelError> {
        self.weights
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.weights.path().to_path_buf(),
                tensor: name.to_string(),
            })
    }

    fn shape_error(&self, name: &str, info: &TensorInfo, want: &str) -> ModelError {
        ModelError::TensorShape {
            path: self.weights.path().to_path_buf(),
            tensor: name.to_string(),
            found: format!("{:?}", info.dims),
            expected: want.to_string(),
        }
    }

    /// A 2-D matrix with rows of `cols` elements (and `rows` rows, when given).
    fn mat(&self, name: &str, cols: usize, rows: Option<usize>) -> Result<Mat, ModelError> {
        let info = self.info(name)?;
        let ok = info.dims.len() == 2
            && info.dims[0] as usize == cols
            && rows.is_none_or(|r| info.dims[1] as usize == r);
        if !ok {
            let want = match rows {
                Some(r) => format!("[{cols}, {r}]"),
                None => format!("[{cols}, *]"),
            };
            return Err(self.shape_error(name, info, &want));
        }
        // Q8_1 and Q8_K exist only as activation formats; no vec_dot takes them as weights.
        if matches!(info.ggml_type, GgmlType::Q8_1 | GgmlType::Q8_K) {
            return Err(ModelError::UnsupportedTensorType {
                path: self.weights.path().to_path_buf(),
                tensor: name.to_string(),
                ty: info.ggml_type.name(),
            });
        }
        Ok(Mat {
            ty: info.ggml_type,
            rows: info.dims[1] as usize,
            cols,
            info: info.clone(),
            layouts: Layouts::default(),
        })
    }

    /// A 1-D tensor of `len` elements, dequantized to f32 (norm weights and biases are tiny).
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let info = self.info(name)?;
        if info.dims.len() != 1 || info.dims[0] as usize != len {
            return Err(self.shape_error(name, info, &format!("[{len}]")));
        }
        let mut out = vec![0.0; len];
        dequantize_row(info.ggml_type, self.weights.tensor_data(info), &mut out);
        Ok(out)
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        match self.weights.tensor(name) {
            Some(_) => self.vector(name, len).map(Some),
            None => Ok(None),
        }
    }

    /// An RMS-norm weight, in the `1 + w` convention whatever the file's.
    fn norm(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let mut w = self.vector(name, len)?;
        w.iter_mut().for_each(|v| *v += self.norm_offset);
        Ok(w)
    }

    /// A norm that `required` architectures must have and others may.
    fn norm_if(
        &self,
        required: bool,
        name: &str,
        len: usize,
    ) -> Result<Option<Vec<f32>>, ModelError> {
        if required || self.weights.tensor(name).is_some() {
            self.norm(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}
