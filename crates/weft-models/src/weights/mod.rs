//! Where a model's tensors come from. A [`WeightSource`] names tensors the way GGUF does
//! (`blk.0.attn_q.weight`, dimensions innermost first) and hands out their bytes in one of the
//! GGML types, without copying: a GGUF file (`GgufFile`) or a Hugging Face directory of
//! safetensors ([`SafetensorsFiles`], renamed by the architecture's name map). Architectures
//! are built from this interface only, so a model loads the same from either format.

mod safetensors;

use std::path::Path;

pub use safetensors::{SafetensorsError, SafetensorsFiles};
use weft_kernels::quant::GgmlType;

use crate::gguf::GgufFile;

/// One tensor: its name, type, shape and where its bytes are in the source.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// `ne[0]` first: `dims[0]` is the innermost dimension, the length of a row.
    pub dims: Vec<u64>,
    /// Byte offset of the tensor's data in its source (for a set of files, in their
    /// concatenation).
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Product of all dimensions.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> usize {
        self.dims[0] as usize
    }

    /// Number of rows: the product of all dimensions but the first.
    pub fn n_rows(&self) -> usize {
        self.dims[1..].iter().product::<u64>() as usize
    }
}

/// A validated set of tensors, looked up by their GGUF names.
pub trait WeightSource: Send + Sync {
    /// The file or directory the tensors come from (for messages).
    fn path(&self) -> &Path;
    fn tensors(&self) -> &[TensorInfo];
    fn tensor(&self, name: &str) -> Option<&TensorInfo>;
    /// The tensor's bytes (validated to be in range when the source was opened).
    ///
    /// # Panics
    /// If `info` is not one of this source's tensors.
    fn tensor_data(&self, info: &TensorInfo) -> &[u8];
}

impl WeightSource for GgufFile {
    fn path(&self) -> &Path {
        GgufFile::path(self)
    }

    fn tensors(&self) -> &[TensorInfo] {
        GgufFile::tensors(self)
    }

    fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        GgufFile::tensor(self, name)
    }

    fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        GgufFile::tensor_data(self, info)
    }
}
