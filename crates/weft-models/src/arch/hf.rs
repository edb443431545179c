//! Hugging Face model directories for the text architectures: `config.json` to
//! [`DecoderConfig`], and Hugging Face tensor names to the GGUF names the decoder is built
//! from. What differs between the formats beyond names is settled here:
//! - Llama's Q/K rows: llama.cpp's converter permutes them so that GGUF llama models rotate
//!   adjacent pairs; Hugging Face keeps the original rows and rotates halves. Rather than
//!   undo the permutation, a Hugging Face llama uses the halves rotation (`RopeStyle::Neox`).
//! - Gemma's RMSNorm scales by `1 + w`: Hugging Face stores `w`, GGUF stores `1 + w`
//!   (`norm_weight_offset`).
//! - Multimodal checkpoints nest the language model's settings in `text_config` and its
//!   tensors under `model.language_model.` (or `language_model.model.`); those are read the
//!   same way, and the other parts' tensors are left out. Qwen2.5-Omni nests once more: its
//!   language model is the thinker's (`thinker_config.text_config`, tensors under
//!   `thinker.model.`); the talker and the speech decoder are other parts.

use std::path::Path;

use serde_json::Value;
use weft_kernels::ops::RopeStyle;

use super::config::{Arch, DecoderConfig, LayerAttention};
use crate::ModelError;

/// Gemma 3's default: every sixth layer attends globally.
const GEMMA3_DEFAULT_PATTERN: u64 = 6;

/// Prefixes of the language model's tensors, longest first.
const PREFIXES: [&str; 4] = [
    "model.language_model.",
    "language_model.model.",
    "thinker.model.",
    "model.",
];
const LM_HEADS: [&str; 3] = [
    "lm_head.weight",
    "language_model.lm_head.weight",
    "thinker.lm_head.weight",
];

/// The part of `config.json` that describes the model that reads the prompt: Qwen2.5-Omni's
/// `thinker_config` (the thinker, which writes text), else the root.
pub fn reader_config(root: &Value) -> &Value {
    root.get("thinker_config")
        .filter(|v| v.is_object())
        .unwrap_or(root)
}

/// The architecture's settings: the reader's `text_config` when there is one, else the
/// reader's own.
pub fn text_config(root: &Value) -> &Value {
    let reader = reader_config(root);
    reader
        .get("text_config")
        .filter(|v| v.is_object())
        .unwrap_or(reader)
}

/// The architecture a `config.json` describes (by the text model's `model_type`).
pub fn arch_of(config: &Value) -> Option<Arch> {
    match text_config(config)["model_type"].as_str()? {
        "llama" => Some(Arch::Llama),
        // Qwen2-VL and Qwen2.5-VL: a Qwen2 language model with multimodal RoPE.
        "qwen2"
        | "qwen2_vl"
        | "qwen2_vl_text"
        | "qwen2_5_vl"
        | "qwen2_5_vl_text"
        | "qwen2_5_omni_text"
        | "qwen2_5_omni_thinker" => Some(Arch::Qwen2),
        "gemma3" | "gemma3_text" => Some(Arch::Gemma3),
        _ => None,
    }
}

/// The GGUF name of a Hugging Face tensor of architecture `arch`, or `None` for tensors of
/// other parts (vision towers, projectors) and buffers weft does not use.
pub fn gguf_name(arch: Arch, hf: &str) -> Option<String> {
    if LM_HEADS.contains(&hf) {
        return Some("output.weight".into());
    }
    let rest = PREFIXES.iter().find_map(|p| hf.strip_prefix(p))?;
    match rest {
        "embed_tokens.weight" => return Some("token_embd.weight".into()),
        "norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let (layer, tail) = rest.strip_prefix("layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let gguf = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        // Gemma normalizes after attention and around the FFN; the others' only second norm
        // comes before the FFN.
        "post_attention_layernorm.weight" if arch == Arch::Gemma3 => "post_attention_norm.weight",
        "post_attention_layernorm.weight" | "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}"))
}

