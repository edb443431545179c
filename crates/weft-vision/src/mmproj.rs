//! llama.cpp's mmproj files (GGUF, `general.architecture = clip`, as `convert_hf_to_gguf.py
//! --mmproj` writes them) as a source of Qwen2.5-VL's vision tower: its shape from the
//! `clip.vision.*` metadata, its preprocessing settings, and its tensors under Hugging Face's
//! names. The converter splits the fused Q/K/V projection into three tensors and the two-frame
//! patch convolution into one per frame; they are joined again here, so the tower computes
//! exactly what it computes from the Hugging Face checkpoint.

use std::path::Path;

use weft_models::gguf::{GgufError, GgufFile};

use weft_audio::audio_tower::AudioTowerConfig;
use weft_audio::tensors::{Tensor, TensorSource};
use weft_audio::ModelError;
use weft_kernels::quant::dequantize_row;

use crate::gemma3_tower::Gemma3TowerConfig;
use crate::qwen25vl_tower::TowerConfig;
use crate::tower::{read_f32, TowerError, TowerWeights};
use crate::{Normalization, Qwen2VlConfig, SiglipConfig};

/// `clip.projector_type` of Qwen2.5-VL's tower and merger.
pub const QWEN25VL_PROJECTOR: &str = "qwen2.5vl_merger";
/// `clip.projector_type` of Gemma 3's SigLIP tower and pooling projector.
pub const GEMMA3_PROJECTOR: &str = "gemma3";
/// `clip.projector_type` of Qwen2.5-Omni's two towers: Qwen2.5-VL's vision tower and the
/// Whisper-style audio tower (`a.*` tensors).
pub const QWEN25OMNI_PROJECTOR: &str = "qwen2.5o";
/// Audio-tower settings the converter does not write: the released Qwen2.5-Omni's chunk of
/// 2 * 100 mel frames and Whisper's 1500 positions.
const OMNI_N_WINDOW: usize = 100;
const OMNI_MAX_SOURCE_POSITIONS: usize = 1500;
/// Patches pooled per token along each side when the file does not say
/// (`clip.vision.projector.scale_factor`; the converter writes it only when it differs):
/// the released Gemma 3's 64 x 64 patches into 16 x 16 tokens.
const GEMMA3_DEFAULT_POOL: usize = 4;
/// Window side in pixels that llama.cpp assumes when the file does not say
/// (`clip.vision.window_size`; the converter does not write it): Qwen2.5-VL's.
const DEFAULT_WINDOW_SIZE: usize = 112;
/// Qwen2.5-VL's published `preprocessor_config.json` bounds, used when the file has none.
const DEFAULT_MIN_PIXELS: u64 = 56 * 56;
const DEFAULT_MAX_PIXELS: u64 = 28 * 28 * 16384;

/// Why an mmproj file cannot be used.
#[derive(thiserror::Error, Debug)]
pub enum MmprojError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

pub struct MmprojFile {
    file: GgufFile,
}

