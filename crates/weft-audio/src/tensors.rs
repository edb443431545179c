//! The tensors a Whisper model is built from, whatever file they came from. Loaders present
//! them under CTranslate2's names (the packaged model's native layout, with fused QKV); the
//! model is built from this one interface.

use crate::error::ModelError;

/// A dense tensor converted to f32.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Checks the shape and hands the values over.
    pub fn expect(self, name: &str, want: &[usize]) -> Result<Vec<f32>, ModelError> {
        if self.shape != want {
            return Err(ModelError::Shape {
                name: name.to_string(),
                got: self.shape,
                want: want.to_vec(),
            });
        }
        Ok(self.data)
    }
}

/// A file (or set of files) that can produce tensors by their CTranslate2 name.
pub trait TensorSource {
    /// The tensor named `name` (CTranslate2 naming), converted to f32.
    fn tensor(&self, name: &str) -> Result<Tensor, ModelError>;
    /// Whether a tensor of that name exists.
    fn has(&self, name: &str) -> bool;
}

/// Little-endian IEEE half and bfloat16 to f32.
pub fn f16_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

pub fn bf16_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

pub fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
