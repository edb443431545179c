//! Whisper's audio encoder: two 1-D convolutions (the second with stride 2) with GELU, fixed
//! sinusoidal positions, pre-norm transformer layers, a final layer norm. It maps a 30-second
//! log-mel window to `n_audio_ctx` (1500) vectors of `d_model`, and knows nothing of the text
//! decoder, so an omni model can use it as its audio tower.

use std::sync::Mutex;

use weft_kernels::pool::ThreadPool;
use weft_kernels::sgemm::{gemm, gemm_st, PackedB, Strides};

use crate::math::{add_inplace, gelu_inplace, layer_norm, softmax_scaled};
use crate::mel::LogMel;
use crate::model::{EncoderLayer, EncoderWeights, LayerNorm, Linear, WhisperConfig};

/// `x·Wᵀ + b` for `m` rows of `x`.
pub(crate) fn linear(pool: &ThreadPool, x: &[f32], m: usize, l: &Linear) -> Vec<f32> {
    let (n, k) = (l.w.n(), l.w.k());
    let mut out = vec![0.0f32; m * n];
    gemm(
        pool,
        x,
        m,
        &l.w,
        l.b.as_deref(),
        &mut out,
        Strides { lda: k, ldc: n },
    );
    out
}

/// Rows of a kernel-3, padding-1 convolution's input windows: row `t` holds
/// `x[c][stride*t + j - 1]` at `c*3 + j`, `x` given as `get(time, channel)`.
fn im2col(
    frames_out: usize,
    channels: usize,
    stride: usize,
    frames_in: usize,
    get: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let mut cols = vec![0.0f32; frames_out * channels * 3];
    for (t, row) in cols.chunks_exact_mut(channels * 3).enumerate() {
        for j in 0..3 {
            let Some(src) = (stride * t + j).checked_sub(1).filter(|&s| s < frames_in) else {
                continue;
            };
            for c in 0..channels {
                row[c * 3 + j] = get(src, c);
            }
        }
    }
    cols
}

/// Runs the encoder on one window (`2 * n_audio_ctx` mel frames); returns
/// `[n_audio_ctx, d_model]`.
pub fn encode(
    cfg: &WhisperConfig,
    w: &EncoderWeights,
    pool: &ThreadPool,
    mel: &LogMel,
) -> Vec<f32> {
    let d = cfg.d_model;
    let t1 = mel.frames;
    assert_eq!(mel.n_mels, cfg.n_mels, "mel bins do not match the model");
    assert_eq!(
        t1,
        2 * cfg.n_audio_ctx,
        "one encoder window is 2 * n_audio_ctx frames"
    );
    let cols = im2col(t1, cfg.n_mels, 1, t1, |t, c| mel.data[c * t1 + t]);
    let mut x1 = linear(pool, &cols, t1, &w.conv1);
    gelu_rows(pool, &mut x1, d);
    let t2 = cfg.n_audio_ctx;
    let cols = im2col(t2, d, 2, t1, |t, c| x1[t * d + c]);
    drop(x1);
    let mut x = linear(pool, &cols, t2, &w.conv2);
    gelu_rows(pool, &mut x, d);
    add_inplace(&mut x, &w.positions);
    for layer in &w.layers {
        encoder_layer(cfg, layer, pool, &mut x, t2);
    }
    let mut out = vec![0.0f32; x.len()];
    layer_norm_rows(pool, &x, &w.ln_post, &mut out);
    out
}

/// Layer norm of every row of `x` into `out`, the rows shared out over the pool.
fn layer_norm_rows(pool: &ThreadPool, x: &[f32], ln: &LayerNorm, out: &mut [f32]) {
    let d = ln.gamma.len();
    pool.for_each_rows_mut(out, d, |first, rows| {
        let x = &x[first * d..first * d + rows.len()];
        layer_norm(x, &ln.gamma, &ln.beta, rows);
    });
}

