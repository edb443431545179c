//! Reader for CTranslate2's `model.bin` (binary version 6, as written by
//! `ctranslate2.specs.ModelSpec.save`):
//!
//! ```text
//! u32 version | str spec_name | u32 revision | u32 n_vars
//! n_vars x { str name | u8 rank | rank x u32 dim | u8 dtype | u32 n_bytes | bytes }
//! u32 n_aliases | n_aliases x { str alias | str target }
//! str = u16 length (including a trailing NUL) | bytes | NUL
//! ```
//! dtype ids: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. The file is memory-mapped (or, from
//! [`Ct2Model::from_bytes`], copied); values are converted to f32 only when a tensor is asked
//! for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::ModelError;
use crate::tensors::{bf16_to_f32, f16_to_f32, le_f32, Tensor, TensorSource};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl DType {
    fn from_id(id: u8) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::Bf16,
            _ => return None,
        })
    }
    fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::Bf16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }
}

struct Entry {
    shape: Vec<usize>,
    dtype: DType,
    offset: usize,
    len: usize,
}

/// The file's bytes: mapped, or a copy of a buffer.
enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(b) => b,
        }
    }
}

pub struct Ct2Model {
    path: PathBuf,
    map: Storage,
    pub spec: String,
    pub revision: u32,
    entries: HashMap<String, Entry>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("unexpected end of file at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

impl Ct2Model {
    pub fn open(path: &Path) -> Result<Ct2Model, ModelError> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY (memmap2 contract): the model file is not modified while it is mapped; weft
        // only reads model files it was pointed at.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ct2Model::parse(Storage::Mmap(map), path)
    }

    /// Parses a `model.bin` image held in memory (copied); `path` only names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Ct2Model, ModelError> {
        Ct2Model::parse(Storage::Owned(bytes.to_vec()), path)
    }

    fn parse(map: Storage, path: &Path) -> Result<Ct2Model, ModelError> {
        let bad = |msg: String| ModelError::Ct2Format {
            path: path.to_path_buf(),
            msg,
        };
        let mut c = Cursor { buf: &map, pos: 0 };
        let version = c.u32().map_err(bad)?;
        if !(5..=6).contains(&version) {
            return Err(bad(format!("binary version {version} (supported: 5, 6)")));
        }
        let spec = c.string().map_err(bad)?;
        let revision = c.u32().map_err(bad)?;
        let n = c.u32().map_err(bad)? as usize;
        let mut entries = HashMap::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let name = c.string().map_err(bad)?;
            let rank = c.u8().map_err(bad)? as usize;
            let shape = (0..rank)
                .map(|_| c.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            let id = c.u8().map_err(bad)?;
            let dtype =
                DType::from_id(id).ok_or_else(|| bad(format!("{name}: unknown dtype id {id}")))?;
            let len = c.u32().map_err(bad)? as usize;
            let bytes = shape
                .iter()
                .try_fold(dtype.size(), |n, &d| n.checked_mul(d));
            if bytes != Some(len) {
                return Err(bad(format!(
                    "{name}: {len} bytes for shape {shape:?} of {dtype:?}"
                )));
            }
            let offset = c.pos;
            c.take(len).map_err(bad)?;
            entries.insert(
                name,
                Entry {
                    shape,
                    dtype,
                    offset,
                    len,
                },
            );
        }
        let aliases = c.u32().map_err(bad)?;
        for _ in 0..aliases {
            let alias = c.string().map_err(bad)?;
            let target = c.string().map_err(bad)?;
            let e = entries
                .get(&target)
                .ok_or_else(|| bad(format!("alias {alias} -> missing {target}")))?;
            let copy = Entry {
                shape: e.shape.clone(),
                dtype: e.dtype,
                offset: e.offset,
                len: e.len,
            };
            entries.insert(alias, copy);
        }
        Ok(Ct2Model {
            path: path.to_path_buf(),
            map,
            spec,
            revision,
            entries,
        })
    }

    /// An integer scalar (such as `encoder/num_heads`).
    pub fn scalar_int(&self, name: &str) -> Result<i64, ModelError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let b = &self.map[e.offset..e.offset + e.len];
        Ok(match e.dtype {
            DType::I8 if e.len == 1 => b[0] as i8 as i64,
            DType::I16 if e.len == 2 => i16::from_le_bytes([b[0], b[1]]) as i64,
            DType::I32 if e.len == 4 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => {
                return Err(ModelError::DType {
                    name: name.to_string(),
                    dtype: format!(
                        "{:?} of {} bytes (expected an integer scalar)",
                        e.dtype, e.len
                    ),
                })
            }
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of every variable (aliases included), with their shapes.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.entries
            .iter()
            .map(|(name, e)| (name.as_str(), e.shape.as_slice()))
    }
}

impl TensorSource for Ct2Model {
    fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let bytes = &self.map[e.offset..e.offset + e.len];
        let data = match e.dtype {
            DType::F32 => le_f32(bytes),
            DType::F16 => f16_to_f32(bytes),
            DType::Bf16 => bf16_to_f32(bytes),
            other => {
                // int8/int16 weights come with scales (quantized conversions); those models
                // are not supported: convert with --quantization float16 or float32.
                return Err(ModelError::DType {
                    name: name.to_string(),
                    dtype: format!("{other:?} (quantized CTranslate2 models are not supported)"),
                });
            }
        };
        Ok(Tensor {
            shape: e.shape.clone(),
            data,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}
