//! The Hugging Face loader: `model.safetensors` in the `openai/whisper-*` layout (any size,
//! 80 or 128 mel bins) with `config.json`, `tokenizer.json` and, when present,
//! `generation_config.json`. Tensors are served under CTranslate2's names so that one model
//! builder serves both formats: separate Q/K/V projections are fused (K has no bias in
//! Whisper; a zero bias stands in for it).

use std::path::Path;

use weft_kernels::quant::dequantize_row;
use weft_models::tokenizer::Tokenizer;
use weft_models::weights::{SafetensorsFiles, WeightSource};

use crate::error::ModelError;
use crate::model::{read_text, special_tokens, Whisper};
use crate::tensors::{Tensor, TensorSource};

/// Where a checkpoint keeps the encoder's tensors.
#[derive(Clone, Copy, Debug)]
pub struct HfLayout {
    /// Prefix of the encoder's tensors (`model.encoder` in Whisper).
    pub encoder: &'static str,
    /// Name of its final layer norm (`layer_norm` in Whisper, `ln_post` in Qwen2.5-Omni's
    /// audio tower).
    pub encoder_norm: &'static str,
}

/// `openai/whisper-*`'s layout.
pub const WHISPER: HfLayout = HfLayout {
    encoder: "model.encoder",
    encoder_norm: "layer_norm",
};

/// Safetensors files read through weft-models' reader, their tensors served under
/// CTranslate2's names.
pub struct SafetensorsFile<'a> {
    files: Files<'a>,
    layout: HfLayout,
}

/// The files, opened for the encoder-decoder or borrowed from a larger model's loader.
enum Files<'a> {
    Owned(SafetensorsFiles),
    Borrowed(&'a SafetensorsFiles),
}

impl std::ops::Deref for Files<'_> {
    type Target = SafetensorsFiles;

    fn deref(&self) -> &SafetensorsFiles {
        match self {
            Files::Owned(f) => f,
            Files::Borrowed(f) => f,
        }
    }
}

impl SafetensorsFile<'static> {
    pub fn open(path: &Path) -> Result<SafetensorsFile<'static>, ModelError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let files = SafetensorsFiles::open(dir, &[path.to_path_buf()])
            .map_err(|e| ModelError::Safetensors(e.to_string()))?;
        Ok(SafetensorsFile {
            files: Files::Owned(files),
            layout: WHISPER,
        })
    }
}

impl<'a> SafetensorsFile<'a> {
    /// The tensors of `files` (a whole checkpoint, whose encoder is one part) in `layout`.
    pub fn with_layout(files: &'a SafetensorsFiles, layout: HfLayout) -> SafetensorsFile<'a> {
        SafetensorsFile {
            files: Files::Borrowed(files),
            layout,
        }
    }

    /// The tensor stored under `name` (a Hugging Face name), converted to f32.
    fn raw(&self, name: &str) -> Result<Tensor, ModelError> {
        let info = self
            .files
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let mut data = vec![0.0; info.n_elements() as usize];
        dequantize_row(info.ggml_type, self.files.tensor_data(info), &mut data);
        Ok(Tensor {
            shape: info.dims.iter().rev().map(|&d| d as usize).collect(),
            data,
        })
    }

    /// Concatenates tensors along the first axis; `None` parts are zeros shaped like the
    /// first part (K's missing bias).
    fn concat(&self, names: &[Option<String>]) -> Result<Tensor, ModelError> {
        let parts: Vec<Option<Tensor>> = names
            .iter()
            .map(|n| n.as_deref().map(|n| self.raw(n)).transpose())
            .collect::<Result<_, _>>()?;
        let like = parts
            .iter()
            .flatten()
            .next()
            .ok_or_else(|| ModelError::MissingTensor("fused projection".into()))?
            .shape
            .clone();
        let mut shape = like.clone();
        shape[0] = 0;
        let mut data = Vec::new();
        for p in parts {
            match p {
                Some(t) => {
                    shape[0] += t.shape[0];
                    data.extend(t.data);
                }
                None => {
                    shape[0] += like[0];
                    data.extend(std::iter::repeat_n(0.0, like.iter().product()));
                }
            }
        }
        Ok(Tensor { shape, data })
    }
}

/// What a CTranslate2 name stands for in the Hugging Face layout.
enum Mapping {
    One(String),
    Fused(Vec<Option<String>>),
}

fn map_name(ct2: &str, layout: HfLayout) -> Option<Mapping> {
    let fixed = match ct2 {
        "encoder/position_encodings/encodings" => Some("model.encoder.embed_positions.weight"),
        "decoder/position_encodings/encodings" => Some("model.decoder.embed_positions.weight"),
        "decoder/embeddings/weight" => Some("model.decoder.embed_tokens.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(Mapping::One(f.to_string()));
    }
    let leaf = |s: &str| match s {
        "gamma" | "weight" => Some("weight"),
        "beta" | "bias" => Some("bias"),
        _ => None,
    };
    let parts: Vec<&str> = ct2.split('/').collect();
    let side = *parts.first()?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let (root, norm) = match side {
        "encoder" => (layout.encoder.to_string(), layout.encoder_norm),
        _ => ("model.decoder".to_string(), "layer_norm"),
    };
    match parts[1..] {
        [conv @ ("conv1" | "conv2"), l] => {
            Some(Mapping::One(format!("{root}.{conv}.{}", leaf(l)?)))
        }
        ["layer_norm", l] => Some(Mapping::One(format!("{root}.{norm}.{}", leaf(l)?))),
        // Not a CTranslate2 name: Qwen2.5-Omni's audio tower projects the encoder's rows.
        ["projection", l] if side == "encoder" => {
            Some(Mapping::One(format!("{root}.proj.{}", leaf(l)?)))
        }
        [layer, block, module, l] => {
            let i = layer.strip_prefix("layer_")?;
            let p = format!("{root}.layers.{i}");
            let l = leaf(l)?;
            let one = |s: &str| Some(Mapping::One(format!("{p}.{s}.{l}")));
            let proj = |attn: &str, names: &[&str]| {
                Some(Mapping::Fused(
                    names
                        .iter()
                        .map(|n| {
                            (l == "weight" || *n != "k_proj").then(|| format!("{p}.{attn}.{n}.{l}"))
                        })
                        .collect(),
                ))
            };
            match (block, module) {
                ("self_attention", "layer_norm") => one("self_attn_layer_norm"),
                ("self_attention", "linear_0") => {
                    proj("self_attn", &["q_proj", "k_proj", "v_proj"])
                }
                ("self_attention", "linear_1") => one("self_attn.out_proj"),
                ("attention", "layer_norm") => one("encoder_attn_layer_norm"),
                ("attention", "linear_0") => one("encoder_attn.q_proj"),
                ("attention", "linear_1") => proj("encoder_attn", &["k_proj", "v_proj"]),
                ("attention", "linear_2") => one("encoder_attn.out_proj"),
                ("ffn", "layer_norm") => one("final_layer_norm"),
                ("ffn", "linear_0") => one("fc1"),
                ("ffn", "linear_1") => one("fc2"),
                _ => None,
            }
        }
        _ => None,
    }
}

impl TensorSource for SafetensorsFile<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        match map_name(name, self.layout) {
            Some(Mapping::One(n)) => self.raw(&n),
            Some(Mapping::Fused(ns)) => self.concat(&ns),
            None => Err(ModelError::MissingTensor(name.to_string())),
        }
    }

