//! Gemma 3's vision tower: a SigLIP encoder (a patch convolution with learned absolute
//! positions, then pre-norm blocks of LayerNorm, biased multi-head attention over the whole
//! image and a tanh-GELU MLP, and a final LayerNorm) followed by Gemma 3's projector, which
//! averages `k x k` squares of patches into the image's tokens (4 x 4 of the 64 x 64 patches of
//! an 896-pixel image: 256 tokens), normalizes them with an RMSNorm that scales by `1 + w`
//! (the "soft embedding norm") and maps them to the language model's width.
//!
//! Tensor names are the Hugging Face checkpoint's: the encoder's below
//! `vision_tower.vision_model.`, the projector's below `multi_modal_projector.`.

use weft_kernels::encoder_attention::self_attention;
use weft_kernels::float_ops::{gelu_tanh_inplace, layer_norm_eps};
use weft_kernels::ops;
use weft_kernels::pool::ThreadPool;
use weft_kernels::sgemm::{Linear, PackedB};
use weft_models::weights::WeightSource;

use crate::tower::{HfTowerWeights, TowerError, TowerWeights};

/// The tower's shape: `config.json`'s `vision_config` and `mm_tokens_per_image`, and the
/// language model's width.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma3TowerConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    /// Side of the (square) input image in pixels.
    pub image_size: usize,
    pub patch_size: usize,
    /// Epsilon of the LayerNorms and of the soft embedding norm.
    pub eps: f32,
    /// Tokens per image after pooling (a square number).
    pub tokens_per_image: usize,
    /// Width of the language model's embeddings.
    pub out_hidden: usize,
}