/// GELU of `x` (rows of `width` values) in place, the rows shared out over the pool.
fn gelu_rows(pool: &ThreadPool, x: &mut [f32], width: usize) {
    pool.for_each_rows_mut(x, width, |_, rows| gelu_inplace(rows));
}

fn encoder_layer(
    cfg: &WhisperConfig,
    layer: &EncoderLayer,
    pool: &ThreadPool,
    x: &mut [f32],
    t: usize,
) {
    let mut h = vec![0.0f32; x.len()];
    layer_norm_rows(pool, x, &layer.attn.ln, &mut h);
    let qkv = linear(pool, &h, t, &layer.attn.qkv);
    let attn = self_attention(cfg, pool, &qkv, t);
    add_inplace(x, &linear(pool, &attn, t, &layer.attn.out));
    layer_norm_rows(pool, x, &layer.ffn.ln, &mut h);
    let mut f = linear(pool, &h, t, &layer.ffn.fc1);
    let hidden = f.len() / t;
    gelu_rows(pool, &mut f, hidden);
    add_inplace(x, &linear(pool, &f, t, &layer.ffn.fc2));
}

/// Query rows attended at a time: their scores (`ROW_BLOCK x t`, 288 KB for a 1500-frame
/// window) stay in L2 from the product that makes them through the softmax to the product
/// that uses them, where the whole `t x t` matrix (9 MB) would go to memory and back for each.
const ROW_BLOCK: usize = 48;

/// Full (unmasked) multi-head attention over `t` rows of fused QKV; one head per pool task.
fn self_attention(cfg: &WhisperConfig, pool: &ThreadPool, qkv: &[f32], t: usize) -> Vec<f32> {
    let d = cfg.d_model;
    let heads = cfg.n_heads;
    let dh = d / heads;
    let scale = (dh as f32).powf(-0.5);
    let outs: Vec<Mutex<Vec<f32>>> = (0..heads).map(|_| Mutex::new(Vec::new())).collect();
    pool.for_each_chunk(heads, |range| {
        let mut scores = vec![0.0f32; ROW_BLOCK * t];
        let mut gathered = vec![0.0f32; t * dh];
        for h in range {
            let gather = |buf: &mut [f32], col: usize| {
                for (r, row) in buf.chunks_exact_mut(dh).enumerate() {
                    row.copy_from_slice(&qkv[r * 3 * d + col..r * 3 * d + col + dh]);
                }
            };
            gather(&mut gathered, d + h * dh);
            let keys = PackedB::from_rows(&gathered, t, dh);
            gather(&mut gathered, 2 * d + h * dh);
            let values = PackedB::from_cols(&gathered, t, dh);
            let mut out = vec![0.0f32; t * dh];
            for r0 in (0..t).step_by(ROW_BLOCK) {
                let rows = ROW_BLOCK.min(t - r0);
                let scores = &mut scores[..rows * t];
                gemm_st(
                    &qkv[r0 * 3 * d + h * dh..],
                    rows,
                    &keys,
                    None,
                    scores,
                    Strides { lda: 3 * d, ldc: t },
                );
                for row in scores.chunks_exact_mut(t) {
                    softmax_scaled(row, scale);
                }
                gemm_st(
                    scores,
                    rows,
                    &values,
                    None,
                    &mut out[r0 * dh..(r0 + rows) * dh],
                    Strides { lda: t, ldc: dh },
                );
            }
            *outs[h].lock().unwrap_or_else(|e| e.into_inner()) = out;
        }
    });
    let mut attn = vec![0.0f32; t * d];
    for (h, out) in outs.into_iter().enumerate() {
        let out = out.into_inner().unwrap_or_else(|e| e.into_inner());
        for (r, row) in out.chunks_exact(dh).enumerate() {
            attn[r * d + h * dh..r * d + (h + 1) * dh].copy_from_slice(row);
        }
    }
    attn
}
