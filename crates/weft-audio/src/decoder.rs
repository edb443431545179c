//! Whisper's text decoder: token + learned position embeddings, pre-norm layers of causal
//! self-attention (K/V cached per sequence), cross-attention over the encoder output (K/V
//! computed once per window and shared by all beams), and logits from the tied embedding
//! matrix. A `DecoderState` holds several sequences (beams or sampled hypotheses) that advance
//! together; `reorder` follows beam search's choice of parents.

use std::sync::Mutex;

use weft_kernels::pool::ThreadPool;
use weft_kernels::sgemm::{gemm, gemm_st, PackedB, Strides};

use crate::model::{DecoderWeights, Whisper, WhisperConfig};
use weft_kernels::float_ops::{gelu_inplace, layer_norm, softmax_scaled};
use weft_kernels::ops::add_inplace;

/// Cross-attention keys and values of one encoded window: per layer, per head, K packed as
/// `[frames, dh]` rows and V as `[frames, dh]` columns, ready for `Q·Kᵀ` and `P·V`.
pub struct CrossKv {
    heads: Vec<Vec<(PackedB, PackedB)>>,
}

impl CrossKv {
    pub fn new(model: &Whisper, pool: &ThreadPool, encoded: &[f32]) -> CrossKv {
        let cfg = &model.config;
        let (d, t) = (cfg.d_model, cfg.n_audio_ctx);
        let dh = d / cfg.n_heads;
        let heads = model
            .decoder
            .layers
            .iter()
            .map(|layer| {
                let kv = layer.cross.kv.apply(pool, encoded, t);
                (0..cfg.n_heads)
                    .map(|h| {
                        let gather = |col: usize| -> Vec<f32> {
                            (0..t)
                                .flat_map(|r| &kv[r * 2 * d + col..r * 2 * d + col + dh])
                                .copied()
                                .collect()
                        };
                        (
                            PackedB::from_rows(&gather(h * dh), t, dh),
                            PackedB::from_cols(&gather(d + h * dh), t, dh),
                        )
                    })
                    .collect()
            })
            .collect();
        CrossKv { heads }
    }
}

/// Self-attention K/V of one sequence, per layer, `len * d` values each.
#[derive(Clone)]
struct SeqCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

/// The decoder's running state for a set of sequences over one encoded window.
pub struct DecoderState<'a> {
    model: &'a Whisper,
    cross: &'a CrossKv,
    seqs: Vec<SeqCache>,
}

