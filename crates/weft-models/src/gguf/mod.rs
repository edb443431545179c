//! Reading GGUF files (versions 2 and 3, little-endian).
//!
//! [`GgufFile::open`] memory-maps the file, parses the header, the metadata and the tensor
//! infos, and validates all of it up front — value types, lengths, counts, tensor shapes and
//! types, the alignment, and that every tensor's data lies inside the file — so that later
//! accesses cannot fail. Tensor data is never copied: [`GgufFile::tensor_data`] returns a slice
//! of the mapping.
//!
//! The checks follow llama.cpp's `gguf.cpp`, plus a few of weft's own (tensors need at least
//! one dimension and no zero-length dimension, and every tensor type must be one weft
//! implements). Nested arrays, which the GGUF spec allows but ggml does not read, are accepted.

mod error;
mod parse;
mod value;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use error::GgufError;
pub use parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_TENSOR_NAME};
pub use value::{MetaArray, MetaValue};

pub use crate::weights::TensorInfo;

/// A heap buffer whose start is 64-byte aligned, so tensors in a [`GgufFile::from_bytes`] image
/// are as aligned as in a memory-mapped file.
struct AlignedBytes {
    chunks: Vec<Chunk>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

impl AlignedBytes {
    fn copy_from(bytes: &[u8]) -> AlignedBytes {
        let mut chunks = vec![Chunk([0; 64]); bytes.len().div_ceil(64)];
        for (chunk, src) in chunks.iter_mut().zip(bytes.chunks(64)) {
            chunk.0[..src.len()].copy_from_slice(src);
        }
        AlignedBytes {
            chunks,
            len: bytes.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `Chunk` is `repr(C)` around `[u8; 64]`, so the vector's buffer is
        // `chunks.len() * 64` initialized bytes with no padding, and `len` does not exceed that.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr().cast::<u8>(), self.len) }
    }
}

enum Storage {
    Mmap(Mmap),
    Owned(AlignedBytes),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(b) => b.as_slice(),
        }
    }
}

/// An open, fully validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: u32,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("len", &self.len())
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps `path` and parses and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |action: &'static str| {
            move |source| GgufError::Io {
                path: path.to_path_buf(),
                action,
                source,
            }
        };
        let file = File::open(path).map_err(io("cannot open"))?;
        let len = file.metadata().map_err(io("cannot stat"))?.len();
        let storage = if len == 0 {
            // Some platforms refuse zero-length mappings; the parser reports the truncation.
            Storage::Owned(AlignedBytes::copy_from(&[]))
        } else {
            // SAFETY: the mapping is read-only. As with any memory-mapped file, modifying or
            // truncating the file while it is open is undefined behaviour; model files are not
            // expected to change under a running engine.
            Storage::Mmap(unsafe { Mmap::map(&file) }.map_err(io("cannot memory-map"))?)
        };
        GgufFile::from_storage(path.to_path_buf(), storage)
    }

    /// Parses an in-memory GGUF image (copied into an owned, aligned buffer). `name` stands in
    /// for the path in error messages and [`GgufFile::path`].
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<GgufFile, GgufError> {
        GgufFile::from_storage(
            PathBuf::from(name),
            Storage::Owned(AlignedBytes::copy_from(bytes)),
        )
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<GgufFile, GgufError> {
        let parsed = parse::parse(storage.bytes(), &path)?;
        Ok(GgufFile {
            path,
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            metadata_index: parsed.metadata_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
        })
    }

    /// The file's path, or the name given to [`GgufFile::from_bytes`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section and of each tensor (`general.alignment`, default 32).
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// Always false for a file that parsed (it has at least a header).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn type_error(&self, key: &str, expected: &'static str, found: &MetaValue) -> GgufError {
        GgufError::MetadataType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: found.type_name(),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.type_error(key, "string", v)),
        }
    }

    /// An integer value of any GGUF integer type, if it fits in a `u32`.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if !v.is_integer() {
            return Err(self.type_error(key, "u32", v));
        }
        match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(GgufError::MetadataRange {
                path: self.path.clone(),
                key: key.to_string(),
                expected: "u32",
                value: v.to_string(),
            }),
        }
    }

    /// An `f32` value, or an `f64` value rounded to `f32`.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::F32(x)) => Ok(Some(*x)),
            Some(MetaValue::F64(x)) => Ok(Some(*x as f32)),
            Some(v) => Err(self.type_error(key, "f32", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(key, "bool", v)),
        }
    }

    pub fn get_bool_array(&self, key: &str) -> Result<Option<&[bool]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(MetaArray::Bool(a))) => Ok(Some(a)),
            Some(v) => Err(self.type_error(key, "array[bool]", v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(MetaArray::String(a))) => Ok(Some(a)),
            Some(v) => Err(self.type_error(key, "array[string]", v)),
        }
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Option<&[f32]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(MetaArray::F32(a))) => Ok(Some(a)),
            Some(v) => Err(self.type_error(key, "array[f32]", v)),
        }
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Option<&[i32]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(MetaArray::I32(a))) => Ok(Some(a)),
            Some(v) => Err(self.type_error(key, "array[i32]", v)),
        }
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes inside the mapping (validated to be in range when the file was opened).
    ///
    /// # Panics
    /// If `info` does not describe a range of this file (e.g. it came from another file).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let bytes = self.storage.bytes();
        usize::try_from(info.offset)
            .ok()
            .zip(usize::try_from(info.size).ok())
            .and_then(|(start, size)| bytes.get(start..start.checked_add(size)?))
            .unwrap_or_else(|| {
                panic!(
                    "{}: tensor '{}' [offset {}, {} bytes) is not inside this file ({} bytes)",
                    self.path.display(),
                    info.name,
                    info.offset,
                    info.size,
                    bytes.len()
                )
            })
    }
}