impl MmprojFile {
    pub fn open(path: &Path) -> Result<MmprojFile, MmprojError> {
        let file = GgufFile::open(path)?;
        let mmproj = MmprojFile { file };
        if mmproj.file.get_str("general.architecture")? != Some("clip") {
            return Err(mmproj.invalid("not an mmproj file (general.architecture is not clip)"));
        }
        if mmproj.file.get_bool("clip.has_vision_encoder")? != Some(true) {
            return Err(mmproj.invalid("the file has no vision encoder"));
        }
        Ok(mmproj)
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    fn invalid(&self, message: &str) -> MmprojError {
        MmprojError::Invalid {
            path: self.file.path().display().to_string(),
            message: message.to_owned(),
        }
    }

    /// `clip.projector_type` (which tower and projector the file holds).
    pub fn projector_type(&self) -> Result<Option<&str>, MmprojError> {
        Ok(self.file.get_str("clip.projector_type")?)
    }

    fn need(&self, key: &str) -> Result<usize, MmprojError> {
        match self.file.get_u32(key)? {
            Some(v) if v > 0 => Ok(v as usize),
            _ => Err(self.invalid(&format!("{key} is missing or 0"))),
        }
    }

    /// The Qwen2.5-VL tower's shape. Blocks attend within windows except every
    /// `n_wa_pattern`-th (llama.cpp's reading of `fullatt_block_indexes`).
    pub fn qwen25vl_config(&self) -> Result<TowerConfig, MmprojError> {
        let depth = self.need("clip.vision.block_count")?;
        let full_attention_blocks = match self.file.get_u32("clip.vision.n_wa_pattern")? {
            Some(n) if n > 0 => (0..depth).filter(|i| (i + 1) % n as usize == 0).collect(),
            _ => (0..depth).collect(),
        };
        let temporal_patch_size = match self.file.tensor("v.patch_embd.weight.1") {
            Some(_) => 2,
            None => 1,
        };
        let config = TowerConfig {
            depth,
            hidden: self.need("clip.vision.embedding_length")?,
            intermediate: self.need("clip.vision.feed_forward_length")?,
            heads: self.need("clip.vision.attention.head_count")?,
            patch_size: self.need("clip.vision.patch_size")?,
            temporal_patch_size,
            merge_size: self
                .file
                .get_u32("clip.vision.spatial_merge_size")?
                .map_or(2, |v| v as usize),
            window_size: self
                .file
                .get_u32("clip.vision.window_size")?
                .map_or(DEFAULT_WINDOW_SIZE, |v| v as usize),
            full_attention_blocks,
            out_hidden: self.need("clip.vision.projection_dim")?,
            in_channels: 3,
        };
        config.validated().map_err(|e| self.invalid(&e.to_string()))
    }

    /// Qwen2.5-Omni's audio tower's shape (`clip.audio.*`).
    pub fn omni_audio_config(&self) -> Result<AudioTowerConfig, MmprojError> {
        if self.file.get_bool("clip.has_audio_encoder")? != Some(true) {
            return Err(self.invalid("the file has no audio encoder"));
        }
        let config = AudioTowerConfig {
            n_mels: self.need("clip.audio.num_mel_bins")?,
            d_model: self.need("clip.audio.embedding_length")?,
            n_heads: self.need("clip.audio.attention.head_count")?,
            layers: self.need("clip.audio.block_count")?,
            n_window: OMNI_N_WINDOW,
            max_source_positions: OMNI_MAX_SOURCE_POSITIONS,
            output_dim: self.need("clip.audio.projection_dim")?,
        };
        Ok(config)
    }

    /// Qwen2.5-Omni's audio tower's tensors under CTranslate2's encoder names.
    pub fn omni_audio_weights(&self) -> OmniAudioWeights<'_> {
        OmniAudioWeights(self)
    }

    /// The Gemma 3 tower's shape.
    pub fn gemma3_config(&self) -> Result<Gemma3TowerConfig, MmprojError> {
        let image_size = self.need("clip.vision.image_size")?;
        let patch_size = self.need("clip.vision.patch_size")?;
        let pool = match self.file.get_u32("clip.vision.projector.scale_factor")? {
            Some(0) => return Err(self.invalid("clip.vision.projector.scale_factor is 0")),
            Some(v) => v as usize,
            None => GEMMA3_DEFAULT_POOL,
        };
        let side = image_size / patch_size / pool;
        let config = Gemma3TowerConfig {
            hidden: self.need("clip.vision.embedding_length")?,
            intermediate: self.need("clip.vision.feed_forward_length")?,
            layers: self.need("clip.vision.block_count")?,
            heads: self.need("clip.vision.attention.head_count")?,
            image_size,
            patch_size,
            eps: self
                .file
                .get_f32("clip.vision.attention.layer_norm_epsilon")?
                .unwrap_or(1e-6),
            tokens_per_image: side * side,
            out_hidden: self.need("clip.vision.projection_dim")?,
        };
        config.validated().map_err(|e| self.invalid(&e.to_string()))
    }

    /// The SigLIP processor's settings: the tower's square size, bilinear resampling, and the
    /// file's mean and std (SigLIP's 0.5 where it has none).
    pub fn siglip_processor(&self, tower: &Gemma3TowerConfig) -> Result<SiglipConfig, MmprojError> {
        let mut c = SiglipConfig {
            height: tower.image_size as u32,
            width: tower.image_size as u32,
            ..SiglipConfig::default()
        };
        c.normalization.mean = [0.5; 3];
        c.normalization.std = [0.5; 3];
        self.normalization(&mut c.normalization)?;
        Ok(c)
    }

    /// The file's `clip.vision.image_mean` and `image_std` over `n`'s.
    fn normalization(&self, n: &mut Normalization) -> Result<(), MmprojError> {
        for (key, out) in [
            ("clip.vision.image_mean", &mut n.mean),
            ("clip.vision.image_std", &mut n.std),
        ] {
            if let Some(values) = self.file.get_f32_array(key)? {
                let [a, b, c] = values else {
                    return Err(self.invalid(&format!("{key} needs 3 values")));
                };
                *out = [f64::from(*a), f64::from(*b), f64::from(*c)];
            }
        }
        if n.std.iter().any(|&s| s <= 0.0) {
            return Err(self.invalid("clip.vision.image_std must be positive"));
        }
        Ok(())
    }

