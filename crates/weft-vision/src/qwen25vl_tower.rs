//! Qwen2.5-VL's vision tower (also Qwen2.5-Omni's): a ViT over 14-pixel patches of two
//! frames (a Conv3d that is one linear map), 2-D rotary positions, RMSNorm + SwiGLU blocks
//! that attend within windows of merged patches except at `fullatt_block_indexes`, and a
//! merger that joins each 2x2 group of patches into one language-model embedding.
//!
//! Rows arrive as the processor writes `pixel_values`: image by image, frame by frame, each
//! 2x2 merge group's four patches together, groups in row-major order. Windows gather groups
//! into `window` x `window` squares (row-major within and between squares, partial squares at
//! the right and bottom edges); the tower runs on rows in window order, as transformers does,
//! and hands its output back in the processor's order.

use std::ops::Range;

use weft_kernels::encoder_attention::self_attention;
use weft_kernels::float_ops::{gelu_inplace, silu_mul_inplace};
use weft_kernels::ops::{self, RopeStyle};
use weft_kernels::pool::ThreadPool;
use weft_kernels::sgemm::{Linear, PackedB};
use weft_models::weights::WeightSource;

use crate::tower::{HfTowerWeights, TowerError, TowerWeights};

/// RMSNorm epsilon of the tower's norms (fixed in transformers' implementation).
const NORM_EPS: f32 = 1e-6;
/// Base of the tower's rotary frequencies.
const ROPE_THETA: f32 = 10_000.0;

/// The tower's shape, from `config.json`'s `vision_config`.
#[derive(Clone, Debug, PartialEq)]
pub struct TowerConfig {
    pub depth: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    /// Window side in pixels.
    pub window_size: usize,
    pub full_attention_blocks: Vec<usize>,
    /// Width of the language model's embeddings.
    pub out_hidden: usize,
    pub in_channels: usize,
}