/// Reads the decoder's settings from a parsed `config.json` (`path` names it in errors).
pub fn decoder_config(root: &Value, path: &Path) -> Result<DecoderConfig, ModelError> {
    let invalid = |message: String| ModelError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let c = text_config(root);
    let model_type = c["model_type"].as_str().unwrap_or("none");
    let arch = arch_of(root).ok_or_else(|| ModelError::UnsupportedArch {
        path: path.to_path_buf(),
        arch: model_type.to_string(),
    })?;
    let int = |key: &str| c[key].as_u64().map(|v| v as usize);
    let need = |key: &str| int(key).ok_or_else(|| invalid(format!("config.json has no {key}")));
    let float = |key: &str| c[key].as_f64();
    let n_embd = need("hidden_size")?;
    let n_layers = need("num_hidden_layers")?;
    let n_ff = need("intermediate_size")?;
    let n_heads = need("num_attention_heads")?;
    let n_kv_heads = int("num_key_value_heads").unwrap_or(n_heads);
    if n_embd == 0 || n_layers == 0 || n_heads == 0 || n_kv_heads == 0 {
        return Err(invalid("zero-sized model dimensions".into()));
    }
    let head_dim = match int("head_dim") {
        Some(d) => d,
        None if n_embd % n_heads == 0 => n_embd / n_heads,
        None => return Err(invalid("hidden_size is not divisible by the heads".into())),
    };
    for (key, want) in [
        ("final_logit_softcapping", "null"),
        ("attn_logit_softcapping", "null"),
    ] {
        if !c[key].is_null() {
            return Err(invalid(format!(
                "{key} must be {want} (weft does not soft-cap)"
            )));
        }
    }
    if c["use_sliding_window"].as_bool() == Some(true) && arch != Arch::Gemma3 {
        return Err(invalid("sliding-window Qwen2 is not supported".into()));
    }
    if c["use_bidirectional_attention"].as_bool() == Some(true) {
        return Err(invalid(
            "bidirectional text attention is not supported".into(),
        ));
    }
    let (rope_base, rope_scale) = rope(c, "full_attention").map_err(invalid)?;
    let global = LayerAttention {
        window: None,
        rope_base,
        rope_scale,
    };
    let (layers, rope_style, embed_scale, attn_scale, norm_weight_offset) = match arch {
        Arch::Llama | Arch::Qwen2 => (
            vec![global; n_layers],
            RopeStyle::Neox,
            1.0,
            1.0 / (head_dim as f32).sqrt(),
            0.0,
        ),
        Arch::Gemma3 => {
            let window = int("sliding_window");
            let (rope_base, rope_scale) = rope(c, "sliding_attention").map_err(invalid)?;
            let local = LayerAttention {
                window,
                rope_base,
                rope_scale,
            };
            let layers = gemma3_layer_kinds(c, n_layers)
                .map_err(invalid)?
                .into_iter()
                .map(|sliding| {
                    if sliding && window.is_some() {
                        local
                    } else {
                        global
                    }
                })
                .collect();
            let scalar = float("query_pre_attn_scalar").unwrap_or(head_dim as f64);
            (
                layers,
                RopeStyle::Neox,
                (n_embd as f32).sqrt(),
                (1.0 / scalar.sqrt()) as f32,
                1.0,
            )
        }
    };
    let mrope_section = mrope_section(c).map_err(invalid)?;
    let config = DecoderConfig {
        arch,
        n_embd,
        n_layers,
        n_ff,
        n_heads,
        n_kv_heads,
        head_dim,
        rope_dims: head_dim,
        rope_style,
        rms_eps: float("rms_norm_eps").unwrap_or(1e-6) as f32,
        context_length: int("max_position_embeddings").unwrap_or(2048),
        layers,
        attn_scale,
        embed_scale,
        norm_weight_offset,
        mrope_section,
    };
    config.check().map_err(invalid)?;
    Ok(config)
}

/// RoPE base and position scale of the layers of `layer_type` (`full_attention` or
/// `sliding_attention`). transformers 5 writes `rope_parameters` (per layer type where they
/// differ); earlier versions, as most released checkpoints, `rope_theta` and `rope_scaling`,
/// with Gemma 3's local layers at `rope_local_base_freq` and unscaled.
fn rope(c: &Value, layer_type: &str) -> Result<(f32, f32), String> {
    let params = &c["rope_parameters"];
    if params.is_object() {
        let p = params.get(layer_type).unwrap_or(params);
        let base = p["rope_theta"].as_f64().unwrap_or(10_000.0) as f32;
        return Ok((base, rope_scale(p)?));
    }
    if layer_type == "sliding_attention" {
        let base = c["rope_local_base_freq"].as_f64().unwrap_or(10_000.0) as f32;
        return Ok((base, 1.0));
    }
    let base = c["rope_theta"].as_f64().unwrap_or(10_000.0) as f32;
    Ok((base, rope_scale(&c["rope_scaling"])?))
}

/// The multimodal RoPE split (`mrope_section` in `rope_parameters`, or in `rope_scaling`
/// before transformers 5).
fn mrope_section(c: &Value) -> Result<Option<[usize; 3]>, String> {
    let section = ["rope_parameters", "rope_scaling"]
        .iter()
        .map(|key| &c[*key]["mrope_section"])
        .find(|v| !v.is_null());
    let Some(section) = section else {
        return Ok(None);
    };
    let bad = || format!("mrope_section {section} is not three sizes");
    let values = section.as_array().ok_or_else(bad)?;
    let sizes: Vec<usize> = values
        .iter()
        .map(|v| v.as_u64().map(|v| v as usize))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    <[usize; 3]>::try_from(sizes).map(Some).map_err(|_| bad())
}

