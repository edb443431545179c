//! What the vision towers share: their error, and where their tensors come from (a Hugging
//! Face checkpoint, or llama.cpp's mmproj file through a name map of its own).

use weft_kernels::quant::dequantize_row;
use weft_models::weights::WeightSource;

/// Why a tower could not be built.
#[derive(thiserror::Error, Debug)]
pub enum TowerError {
    #[error("vision tower: {0}")]
    Config(String),
    #[error("vision tower: tensor '{0}' is missing")]
    MissingTensor(String),
    #[error("vision tower: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
}

/// Where a tower's tensors come from: the f32 values of the tensor a Hugging Face checkpoint
/// calls `{prefix}{name}` (the prefix is the tower's: `visual.` for Qwen2.5-VL, none for
/// Gemma 3, whose names start at `vision_tower.`), checked to have `shape` (outermost
/// dimension first).
pub trait TowerWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, TowerError>;
}

/// A Hugging Face checkpoint's tensors under the first of `prefixes` that holds `probe`
/// (released checkpoints and transformers 5's `save_pretrained`, which adds `model.`, name
/// them differently).
pub struct HfTowerWeights<'a> {
    weights: &'a dyn WeightSource,
    prefix: &'static str,
}

impl<'a> HfTowerWeights<'a> {
    pub fn new(
        weights: &'a dyn WeightSource,
        prefixes: &[&'static str],
        probe: &str,
    ) -> Result<Self, TowerError> {
        let prefix = prefixes
            .iter()
            .copied()
            .find(|p| weights.tensor(&format!("{p}{probe}")).is_some())
            .ok_or_else(|| TowerError::MissingTensor(format!("{}{probe}", prefixes[0])))?;
        Ok(HfTowerWeights { weights, prefix })
    }
}

impl TowerWeights for HfTowerWeights<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, TowerError> {
        read_f32(self.weights, &format!("{}{name}", self.prefix), shape)
    }
}

/// Tensor `name` of `weights` as f32 values, checked to have `shape`.
pub fn read_f32(
    weights: &dyn WeightSource,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, TowerError> {
    let info = weights
        .tensor(name)
        .ok_or_else(|| TowerError::MissingTensor(name.to_owned()))?;
    let dims: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
    if dims != shape {
        return Err(TowerError::Shape {
            name: name.to_owned(),
            found: dims,
            expected: shape.to_vec(),
        });
    }
    let mut out = vec![0.0f32; shape.iter().product()];
    dequantize_row(info.ggml_type, weights.tensor_data(info), &mut out);
    Ok(out)
}
