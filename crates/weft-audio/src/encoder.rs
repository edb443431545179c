//! Whisper's audio encoder: two 1-D convolutions (the second with stride 2) with GELU, fixed
//! sinusoidal positions, pre-norm transformer layers, a final layer norm. It maps a 30-second
//! log-mel window to `n_audio_ctx` (1500) vectors of `d_model`, and knows nothing of the text
//! decoder: an omni model's audio tower runs its layers ([`encode_layers`]) on shorter
//! segments.

use weft_kernels::encoder_attention::self_attention;
use weft_kernels::float_ops::{gelu_inplace, layer_norm};
use weft_kernels::ops::add_inplace;
use weft_kernels::pool::ThreadPool;

use crate::mel::LogMel;
use crate::model::{EncoderLayer, EncoderWeights, LayerNorm, WhisperConfig};

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
    assert_eq!(mel.n_mels, cfg.n_mels, "mel bins do not match the model");
    assert_eq!(
        mel.frames,
        2 * cfg.n_audio_ctx,
        "one encoder window is 2 * n_audio_ctx frames"
    );
    let x = encode_layers(w, cfg.n_heads, pool, mel);
    let mut out = vec![0.0f32; x.len()];
    layer_norm_rows(pool, &x, &w.ln_post, &mut out);
    out
}

/// Rows the stride-2 convolution makes of `frames` mel frames.
pub fn conv_rows(frames: usize) -> usize {
    frames.div_ceil(2)
}

/// The encoder short of its final layer norm on one segment of mel frames, which attends
/// only to itself: the two convolutions (zero-padded at the segment's ends), positions from
/// the segment's start, every layer. Returns [`conv_rows`]`(mel.frames)` rows of `d_model`.
pub fn encode_layers(
    w: &EncoderWeights,
    n_heads: usize,
    pool: &ThreadPool,
    mel: &LogMel,
) -> Vec<f32> {
    let d = w.d_model();
    let t1 = mel.frames;
    assert_eq!(mel.n_mels, w.n_mels(), "mel bins do not match the model");
    let t2 = conv_rows(t1);
    assert!(t2 <= w.max_positions(), "segment longer than the positions");
    let cols = im2col(t1, mel.n_mels, 1, t1, |t, c| mel.data[c * t1 + t]);
    let mut x1 = w.conv1.apply(pool, &cols, t1);
    gelu_rows(pool, &mut x1, d);
    let cols = im2col(t2, d, 2, t1, |t, c| x1[t * d + c]);
    drop(x1);
    let mut x = w.conv2.apply(pool, &cols, t2);
    gelu_rows(pool, &mut x, d);
    add_inplace(&mut x, &w.positions[..t2 * d]);
    for layer in &w.layers {
        encoder_layer(d, n_heads, layer, pool, &mut x, t2);
    }
    x
}

/// Layer norm of every row of `x` into `out`, the rows shared out over the pool.
pub fn layer_norm_rows(pool: &ThreadPool, x: &[f32], ln: &LayerNorm, out: &mut [f32]) {
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
    d_model: usize,
    n_heads: usize,
    layer: &EncoderLayer,
    pool: &ThreadPool,
    x: &mut [f32],
    t: usize,
) {
    let mut h = vec![0.0f32; x.len()];
    layer_norm_rows(pool, x, &layer.attn.ln, &mut h);
    let qkv = layer.attn.qkv.apply(pool, &h, t);
    // One segment: the whole window attends to itself.
    let whole = 0..t;
    let attn = self_attention(pool, &qkv, d_model, n_heads, std::slice::from_ref(&whole));
    add_inplace(x, &layer.attn.out.apply(pool, &attn, t));
    layer_norm_rows(pool, x, &layer.ffn.ln, &mut h);
    let mut f = layer.ffn.fc1.apply(pool, &h, t);
    let hidden = f.len() / t;
    gelu_rows(pool, &mut f, hidden);
    add_inplace(x, &layer.ffn.fc2.apply(pool, &f, t));
}