/// Positions are multiplied by the returned factor: scaling of type `linear` (or none).
fn rope_scale(scaling: &Value) -> Result<f32, String> {
    if scaling.is_null() {
        return Ok(1.0);
    }
    let kind = scaling["rope_type"]
        .as_str()
        .or_else(|| scaling["type"].as_str())
        .unwrap_or("none");
    match kind {
        // Multimodal RoPE is default RoPE per component (`mrope_section`).
        "default" | "mrope" => Ok(1.0),
        "linear" => match scaling["factor"].as_f64() {
            Some(f) if f > 0.0 => Ok((1.0 / f) as f32),
            _ => Err("rope_scaling linear without a positive factor".into()),
        },
        other => Err(format!("rope_scaling type '{other}' is not supported")),
    }
}

/// Whether each Gemma 3 layer slides: `layer_types` when given, else every
/// `sliding_window_pattern`-th layer is global.
fn gemma3_layer_kinds(c: &Value, n_layers: usize) -> Result<Vec<bool>, String> {
    if let Some(types) = c["layer_types"].as_array() {
        if types.len() != n_layers {
            return Err(format!(
                "layer_types lists {} layers for {n_layers}",
                types.len()
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(format!("unknown layer type {t}")),
            })
            .collect();
    }
    let every = c["sliding_window_pattern"]
        .as_u64()
        .unwrap_or(GEMMA3_DEFAULT_PATTERN)
        .max(1) as usize;
    Ok((0..n_layers).map(|il| (il + 1) % every != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_per_architecture() {
        let l = |hf| gguf_name(Arch::Llama, hf);
        assert_eq!(l("model.embed_tokens.weight").unwrap(), "token_embd.weight");
        assert_eq!(l("lm_head.weight").unwrap(), "output.weight");
        assert_eq!(
            l("model.layers.3.post_attention_layernorm.weight").unwrap(),
            "blk.3.ffn_norm.weight"
        );
        assert_eq!(
            gguf_name(
                Arch::Gemma3,
                "model.layers.3.post_attention_layernorm.weight"
            )
            .unwrap(),
            "blk.3.post_attention_norm.weight"
        );
        assert_eq!(
            gguf_name(
                Arch::Gemma3,
                "model.language_model.layers.0.pre_feedforward_layernorm.weight"
            )
            .unwrap(),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            l("model.layers.0.self_attn.k_proj.bias").unwrap(),
            "blk.0.attn_k.bias"
        );
        assert!(l("model.visual.blocks.0.attn.qkv.weight").is_none());
        // Qwen2.5-Omni: the thinker is the language model; the talker is another part.
        let q = |hf| gguf_name(Arch::Qwen2, hf);
        assert_eq!(
            q("thinker.model.layers.1.mlp.up_proj.weight").unwrap(),
            "blk.1.ffn_up.weight"
        );
        assert_eq!(q("thinker.lm_head.weight").unwrap(), "output.weight");
        assert!(q("talker.model.layers.0.mlp.up_proj.weight").is_none());
        assert!(q("thinker.audio_tower.conv1.weight").is_none());
        assert!(l("model.layers.x.mlp.up_proj.weight").is_none());
        assert!(l("model.layers.0.self_attn.rotary_emb.inv_freq").is_none());
    }

    #[test]
    fn omni_reads_the_thinker_text_config() {
        let c: Value = serde_json::json!({
            "model_type": "qwen2_5_omni",
            "thinker_config": {"model_type": "qwen2_5_omni_thinker",
                               "text_config": {"model_type": "qwen2_5_omni_text", "hidden_size": 64}},
            "talker_config": {"model_type": "qwen2_5_omni_talker", "hidden_size": 32}
        });
        assert_eq!(text_config(&c)["hidden_size"], 64);
        assert_eq!(arch_of(&c), Some(Arch::Qwen2));
        let thinker_only = &c["thinker_config"];
        assert_eq!(text_config(thinker_only)["hidden_size"], 64);
    }

    #[test]
    fn gemma3_layer_kinds_from_pattern_or_list() {
        let c: Value = serde_json::json!({"sliding_window_pattern": 3});
        assert_eq!(
            gemma3_layer_kinds(&c, 4).unwrap(),
            [true, true, false, true]
        );
        let c: Value = serde_json::json!({"layer_types": ["full_attention", "sliding_attention"]});
        assert_eq!(gemma3_layer_kinds(&c, 2).unwrap(), [false, true]);
        assert!(gemma3_layer_kinds(&c, 3).is_err());
    }
}
