//! Hyper-parameters of the decoder-only text architectures, read from GGUF metadata (or from
//! a Hugging Face `config.json`, in `hf`).

use crate::gguf::GgufFile;
use crate::ModelError;
use weft_kernels::ops::RopeStyle;

/// The architectures this crate implements, by their GGUF `general.architecture` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Gemma3,
}

impl Arch {
    pub const SUPPORTED: &'static [&'static str] = &["llama", "qwen2", "qwen2vl", "gemma3"];

    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            // Qwen2-VL's and Qwen2.5-VL's language model: qwen2 with multimodal RoPE sections.
            "qwen2" | "qwen2vl" => Some(Arch::Qwen2),
            "gemma3" => Some(Arch::Gemma3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// Per-layer attention settings that differ between layers (Gemma 3 interleaves local
/// sliding-window layers with global ones, each with its own RoPE base).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerAttention {
    /// Keys further back than this many positions are masked; `None` for full attention.
    pub window: Option<usize>,
    pub rope_base: f32,
    /// Positions are multiplied by this before rotation (linear RoPE scaling).
    pub rope_scale: f32,
}

/// Everything the forward pass needs to know about the network's shape.
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    pub arch: Arch,
    pub n_embd: usize,
    pub n_layers: usize,
    pub n_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub context_length: usize,
    pub layers: Vec<LayerAttention>,
    /// Multiplier for q·k.
    pub attn_scale: f32,
    /// Multiplier applied to token embeddings (sqrt(n_embd) for Gemma).
    pub embed_scale: f32,
    /// Multimodal RoPE (Qwen2-VL, Qwen2.5-VL/Omni): how many of the `rope_dims / 2`
    /// frequencies the time, height and width components of a position turn, in that order.
    pub mrope_section: Option<[usize; 3]>,
    /// Added to every RMS-norm weight as loaded: 1 for Gemma from Hugging Face files, which
    /// store `w` for a norm that scales by `1 + w` (GGUF files store `1 + w`).
    pub norm_weight_offset: f32,
}

/// Largest `rope_dims / 2` with multimodal RoPE (heads of up to 512).
pub(crate) const MAX_MROPE_HALF: usize = 256;

/// Gemma 3's local layers use this RoPE base where the file has no `rope.freq_base_swa`
/// (llama.cpp's converter writes it only for some models).
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;
/// Gemma 3 without `attention.sliding_window_pattern`: every sixth layer is global, the
/// others slide.
const GEMMA3_GLOBAL_EVERY: usize = 6;

/// `rope.dimension_sections` of a qwen2vl GGUF: frequency pairs given to time, height and
/// width (a fourth entry, 0 for these models, is not used).
fn mrope_section(file: &GgufFile, key: &str) -> Result<Option<[usize; 3]>, ModelError> {
    let Some(sections) = file.get_i32_array(key)? else {
        return Ok(None);
    };
    match sections {
        [t, h, w, rest @ ..]
            if [*t, *h, *w].iter().all(|&s| s >= 0) && rest.iter().all(|&s| s == 0) =>
        {
            Ok(Some([*t as usize, *h as usize, *w as usize]))
        }
        _ => Err(ModelError::invalid(
            file,
            &format!("{key} {sections:?} is not 3 sections"),
        )),
    }
}