impl Gemma3TowerConfig {
    /// From a Gemma 3 `config.json` (`vision_config`, `mm_tokens_per_image`,
    /// `text_config.hidden_size`), with transformers' defaults where a key is absent.
    pub fn from_hf(config: &serde_json::Value) -> Result<Gemma3TowerConfig, TowerError> {
        let vision = &config["vision_config"];
        let int = |v: &serde_json::Value, key: &str, default: Option<usize>| {
            v[key]
                .as_u64()
                .map(|v| v as usize)
                .or(default)
                .filter(|&v| v > 0)
                .ok_or_else(|| TowerError::Config(format!("{key} is missing or 0")))
        };
        if vision["hidden_act"]
            .as_str()
            .is_some_and(|a| a != "gelu_pytorch_tanh")
        {
            return Err(TowerError::Config(format!(
                "vision_config.hidden_act {} is not supported (gelu_pytorch_tanh is)",
                vision["hidden_act"]
            )));
        }
        if vision["vision_use_head"].as_bool() == Some(true) {
            return Err(TowerError::Config(
                "vision_config.vision_use_head: Gemma 3 uses the patch outputs, not a head".into(),
            ));
        }
        Gemma3TowerConfig {
            hidden: int(vision, "hidden_size", Some(768))?,
            intermediate: int(vision, "intermediate_size", Some(3072))?,
            layers: int(vision, "num_hidden_layers", Some(12))?,
            heads: int(vision, "num_attention_heads", Some(12))?,
            image_size: int(vision, "image_size", Some(224))?,
            patch_size: int(vision, "patch_size", Some(16))?,
            eps: vision["layer_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
            tokens_per_image: int(config, "mm_tokens_per_image", Some(256))?,
            out_hidden: int(&config["text_config"], "hidden_size", None)?,
        }
        .validated()
    }

    /// `self` if the tower can run with it.
    pub fn validated(self) -> Result<Gemma3TowerConfig, TowerError> {
        let c = self;
        if !c.hidden.is_multiple_of(c.heads) {
            return Err(TowerError::Config(format!(
                "hidden size {} does not split into {} heads",
                c.hidden, c.heads
            )));
        }
        if !c.image_size.is_multiple_of(c.patch_size) {
            return Err(TowerError::Config(format!(
                "image size {} is not a multiple of the patch size {}",
                c.image_size, c.patch_size
            )));
        }
        let side = c.tokens_side();
        if side * side != c.tokens_per_image || !c.patches_side().is_multiple_of(side) {
            return Err(TowerError::Config(format!(
                "{} tokens per image do not pool a {}x{} patch grid evenly",
                c.tokens_per_image,
                c.patches_side(),
                c.patches_side()
            )));
        }
        Ok(c)
    }

    /// Patches along the image's side.
    pub fn patches_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens along the image's side.
    fn tokens_side(&self) -> usize {
        (self.tokens_per_image as f64).sqrt().round() as usize
    }

    /// Patches pooled into one token along each side.
    fn pool(&self) -> usize {
        self.patches_side() / self.tokens_side()
    }

    fn patch_len(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }
}

struct Block {
    norm1: (Vec<f32>, Vec<f32>),
    norm2: (Vec<f32>, Vec<f32>),
    /// Q, K and V stacked into one product.
    qkv: Linear,
    out: Linear,
    fc1: Linear,
    fc2: Linear,
}

pub struct Gemma3VisionTower {
    config: Gemma3TowerConfig,
    patch_embed: Linear,
    positions: Vec<f32>,
    blocks: Vec<Block>,
    post_norm: (Vec<f32>, Vec<f32>),
    /// `1 + w` of the soft embedding norm.
    soft_norm: Vec<f32>,
    projection: Linear,
}

/// The encoder's and the projector's tensors in a Hugging Face checkpoint: under the
/// released checkpoints' names, or the ones transformers 5 gives a model it built itself
/// (`model.` first, no `vision_model.`).
pub fn hf_weights(
    weights: &dyn WeightSource,
) -> Result<(HfTowerWeights<'_>, HfTowerWeights<'_>), TowerError> {
    let encoder = HfTowerWeights::new(
        weights,
        &[
            "vision_tower.vision_model.",
            "model.vision_tower.vision_model.",
            "model.vision_tower.",
        ],
        "embeddings.patch_embedding.weight",
    )?;
    let projector = HfTowerWeights::new(
        weights,
        &["multi_modal_projector.", "model.multi_modal_projector."],
        "mm_soft_emb_norm.weight",
    )?;
    Ok((encoder, projector))
}

impl Gemma3VisionTower {
    /// Builds the tower from the encoder's and the projector's tensors (by their Hugging Face
    /// names below the two modules).
    pub fn load(
        encoder: &dyn TowerWeights,
        projector: &dyn TowerWeights,
        config: Gemma3TowerConfig,
    ) -> Result<Self, TowerError> {
        let c = &config;
        let (d, ff) = (c.hidden, c.intermediate);
        let tensor = |name: &str, shape: &[usize]| encoder.tensor(name, shape);
        let linear = |name: &str, out: usize, inp: usize| -> Result<Linear, TowerError> {
            Ok(Linear {
                w: PackedB::from_rows(&tensor(&format!("{name}.weight"), &[out, inp])?, out, inp),
                b: Some(tensor(&format!("{name}.bias"), &[out])?),
            })
        };
        let norm = |name: &str| -> Result<(Vec<f32>, Vec<f32>), TowerError> {
            Ok((
                tensor(&format!("{name}.weight"), &[d])?,
                tensor(&format!("{name}.bias"), &[d])?,
            ))
        };
        let p = c.patch_size;
        let patch_embed = Linear {
            w: PackedB::from_rows(
                &tensor("embeddings.patch_embedding.weight", &[d, 3, p, p])?,
                d,
                c.patch_len(),
            ),
            b: Some(tensor("embeddings.patch_embedding.bias", &[d])?),
        };
        let n_patches = c.patches_side() * c.patches_side();
        let positions = tensor("embeddings.position_embedding.weight", &[n_patches, d])?;
        let blocks = (0..c.layers)
            .map(|i| {
                let b = |s: &str| format!("encoder.layers.{i}.{s}");
                let mut qkv_w = Vec::with_capacity(3 * d * d);
                let mut qkv_b = Vec::with_capacity(3 * d);
                for which in ["q_proj", "k_proj", "v_proj"] {
                    qkv_w.extend(tensor(&b(&format!("self_attn.{which}.weight")), &[d, d])?);
                    qkv_b.extend(tensor(&b(&format!("self_attn.{which}.bias")), &[d])?);
                }
                Ok(Block {
                    norm1: norm(&b("layer_norm1"))?,
                    norm2: norm(&b("layer_norm2"))?,
                    qkv: Linear {
                        w: PackedB::from_rows(&qkv_w, 3 * d, d),
                        b: Some(qkv_b),
                    },
                    out: linear(&b("self_attn.out_proj"), d, d)?,
                    fc1: linear(&b("mlp.fc1"), ff, d)?,
                    fc2: linear(&b("mlp.fc2"), d, ff)?,
                })
            })
            .collect::<Result<_, TowerError>>()?;
        let soft_norm = projector
            .tensor("mm_soft_emb_norm.weight", &[d])?
            .into_iter()
            .map(|w| 1.0 + w)
            .collect();
        // Stored `[vision width, text width]`: the product's columns.
        let projection = Linear {
            w: PackedB::from_cols(
                &projector.tensor("mm_input_projection_weight", &[d, c.out_hidden])?,
                d,
                c.out_hidden,
            ),
            b: None,
        };
        Ok(Gemma3VisionTower {
            patch_embed,
            positions,
            blocks,
            post_norm: norm("post_layernorm")?,
            soft_norm,
            projection,
            config,
        })
    }