    fn has(&self, name: &str) -> bool {
        match map_name(name, self.layout) {
            Some(Mapping::One(n)) => self.files.tensor(&n).is_some(),
            Some(Mapping::Fused(ns)) => ns.iter().flatten().all(|n| self.files.tensor(n).is_some()),
            None => false,
        }
    }
}

pub fn load(dir: &Path) -> Result<Whisper, ModelError> {
    let weights = dir.join("model.safetensors");
    let file = SafetensorsFile::open(&weights)?;
    let parse = |name: &str| -> Result<serde_json::Value, ModelError> {
        serde_json::from_str(&read_text(&dir.join(name))?)
            .map_err(|e| ModelError::Config(format!("{name}: {e}")))
    };
    let config = parse("config.json")?;
    let generation = if dir.join("generation_config.json").is_file() {
        parse("generation_config.json")?
    } else {
        serde_json::Value::Null
    };
    let ids = |key: &str| -> Vec<u32> {
        generation[key]
            .as_array()
            .or_else(|| config[key].as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64().map(|i| i as u32))
            .collect()
    };
    let n_heads = config["encoder_attention_heads"]
        .as_u64()
        .ok_or_else(|| ModelError::Config("config.json has no encoder_attention_heads".into()))?;
    let tokenizer = Tokenizer::from_hf_json(&read_text(&dir.join("tokenizer.json"))?)?;
    let tokens = special_tokens(
        &tokenizer,
        ids("suppress_tokens"),
        ids("begin_suppress_tokens"),
    )?;
    Whisper::build(&file, n_heads as usize, tokenizer, tokens, weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_hf_layout() {
        let one = |n: &str| match map_name(n, WHISPER) {
            Some(Mapping::One(s)) => s,
            _ => panic!("{n}"),
        };
        assert_eq!(one("encoder/conv2/bias"), "model.encoder.conv2.bias");
        assert_eq!(
            one("decoder/layer_3/attention/linear_2/weight"),
            "model.decoder.layers.3.encoder_attn.out_proj.weight"
        );
        assert_eq!(
            one("encoder/layer_0/ffn/layer_norm/gamma"),
            "model.encoder.layers.0.final_layer_norm.weight"
        );
        let Some(Mapping::Fused(parts)) =
            map_name("encoder/layer_1/self_attention/linear_0/bias", WHISPER)
        else {
            panic!()
        };
        assert_eq!(
            parts,
            vec![
                Some("model.encoder.layers.1.self_attn.q_proj.bias".to_string()),
                None,
                Some("model.encoder.layers.1.self_attn.v_proj.bias".to_string())
            ]
        );
    }
}