impl DecoderConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<DecoderConfig, ModelError> {
        let name = file
            .get_str("general.architecture")?
            .ok_or_else(|| ModelError::invalid(file, "missing general.architecture"))?;
        let arch = Arch::from_name(name).ok_or_else(|| ModelError::UnsupportedArch {
            path: file.path().to_path_buf(),
            arch: name.to_string(),
        })?;
        let key = |k: &str| format!("{name}.{k}");
        let need = |k: &str| -> Result<usize, ModelError> {
            file.get_u32(&key(k))?
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::invalid(file, &format!("missing metadata {}", key(k))))
        };
        let n_embd = need("embedding_length")?;
        let n_layers = need("block_count")?;
        // Every layer has tensors of its own: a count beyond the file's tensors is corrupt,
        // and must be refused before anything is sized by it.
        if n_layers == 0 || n_layers > file.tensors().len() {
            return Err(ModelError::invalid(
                file,
                &format!(
                    "block_count {n_layers} does not fit the file's {} tensors",
                    file.tensors().len()
                ),
            ));
        }
        let n_ff = need("feed_forward_length")?;
        let n_heads = need("attention.head_count")?;
        let n_kv_heads = file
            .get_u32(&key("attention.head_count_kv"))?
            .map_or(n_heads, |v| v as usize);
        let head_dim = match file.get_u32(&key("attention.key_length"))? {
            Some(v) => v as usize,
            None if n_heads > 0 && n_embd % n_heads == 0 => n_embd / n_heads,
            None => {
                return Err(ModelError::invalid(
                    file,
                    "embedding length not divisible by heads",
                ))
            }
        };
        if let Some(v) = file.get_u32(&key("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(ModelError::invalid(file, "key and value head sizes differ"));
            }
        }
        let rope_dims = file
            .get_u32(&key("rope.dimension_count"))?
            .map_or(head_dim, |v| v as usize);
        let rms_eps = file
            .get_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        let rope_base = file.get_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rope_scale = match file.get_str(&key("rope.scaling.type"))? {
            Some("linear") => file
                .get_f32(&key("rope.scaling.factor"))?
                .filter(|f| *f > 0.0)
                .map_or(1.0, |f| 1.0 / f),
            Some("none") | None => 1.0,
            Some(other) => {
                return Err(ModelError::invalid(
                    file,
                    &format!("unsupported rope scaling '{other}'"),
                ))
            }
        };
        let context_length = file
            .get_u32(&key("context_length"))?
            .map_or(2048, |v| v as usize);

        let global = LayerAttention {
            window: None,
            rope_base,
            rope_scale,
        };
        let (layers, rope_style, embed_scale) = match arch {
            Arch::Llama => (vec![global; n_layers], RopeStyle::Interleaved, 1.0),
            Arch::Qwen2 => (vec![global; n_layers], RopeStyle::Neox, 1.0),
            Arch::Gemma3 => {
                let window = file
                    .get_u32(&key("attention.sliding_window"))?
                    .map(|v| v as usize);
                // Which layers slide: the file's per-layer pattern where the converter wrote
                // one, else Gemma 3's every sixth layer global.
                let pattern = file.get_bool_array(&key("attention.sliding_window_pattern"))?;
                if pattern.is_some_and(|p| p.len() != n_layers) {
                    return Err(ModelError::invalid(
                        file,
                        "attention.sliding_window_pattern does not have one entry per layer",
                    ));
                }
                let sliding = |il: usize| match pattern {
                    Some(p) => p[il],
                    None => !(il + 1).is_multiple_of(GEMMA3_GLOBAL_EVERY),
                };
                let local = LayerAttention {
                    window,
                    rope_base: file
                        .get_f32(&key("rope.freq_base_swa"))?
                        .unwrap_or(GEMMA3_LOCAL_ROPE_BASE),
                    rope_scale: 1.0,
                };
                let layers = (0..n_layers)
                    .map(|il| match sliding(il) && window.is_some() {
                        true => local,
                        false => global,
                    })
                    .collect();
                (layers, RopeStyle::Neox, (n_embd as f32).sqrt())
            }
        };
        let config = DecoderConfig {
            arch,
            n_embd,
            n_layers,
            n_ff,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dims,
            rope_style,
            rms_eps,
            context_length,
            layers,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            embed_scale,
            norm_weight_offset: 0.0,
            mrope_section: mrope_section(file, &key("rope.dimension_sections"))?,
        };
        config.check().map_err(|e| ModelError::invalid(file, &e))?;
        Ok(config)
    }

    /// Refuses shapes the kernels cannot run, whatever file they came from.
    pub(crate) fn check(&self) -> Result<(), String> {
        let (n_heads, n_kv_heads) = (self.n_heads, self.n_kv_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(format!(
                "{n_heads} attention heads cannot share {n_kv_heads} KV heads"
            ));
        }
        let (rope_dims, head_dim) = (self.rope_dims, self.head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(format!(
                "rope dimension {rope_dims} invalid for head size {head_dim}"
            ));
        }
        if head_dim == 0
            || head_dim > weft_kernels::attention::MAX_HEAD_DIM
            || n_heads / n_kv_heads > weft_kernels::attention::MAX_GROUP
        {
            return Err("attention head shape beyond the kernel's limits".into());
        }
        if let Some(sections) = self.mrope_section {
            if sections.iter().sum::<usize>() != rope_dims / 2 || rope_dims / 2 > MAX_MROPE_HALF {
                return Err(format!(
                    "mrope_section {sections:?} does not split the {} rotary frequencies",
                    rope_dims / 2
                ));
            }
        }
        if self.n_embd == 0 || self.n_ff == 0 {
            return Err("zero-sized model dimensions".into());
        }
        Ok(())
    }
}