impl TowerConfig {
    pub fn from_hf(vision: &serde_json::Value) -> Result<TowerConfig, TowerError> {
        let int = |key: &str| -> Result<usize, TowerError> {
            vision[key]
                .as_u64()
                .map(|v| v as usize)
                .filter(|&v| v > 0)
                .ok_or_else(|| TowerError::Config(format!("vision_config.{key} is missing or 0")))
        };
        let c = TowerConfig {
            depth: int("depth")?,
            hidden: int("hidden_size")?,
            intermediate: int("intermediate_size")?,
            heads: int("num_heads")?,
            patch_size: int("patch_size")?,
            temporal_patch_size: int("temporal_patch_size")?,
            merge_size: int("spatial_merge_size")?,
            window_size: int("window_size")?,
            full_attention_blocks: vision["fullatt_block_indexes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_u64().map(|v| v as usize))
                .collect(),
            out_hidden: int("out_hidden_size")?,
            in_channels: vision["in_channels"]
                .as_u64()
                .or(vision["in_chans"].as_u64())
                .unwrap_or(3) as usize,
        };
        c.validated()
    }

    /// `self` if the tower can run with it.
    pub fn validated(self) -> Result<TowerConfig, TowerError> {
        let c = self;
        let head_dim = c.hidden / c.heads;
        if !c.hidden.is_multiple_of(c.heads) || !head_dim.is_multiple_of(4) {
            return Err(TowerError::Config(format!(
                "hidden size {} does not split into {} heads of a multiple of 4",
                c.hidden, c.heads
            )));
        }
        if c.window_size < c.patch_size * c.merge_size {
            return Err(TowerError::Config(
                "window_size below one merged patch".into(),
            ));
        }
        Ok(c)
    }

    /// Values in one row of `pixel_values`.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Merged patches along a window's side.
    fn window(&self) -> usize {
        self.window_size / self.patch_size / self.merge_size
    }
}

struct Block {
    norm1: Vec<f32>,
    norm2: Vec<f32>,
    qkv: Linear,
    proj: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Qwen25VisionTower {
    config: TowerConfig,
    patch_embed: Linear,
    blocks: Vec<Block>,
    merger_norm: Vec<f32>,
    merger_fc1: Linear,
    merger_fc2: Linear,
}

/// One image (`t` = 1) or video (`t` frame pairs): its grid of patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

/// The tower's tensors in a Hugging Face checkpoint: under `visual.`, or `model.visual.` as
/// transformers 5 saves them.
pub fn hf_weights(weights: &dyn WeightSource) -> Result<HfTowerWeights<'_>, TowerError> {
    HfTowerWeights::new(
        weights,
        &["visual.", "model.visual.", "thinker.visual."],
        "patch_embed.proj.weight",
    )
}

/// The parts, read in order, end to end.
fn concat<const N: usize>(
    parts: [Result<Vec<f32>, TowerError>; N],
) -> Result<Vec<f32>, TowerError> {
    let mut out = Vec::new();
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

impl Qwen25VisionTower {
    /// Builds the tower from `weights` (tensors by their Hugging Face names).
    pub fn load(weights: &dyn TowerWeights, config: TowerConfig) -> Result<Self, TowerError> {
        let tensor = |name: &str, shape: &[usize]| weights.tensor(name, shape);
        let linear = |name: &str,
                      out: usize,
                      inp: usize,
                      bias: bool|
         -> Result<Linear, TowerError> {
            Ok(Linear {
                w: PackedB::from_rows(&tensor(&format!("{name}.weight"), &[out, inp])?, out, inp),
                b: bias
                    .then(|| tensor(&format!("{name}.bias"), &[out]))
                    .transpose()?,
            })
        };
        let c = &config;
        let (d, ff) = (c.hidden, c.intermediate);
        let patch = [
            d,
            c.in_channels,
            c.temporal_patch_size,
            c.patch_size,
            c.patch_size,
        ];
        let patch_embed = Linear {
            w: PackedB::from_rows(
                &tensor("patch_embed.proj.weight", &patch)?,
                d,
                c.patch_len(),
            ),
            b: None,
        };
        let blocks = (0..c.depth)
            .map(|i| {
                let b = |s: &str| format!("blocks.{i}.{s}");
                Ok(Block {
                    norm1: tensor(&b("norm1.weight"), &[d])?,
                    norm2: tensor(&b("norm2.weight"), &[d])?,
                    qkv: match linear(&b("attn.qkv"), 3 * d, d, true) {
                        // Qwen2.5-Omni's tower keeps Q, K and V apart.
                        Err(TowerError::MissingTensor(_)) => Linear {
                            w: PackedB::from_rows(
                                &concat(
                                    ["q", "k", "v"]
                                        .map(|p| tensor(&b(&format!("attn.{p}.weight")), &[d, d])),
                                )?,
                                3 * d,
                                d,
                            ),
                            b: Some(concat(
                                ["q", "k", "v"]
                                    .map(|p| tensor(&b(&format!("attn.{p}.bias")), &[d])),
                            )?),
                        },
                        other => other?,
                    },
                    proj: linear(&b("attn.proj"), d, d, true)?,
                    gate: linear(&b("mlp.gate_proj"), ff, d, true)?,
                    up: linear(&b("mlp.up_proj"), ff, d, true)?,
                    down: linear(&b("mlp.down_proj"), d, ff, true)?,
                })
            })
            .collect::<Result<_, TowerError>>()?;
        let merged = d * c.merge_size * c.merge_size;
        Ok(Qwen25VisionTower {
            patch_embed,
            blocks,
            merger_norm: tensor("merger.ln_q.weight", &[d])?,
            merger_fc1: linear("merger.mlp.0", merged, merged, true)?,
            merger_fc2: linear("merger.mlp.2", c.out_hidden, merged, true)?,
            config,
        })
    }

    pub fn config(&self) -> &TowerConfig {
        &self.config
    }

    /// Floating-point operations (a multiply-add counts two) of [`Qwen25VisionTower::encode`]
    /// on `grids`: its products and attention scores/sums, not its norms and activations.
    pub fn flops(&self, grids: &[Grid]) -> f64 {
        let c = &self.config;
        let rows: usize = grids.iter().map(|g| g.t * g.h * g.w).sum();
        let (n, d, ff) = (rows as f64, c.hidden as f64, c.intermediate as f64);
        let layout = WindowLayout::new(c, grids);
        // Q.K and P.V over each segment: 4 * d * len^2.
        let attention = |segments: &[Range<usize>]| -> f64 {
            segments
                .iter()
                .map(|r| 4.0 * d * (r.len() as f64).powi(2))
                .sum()
        };
        let blocks: f64 = (0..c.depth)
            .map(|i| {
                let segments = match c.full_attention_blocks.contains(&i) {
                    true => &layout.frames,
                    false => &layout.windows,
                };
                2.0 * n * d * (3.0 * d + d + 3.0 * ff) + attention(segments)
            })
            .sum();
        let merged = n / (c.merge_size * c.merge_size) as f64;
        let wide = d * (c.merge_size * c.merge_size) as f64;
        2.0 * n * c.patch_len() as f64 * d
            + blocks
            + 2.0 * merged * wide * (wide + c.out_hidden as f64)
    }

    /// Embeddings for the language model, one row of `out_hidden` per merged patch, image by
    /// image in the processor's order, from `pixel_values` (rows of `patch_len`) of the
    /// images or videos of `grids`.
    pub fn encode(&self, pool: &ThreadPool, pixel_values: &[f32], grids: &[Grid]) -> Vec<f32> {
        let c = &self.config;
        let unit = c.merge_size * c.merge_size;
        let rows: usize = grids.iter().map(|g| g.t * g.h * g.w).sum();
        assert_eq!(
            pixel_values.len(),
            rows * c.patch_len(),
            "pixel_values rows"
        );
        let layout = WindowLayout::new(c, grids);
        // Rows in window order: each merged patch's `unit` rows move together.
        let permute = |x: &[f32], width: usize| {
            let mut out = Vec::with_capacity(x.len());
            for &m in &layout.order {
                out.extend_from_slice(&x[m * unit * width..(m + 1) * unit * width]);
            }
            out
        };
        let mut x = permute(&self.patch_embed.apply(pool, pixel_values, rows), c.hidden);
        let (cos, sin) = layout.rotary(c);
        let (cos, sin) = (
            permute(&cos, c.hidden / c.heads / 2),
            permute(&sin, c.hidden / c.heads / 2),
        );
        let mut h = vec![0.0f32; x.len()];
        for (i, block) in self.blocks.iter().enumerate() {
            let segments = if c.full_attention_blocks.contains(&i) {
                &layout.frames
            } else {
                &layout.windows
            };
            rms_norm_rows(pool, &x, &block.norm1, &mut h);
            let mut qkv = block.qkv.apply(pool, &h, rows);
            rotate_queries_and_keys(&mut qkv, c, &cos, &sin);
            let attn = self_attention(pool, &qkv, c.hidden, c.heads, segments);
            ops::add_inplace(&mut x, &block.proj.apply(pool, &attn, rows));
            rms_norm_rows(pool, &x, &block.norm2, &mut h);
            let mut gate = block.gate.apply(pool, &h, rows);
            let up = block.up.apply(pool, &h, rows);
            let ff = up.len() / rows;
            pool.for_each_rows_mut(&mut gate, ff, |first, g| {
                silu_mul_inplace(g, &up[first * ff..first * ff + g.len()]);
            });
            ops::add_inplace(&mut x, &block.down.apply(pool, &gate, rows));
        }
        rms_norm_rows(pool, &x, &self.merger_norm, &mut h);
        let merged_rows = rows / unit;
        let mut m = self.merger_fc1.apply(pool, &h, merged_rows);
        gelu_inplace(&mut m);
        let windowed = self.merger_fc2.apply(pool, &m, merged_rows);
        // Back to the processor's order.
        let mut out = vec![0.0f32; windowed.len()];
        for (row, &m) in windowed.chunks_exact(c.out_hidden).zip(&layout.order) {
            out[m * c.out_hidden..(m + 1) * c.out_hidden].copy_from_slice(row);
        }
        out
    }
}

/// RMS norm of each row of `x` into `out`, the rows shared out over the pool.
fn rms_norm_rows(pool: &ThreadPool, x: &[f32], weight: &[f32], out: &mut [f32]) {
    let d = weight.len();
    pool.for_each_rows_mut(out, d, |first, rows| {
        ops::rms_norm(
            &x[first * d..first * d + rows.len()],
            weight,
            NORM_EPS,
            rows,
        );
    });
}

/// Rotates each head of the query and key parts of fused QKV rows by the rows' 2-D angles.
fn rotate_queries_and_keys(qkv: &mut [f32], c: &TowerConfig, cos: &[f32], sin: &[f32]) {
    let (d, half) = (c.hidden, c.hidden / c.heads / 2);
    for ((row, cos), sin) in qkv
        .chunks_exact_mut(3 * d)
        .zip(cos.chunks_exact(half))
        .zip(sin.chunks_exact(half))
    {
        ops::rope_apply(
            &mut row[..2 * d],
            c.hidden / c.heads,
            RopeStyle::Neox,
            cos,
            sin,
        );
    }
}

/// Where every merged patch goes: the window order, the windows and the frames as row ranges
/// of that order, and each merged patch's place in its frame.
struct WindowLayout {
    /// Merged patches (processor numbering) in window order.
    order: Vec<usize>,
    windows: Vec<Range<usize>>,
    frames: Vec<Range<usize>>,
    /// (row, column) of each merged patch in its frame, in processor numbering.
    cells: Vec<(usize, usize)>,
}

impl WindowLayout {
    fn new(c: &TowerConfig, grids: &[Grid]) -> WindowLayout {
        let (m, ws) = (c.merge_size, c.window());
        let unit = m * m;
        let mut layout = WindowLayout {
            order: Vec::new(),
            windows: Vec::new(),
            frames: Vec::new(),
            cells: Vec::new(),
        };
        let mut base = 0;
        for g in grids {
            let (lh, lw) = (g.h / m, g.w / m);
            for _ in 0..g.t {
                let start = layout.order.len() * unit;
                for r in 0..lh {
                    for col in 0..lw {
                        layout.cells.push((r, col));
                    }
                }
                for wr in (0..lh).step_by(ws) {
                    for wc in (0..lw).step_by(ws) {
                        let first = layout.order.len() * unit;
                        for r in wr..(wr + ws).min(lh) {
                            for col in wc..(wc + ws).min(lw) {
                                layout.order.push(base + r * lw + col);
                            }
                        }
                        layout.windows.push(first..layout.order.len() * unit);
                    }
                }
                layout.frames.push(start..layout.order.len() * unit);
                base += lh * lw;
            }
        }
        layout
    }

    /// cos/sin of every patch row (processor order): the first half of the frequencies
    /// turned by the patch's row, the second by its column.
    fn rotary(&self, c: &TowerConfig) -> (Vec<f32>, Vec<f32>) {
        let m = c.merge_size;
        let half = c.hidden / c.heads / 2;
        let quarter = half / 2;
        let freqs: Vec<f32> = (0..quarter)
            .map(|i| 1.0 / ROPE_THETA.powf((2 * i) as f32 / half as f32))
            .collect();
        let mut cos = Vec::with_capacity(self.cells.len() * m * m * half);
        let mut sin = Vec::with_capacity(cos.capacity());
        for &(r, col) in &self.cells {
            for ih in 0..m {
                for iw in 0..m {
                    let (ph, pw) = ((r * m + ih) as f32, (col * m + iw) as f32);
                    for (pos, f) in [(ph, &freqs), (pw, &freqs)] {
                        for &f in f {
                            let (s, co) = (pos * f).sin_cos();
                            cos.push(co);
                            sin.push(s);
                        }
                    }
                }
            }
        }
        (cos, sin)
    }
}