    /// The Gemma 3 tower's tensors under their Hugging Face names.
    pub fn gemma3_weights(&self) -> Gemma3Weights<'_> {
        Gemma3Weights(self)
    }

    /// The image processor's settings: Qwen2.5-VL's, with the file's mean, std and pixel
    /// bounds where it has them.
    pub fn qwen2vl_processor(&self, tower: &TowerConfig) -> Result<Qwen2VlConfig, MmprojError> {
        let mut c = Qwen2VlConfig {
            min_pixels: DEFAULT_MIN_PIXELS,
            max_pixels: DEFAULT_MAX_PIXELS,
            patch_size: tower.patch_size as u32,
            temporal_patch_size: tower.temporal_patch_size as u32,
            merge_size: tower.merge_size as u32,
            ..Qwen2VlConfig::default()
        };
        if let Some(v) = self.file.get_u32("clip.vision.image_min_pixels")? {
            c.min_pixels = u64::from(v);
        }
        if let Some(v) = self.file.get_u32("clip.vision.image_max_pixels")? {
            c.max_pixels = u64::from(v);
        }
        self.normalization(&mut c.normalization)?;
        Ok(c)
    }

    /// Q, K and V (weights `[d, d]` or biases `[d]`) stacked as the fused projection.
    fn qkv(&self, block: &str, suffix: &str, shape: &[usize]) -> Result<Vec<f32>, TowerError> {
        let mut part = shape.to_vec();
        part[0] /= 3;
        let mut out = Vec::with_capacity(shape.iter().product());
        for which in ["attn_q", "attn_k", "attn_v"] {
            out.extend(read_f32(
                &self.file,
                &format!("v.blk.{block}.{which}.{suffix}"),
                &part,
            )?);
        }
        Ok(out)
    }

    /// The patch convolution `[d, c, t, p, p]` from its per-frame halves `[d, c, p, p]`.
    fn patch_embed(&self, shape: &[usize]) -> Result<Vec<f32>, TowerError> {
        let &[d, c, t, p, q] = shape else {
            return Err(TowerError::Config(format!("patch shape {shape:?}")));
        };
        let frames = (0..t)
            .map(|i| {
                let name = match i {
                    0 => "v.patch_embd.weight".to_owned(),
                    i => format!("v.patch_embd.weight.{i}"),
                };
                read_f32(&self.file, &name, &[d, c, p, q])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plane = p * q;
        let mut out = Vec::with_capacity(d * c * t * plane);
        for oc in 0..d * c {
            for frame in &frames {
                out.extend_from_slice(&frame[oc * plane..(oc + 1) * plane]);
            }
        }
        Ok(out)
    }
}

impl TowerWeights for MmprojFile {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, TowerError> {
        if name == "patch_embed.proj.weight" {
            return self.patch_embed(shape);
        }
        if let Some(rest) = name.strip_prefix("blocks.") {
            let (block, rest) = rest.split_once('.').unwrap_or((rest, ""));
            if let Some(suffix) = rest.strip_prefix("attn.qkv.") {
                return self.qkv(block, suffix, shape);
            }
            let (module, suffix) = rest.rsplit_once('.').unwrap_or((rest, ""));
            let gguf = match module {
                "norm1" => "ln1",
                "norm2" => "ln2",
                "attn.proj" => "attn_out",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return Err(TowerError::MissingTensor(name.to_owned())),
            };
            return read_f32(&self.file, &format!("v.blk.{block}.{gguf}.{suffix}"), shape);
        }
        let gguf = match name {
            "merger.ln_q.weight" => "v.post_ln.weight",
            "merger.mlp.0.weight" => "mm.0.weight",
            "merger.mlp.0.bias" => "mm.0.bias",
            "merger.mlp.2.weight" => "mm.2.weight",
            "merger.mlp.2.bias" => "mm.2.bias",
            _ => return Err(TowerError::MissingTensor(name.to_owned())),
        };
        read_f32(&self.file, gguf, shape)
    }
}

/// An mmproj file's Gemma 3 tower under Hugging Face's names (the encoder's below
/// `vision_tower.vision_model.`, the projector's below `multi_modal_projector.`: one map
/// serves both, their names do not overlap). The converter stores the soft embedding norm's
/// weight as `1 + w` (what llama.cpp multiplies by); the tower adds the one itself, as for
/// the checkpoint's `w`.
pub struct Gemma3Weights<'a>(&'a MmprojFile);