    pub fn config(&self) -> &Gemma3TowerConfig {
        &self.config
    }

    /// Floating-point operations (a multiply-add counts two) of one image's
    /// [`Gemma3VisionTower::encode`]: its products and attention, not norms and activations.
    pub fn flops(&self) -> f64 {
        let c = &self.config;
        let n = (c.patches_side() * c.patches_side()) as f64;
        let (d, ff) = (c.hidden as f64, c.intermediate as f64);
        let block = 2.0 * n * d * (4.0 * d + 2.0 * ff) + 4.0 * d * n * n;
        2.0 * n * c.patch_len() as f64 * d
            + c.layers as f64 * block
            + 2.0 * c.tokens_per_image as f64 * d * c.out_hidden as f64
    }

    /// One image's embeddings for the language model: `tokens_per_image` rows of
    /// `out_hidden` values, row-major over the pooled grid, from `pixel_values` (`[3,
    /// image_size, image_size]`, channels first, as the processor writes them).
    pub fn encode(&self, pool: &ThreadPool, pixel_values: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let (d, side, p) = (c.hidden, c.patches_side(), c.patch_size);
        assert_eq!(
            pixel_values.len(),
            3 * c.image_size * c.image_size,
            "pixel_values of one image"
        );
        let rows = side * side;
        // Each patch's values in the convolution weight's order: channel, row, column.
        let mut patches = Vec::with_capacity(rows * c.patch_len());
        for (py, px) in (0..side).flat_map(|y| (0..side).map(move |x| (y, x))) {
            for ch in 0..3 {
                for ky in 0..p {
                    let at = (ch * c.image_size + py * p + ky) * c.image_size + px * p;
                    patches.extend_from_slice(&pixel_values[at..at + p]);
                }
            }
        }
        let mut x = self.patch_embed.apply(pool, &patches, rows);
        ops::add_inplace(&mut x, &self.positions);
        let mut h = vec![0.0f32; x.len()];
        // Every patch attends to every patch of the image: one segment.
        let whole = 0..rows;
        for block in &self.blocks {
            layer_norm_rows(pool, &x, &block.norm1, c.eps, &mut h);
            let qkv = block.qkv.apply(pool, &h, rows);
            let attn = self_attention(pool, &qkv, d, c.heads, std::slice::from_ref(&whole));
            ops::add_inplace(&mut x, &block.out.apply(pool, &attn, rows));
            layer_norm_rows(pool, &x, &block.norm2, c.eps, &mut h);
            let mut f = block.fc1.apply(pool, &h, rows);
            pool.for_each_rows_mut(&mut f, c.intermediate, |_, rows| gelu_tanh_inplace(rows));
            ops::add_inplace(&mut x, &block.fc2.apply(pool, &f, rows));
        }
        layer_norm_rows(pool, &x, &self.post_norm, c.eps, &mut h);
        let mut pooled = self.average_pool(&h);
        ops::rms_norm_inplace(&mut pooled, &self.soft_norm, c.eps);
        self.projection.apply(pool, &pooled, c.tokens_per_image)
    }

    /// Means of `pool x pool` squares of the patch grid's rows, row-major over the squares.
    fn average_pool(&self, patches: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let (d, side, k) = (c.hidden, c.patches_side(), c.pool());
        let out_side = side / k;
        let mut out = vec![0.0f32; out_side * out_side * d];
        for (cell, acc) in out.chunks_exact_mut(d).enumerate() {
            let (ty, tx) = (cell / out_side, cell % out_side);
            for py in ty * k..(ty + 1) * k {
                for px in tx * k..(tx + 1) * k {
                    let row = py * side + px;
                    ops::add_inplace(acc, &patches[row * d..(row + 1) * d]);
                }
            }
            ops::scale_inplace(acc, 1.0 / (k * k) as f32);
        }
        out
    }
}

/// Layer norm of each row of `x` into `out`, the rows shared out over the pool.
fn layer_norm_rows(
    pool: &ThreadPool,
    x: &[f32],
    (gamma, beta): &(Vec<f32>, Vec<f32>),
    eps: f32,
    out: &mut [f32],
) {
    let d = gamma.len();
    pool.for_each_rows_mut(out, d, |first, rows| {
        layer_norm_eps(
            &x[first * d..first * d + rows.len()],
            gamma,
            beta,
            eps,
            rows,
        );
    });
}