impl<'a> DecoderState<'a> {
    /// `n` empty sequences.
    pub fn new(model: &'a Whisper, cross: &'a CrossKv, n: usize) -> DecoderState<'a> {
        let layers = model.config.decoder_layers;
        let empty = SeqCache {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            len: 0,
        };
        DecoderState {
            model,
            cross,
            seqs: vec![empty; n],
        }
    }

    pub fn len(&self, seq: usize) -> usize {
        self.seqs[seq].len
    }

    pub fn n_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// Sequence `i` becomes a copy of former sequence `parents[i]` (beam search's reorder;
    /// also replicates one prompt into several beams). Moves instead of copying where it can.
    pub fn reorder(&mut self, parents: &[usize]) {
        let mut old: Vec<Option<SeqCache>> = std::mem::take(&mut self.seqs)
            .into_iter()
            .map(Some)
            .collect();
        let mut uses = vec![0usize; old.len()];
        for &p in parents {
            uses[p] += 1;
        }
        self.seqs = parents
            .iter()
            .map(|&p| {
                uses[p] -= 1;
                if uses[p] == 0 {
                    old[p].take().expect("each parent is moved once, last")
                } else {
                    old[p].clone().expect("a parent still in place")
                }
            })
            .collect();
    }

    /// Feeds `inputs` (sequence index, token) — several tokens of one sequence run as a
    /// causal block — and returns the logits of the inputs listed in `logits_for`, one row of
    /// `n_vocab` each.
    pub fn forward(
        &mut self,
        pool: &ThreadPool,
        inputs: &[(usize, u32)],
        logits_for: &[usize],
    ) -> Vec<f32> {
        let cfg: &WhisperConfig = &self.model.config;
        let w: &DecoderWeights = &self.model.decoder;
        let d = cfg.d_model;
        let n = inputs.len();
        let mut next_pos: Vec<usize> = self.seqs.iter().map(|s| s.len).collect();
        let positions: Vec<usize> = inputs
            .iter()
            .map(|&(s, _)| {
                let p = next_pos[s];
                next_pos[s] += 1;
                p
            })
            .collect();
        let mut x = vec![0.0f32; n * d];
        for (r, (&(_, tok), &p)) in inputs.iter().zip(&positions).enumerate() {
            let row = &mut x[r * d..(r + 1) * d];
            let tok = (tok as usize).min(cfg.n_vocab - 1);
            let pos = p.min(cfg.n_text_ctx - 1);
            row.copy_from_slice(&w.embed[tok * d..(tok + 1) * d]);
            add_inplace(row, &w.positions[pos * d..(pos + 1) * d]);
        }
        let mut h = vec![0.0f32; n * d];
        for (li, layer) in w.layers.iter().enumerate() {
            layer_norm(&x, &layer.attn.ln.gamma, &layer.attn.ln.beta, &mut h);
            let qkv = layer.attn.qkv.apply(pool, &h, n);
            for (r, &(s, _)) in inputs.iter().enumerate() {
                let row = &qkv[r * 3 * d..(r + 1) * 3 * d];
                self.seqs[s].k[li].extend_from_slice(&row[d..2 * d]);
                self.seqs[s].v[li].extend_from_slice(&row[2 * d..]);
            }
            let attn = self.causal_attention(li, &qkv, inputs, &positions);
            add_inplace(&mut x, &layer.attn.out.apply(pool, &attn, n));

            layer_norm(&x, &layer.cross.ln.gamma, &layer.cross.ln.beta, &mut h);
            let q = layer.cross.q.apply(pool, &h, n);
            let attn = self.cross_attention(pool, li, &q, n);
            add_inplace(&mut x, &layer.cross.out.apply(pool, &attn, n));

            layer_norm(&x, &layer.ffn.ln.gamma, &layer.ffn.ln.beta, &mut h);
            let mut f = layer.ffn.fc1.apply(pool, &h, n);
            gelu_inplace(&mut f);
            add_inplace(&mut x, &layer.ffn.fc2.apply(pool, &f, n));
        }
        for (s, len) in next_pos.into_iter().enumerate() {
            self.seqs[s].len = len;
        }
        let m = logits_for.len();
        if m == 0 {
            return Vec::new();
        }
        let mut rows = vec![0.0f32; m * d];
        for (i, &r) in logits_for.iter().enumerate() {
            layer_norm(
                &x[r * d..(r + 1) * d],
                &w.ln.gamma,
                &w.ln.beta,
                &mut rows[i * d..(i + 1) * d],
            );
        }
        let mut logits = vec![0.0f32; m * cfg.n_vocab];
        gemm(
            pool,
            &rows,
            m,
            &w.logits,
            None,
            &mut logits,
            Strides {
                lda: d,
                ldc: cfg.n_vocab,
            },
        );
        logits
    }

    /// Causal self-attention of each input row over its sequence's cache up to its position.
    fn causal_attention(
        &self,
        layer: usize,
        qkv: &[f32],
        inputs: &[(usize, u32)],
        positions: &[usize],
    ) -> Vec<f32> {
        let cfg = &self.model.config;
        let d = cfg.d_model;
        let dh = d / cfg.n_heads;
        let scale = (dh as f32).powf(-0.5);
        let mut out = vec![0.0f32; inputs.len() * d];
        let mut scores = Vec::new();
        for (r, (&(s, _), &p)) in inputs.iter().zip(positions).enumerate() {
            let (k, v) = (&self.seqs[s].k[layer], &self.seqs[s].v[layer]);
            for h in 0..cfg.n_heads {
                let q = &qkv[r * 3 * d + h * dh..r * 3 * d + (h + 1) * dh];
                scores.clear();
                scores.extend((0..=p).map(|j| dot(q, &k[j * d + h * dh..j * d + (h + 1) * dh])));
                softmax_scaled(&mut scores, scale);
                let o = &mut out[r * d + h * dh..r * d + (h + 1) * dh];
                for (j, &pj) in scores.iter().enumerate() {
                    for (o, &vv) in o.iter_mut().zip(&v[j * d + h * dh..j * d + (h + 1) * dh]) {
                        *o += pj * vv;
                    }
                }
            }
        }
        out
    }

    /// Attention of `n` query rows over the encoded window; heads are shared out over the
    /// pool (one parallel section per layer rather than several small ones per head).
    fn cross_attention(&self, pool: &ThreadPool, layer: usize, q: &[f32], n: usize) -> Vec<f32> {
        let cfg = &self.model.config;
        let (d, t) = (cfg.d_model, cfg.n_audio_ctx);
        let dh = d / cfg.n_heads;
        let scale = (dh as f32).powf(-0.5);
        let heads = &self.cross.heads[layer];
        let outs: Vec<Mutex<Vec<f32>>> = heads.iter().map(|_| Mutex::new(Vec::new())).collect();
        pool.for_each_chunk(heads.len(), |range| {
            let mut scores = vec![0.0f32; n * t];
            for h in range {
                let (keys, values) = &heads[h];
                gemm_st(
                    &q[h * dh..],
                    n,
                    keys,
                    None,
                    &mut scores,
                    Strides { lda: d, ldc: t },
                );
                for row in scores.chunks_exact_mut(t) {
                    softmax_scaled(row, scale);
                }
                let mut out = vec![0.0f32; n * dh];
                gemm_st(
                    &scores,
                    n,
                    values,
                    None,
                    &mut out,
                    Strides { lda: t, ldc: dh },
                );
                *outs[h].lock().unwrap_or_else(|e| e.into_inner()) = out;
            }
        });
        let mut out = vec![0.0f32; n * d];
        for (h, o) in outs.into_iter().enumerate() {
            let o = o.into_inner().unwrap_or_else(|e| e.into_inner());
            for (r, row) in o.chunks_exact(dh).enumerate() {
                out[r * d + h * dh..r * d + (h + 1) * dh].copy_from_slice(row);
            }
        }
        out
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums so that the loop vectorizes without reassociation flags.
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((a, &xv), &yv) in acc.iter_mut().zip(x).zip(y) {
            *a += xv * yv;
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}