impl TowerWeights for Gemma3Weights<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, TowerError> {
        let file = &self.0.file;
        let missing = || TowerError::MissingTensor(name.to_owned());
        if let Some(rest) = name.strip_prefix("encoder.layers.") {
            let (block, rest) = rest.split_once('.').ok_or_else(missing)?;
            let (module, suffix) = rest.rsplit_once('.').ok_or_else(missing)?;
            let gguf = match module {
                "layer_norm1" => "ln1",
                "layer_norm2" => "ln2",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.out_proj" => "attn_out",
                "mlp.fc1" => "ffn_up",
                "mlp.fc2" => "ffn_down",
                _ => return Err(missing()),
            };
            return read_f32(file, &format!("v.blk.{block}.{gguf}.{suffix}"), shape);
        }
        if name == "mm_soft_emb_norm.weight" {
            let mut w = read_f32(file, "mm.soft_emb_norm.weight", shape)?;
            w.iter_mut().for_each(|v| *v -= 1.0);
            return Ok(w);
        }
        let gguf = match name {
            "embeddings.patch_embedding.weight" => "v.patch_embd.weight",
            "embeddings.patch_embedding.bias" => "v.patch_embd.bias",
            "embeddings.position_embedding.weight" => "v.position_embd.weight",
            "post_layernorm.weight" => "v.post_ln.weight",
            "post_layernorm.bias" => "v.post_ln.bias",
            "mm_input_projection_weight" => "mm.input_projection.weight",
            _ => return Err(missing()),
        };
        read_f32(file, gguf, shape)
    }
}

/// An mmproj file's Qwen2.5-Omni audio tower (`a.*`, `mm.a.fc`) under CTranslate2's encoder
/// names, as weft-audio builds the tower: Q, K and V joined (K has no bias: zeros), the
/// convolutions' biases (stored `[d, 1]`) as vectors, the output projection as
/// `encoder/projection/*`.
pub struct OmniAudioWeights<'a>(&'a MmprojFile);

impl OmniAudioWeights<'_> {
    fn gguf_name(ct2: &str) -> Option<Vec<Option<String>>> {
        let leaf = |l: &str| match l {
            "gamma" | "weight" => Some("weight"),
            "beta" | "bias" => Some("bias"),
            _ => None,
        };
        let parts: Vec<&str> = ct2.strip_prefix("encoder/")?.split('/').collect();
        let one = |name: String| Some(vec![Some(name)]);
        match parts[..] {
            [conv @ ("conv1" | "conv2"), l] => one(format!("a.conv1d.{}.{}", &conv[4..], leaf(l)?)),
            ["layer_norm", l] => one(format!("a.post_ln.{}", leaf(l)?)),
            ["projection", l] => one(format!("mm.a.fc.{}", leaf(l)?)),
            [layer, block, module, l] => {
                let i = layer.strip_prefix("layer_")?;
                let l = leaf(l)?;
                let name = |m: &str| format!("a.blk.{i}.{m}.{l}");
                match (block, module) {
                    ("self_attention", "layer_norm") => one(name("ln1")),
                    ("self_attention", "linear_0") => Some(
                        ["attn_q", "attn_k", "attn_v"]
                            .iter()
                            .map(|m| (l == "weight" || *m != "attn_k").then(|| name(m)))
                            .collect(),
                    ),
                    ("self_attention", "linear_1") => one(name("attn_out")),
                    ("ffn", "layer_norm") => one(name("ln2")),
                    ("ffn", "linear_0") => one(name("ffn_up")),
                    ("ffn", "linear_1") => one(name("ffn_down")),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// A tensor as stored (outermost dimension first), a bias's trailing 1 dropped.
    fn raw(&self, name: &str) -> Result<Tensor, ModelError> {
        let file = &self.0.file;
        let info = file
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
        let mut shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        if name.ends_with(".bias") {
            shape.retain(|&d| d != 1);
        }
        let mut data = vec![0.0f32; shape.iter().product()];
        dequantize_row(info.ggml_type, file.tensor_data(info), &mut data);
        Ok(Tensor { shape, data })
    }
}

impl TensorSource for OmniAudioWeights<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        let parts = Self::gguf_name(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        let tensors: Vec<Option<Tensor>> = parts
            .iter()
            .map(|p| p.as_deref().map(|p| self.raw(p)).transpose())
            .collect::<Result<_, _>>()?;
        if let [Some(_)] = &tensors[..] {
            return Ok(tensors.into_iter().flatten().next().expect("one tensor"));
        }
        // Q, K, V stacked; a missing part (K's bias) is zeros shaped like the others.
        let like = tensors
            .iter()
            .flatten()
            .next()
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?
            .shape
            .clone();
        let mut shape = like.clone();
        shape[0] *= tensors.len();
        let mut data = Vec::with_capacity(shape.iter().product());
        for t in tensors {
            match t {
                Some(t) => data.extend(t.data),
                None => data.extend(std::iter::repeat_n(0.0, like.iter().product())),
            }
        }
        Ok(Tensor { shape, data })
    }

    fn has(&self, name: &str) -> bool {
        Self::gguf_name(name).is_some_and(|parts| {
            parts
                .iter()
                .flatten()
                .all(|p| self.0.file.tensor(p).is_some())
        })
    }
}
