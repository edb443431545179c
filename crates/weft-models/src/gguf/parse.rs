//! The GGUF header parser: magic, version, counts, metadata, tensor infos, data layout.
//!
//! Every read is bounds-checked against the bytes that remain, and every length or count is
//! checked against the remaining bytes *before* anything is allocated, so a corrupt or
//! hostile file produces a [`GgufError`], never a panic or an oversized allocation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use weft_kernels::quant::GgmlType;

use super::{GgufError, MetaArray, MetaValue, TensorInfo};

/// The alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The key that overrides [`DEFAULT_ALIGNMENT`]; it must hold a `u32`, like in llama.cpp.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// ggml's `GGML_MAX_NAME`: tensor names must be shorter than this (in bytes).
pub const MAX_TENSOR_NAME: usize = 64;
/// How deeply arrays may nest (arrays of arrays of ...), to bound recursion.
pub const MAX_ARRAY_DEPTH: usize = 16;

// GGUF metadata value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// The smallest number of bytes one encoded element of value type `ty` can occupy, or `None`
/// for an unknown type. Used to reject counts that cannot fit in the remaining bytes before
/// allocating for them.
fn min_encoded_size(ty: u32) -> Option<u64> {
    Some(match ty {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        T_STRING => 8,    // u64 length
        T_ARRAY => 4 + 8, // u32 element type + u64 count
        _ => return None,
    })
}

/// Upper bound on what is preallocated for a count read from the file; the vectors grow past it
/// only as real entries are parsed.
const PREALLOC_LIMIT: usize = 4096;

/// Everything the header says, with tensor offsets made absolute and validated.
pub(super) struct Parsed {
    pub version: u32,
    pub alignment: u32,
    pub data_offset: u64,
    pub metadata: Vec<(String, MetaValue)>,
    pub metadata_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    fn malformed(&self, context: impl Into<String>, problem: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            path: self.path(),
            context: context.into(),
            problem: problem.into(),
        }
    }

    fn tensor_err(&self, tensor: &str, problem: impl Into<String>) -> GgufError {
        GgufError::Tensor {
            path: self.path(),
            tensor: tensor.to_string(),
            problem: problem.into(),
        }
    }

    /// Takes `n` bytes, or fails with a truncation error describing `what` was being read.
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let available = self.remaining();
        if n > available as u64 {
            return Err(GgufError::Truncated {
                path: self.path(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: available as u64,
            });
        }
        let n = n as usize;
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads a GGUF string (u64 length + bytes) as raw bytes. The length is checked against
    /// the remaining bytes before anything is copied.
    fn raw_string(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        self.take(len, what)
    }

    /// Reads a GGUF string that must be UTF-8.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let at = self.pos;
        let bytes = self.raw_string(what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(self.malformed(
                what(),
                format!("string at byte {at} is not valid UTF-8 ({e})"),
            )),
        }
    }

    /// Checks that `count` elements of value type `ty` can possibly fit in the remaining bytes.
    fn check_count(&self, count: u64, ty: u32, what: &dyn Fn() -> String) -> Result<(), GgufError> {
        let min = min_encoded_size(ty).expect("value type checked by caller");
        let needed = count.checked_mul(min);
        match needed {
            Some(needed) if needed <= self.remaining() as u64 => Ok(()),
            _ => Err(self.malformed(
                what(),
                format!(
                    "array of {count} {} elements needs at least {} bytes, but only {} remain",
                    type_name(ty),
                    needed.map_or_else(|| "2^64 or more".to_string(), |n| n.to_string()),
                    self.remaining()
                ),
            )),
        }
    }

    /// Reads `count` fixed-size little-endian elements.
    fn fixed_vec<T, const N: usize>(
        &mut self,
        count: u64,
        what: &dyn Fn() -> String,
        convert: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, GgufError> {
        let bytes = self.take(count.saturating_mul(N as u64), what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                convert(a)
            })
            .collect())
    }

    fn scalar(&mut self, ty: u32, what: &dyn Fn() -> String) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            T_U8 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            T_I8 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            T_U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            T_I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            T_U32 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            T_I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            T_U64 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            T_I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            T_F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            T_F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            // Like ggml: any non-zero byte is true.
            T_BOOL => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            T_STRING => MetaValue::String(self.string(what)?),
            T_ARRAY => MetaValue::Array(self.array_value(what, 1)?),
            other => return Err(self.malformed(what(), format!("unknown value type {other}"))),
        })
    }

    /// Reads an array (element type, count, elements); `depth` is 1 for a top-level array.
    fn array_value(
        &mut self,
        what: &dyn Fn() -> String,
        depth: usize,
    ) -> Result<MetaArray, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.malformed(
                what(),
                format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
            ));
        }
        let ty = self.u32(&|| format!("array element type of {}", what()))?;
        if min_encoded_size(ty).is_none() {
            return Err(self.malformed(what(), format!("unknown array element type {ty}")));
        }
        let count = self.u64(&|| format!("array length of {}", what()))?;
        self.check_count(count, ty, what)?;
        let elements = || format!("elements of {}", what());
        Ok(match ty {
            T_U8 => MetaArray::U8(self.fixed_vec(count, &elements, u8::from_le_bytes)?),
            T_I8 => MetaArray::I8(self.fixed_vec(count, &elements, i8::from_le_bytes)?),
            T_U16 => MetaArray::U16(self.fixed_vec(count, &elements, u16::from_le_bytes)?),
            T_I16 => MetaArray::I16(self.fixed_vec(count, &elements, i16::from_le_bytes)?),
            T_U32 => MetaArray::U32(self.fixed_vec(count, &elements, u32::from_le_bytes)?),
            T_I32 => MetaArray::I32(self.fixed_vec(count, &elements, i32::from_le_bytes)?),
            T_U64 => MetaArray::U64(self.fixed_vec(count, &elements, u64::from_le_bytes)?),
            T_I64 => MetaArray::I64(self.fixed_vec(count, &elements, i64::from_le_bytes)?),
            T_F32 => MetaArray::F32(self.fixed_vec(count, &elements, f32::from_le_bytes)?),
            T_F64 => MetaArray::F64(self.fixed_vec(count, &elements, f64::from_le_bytes)?),
            T_BOOL => MetaArray::Bool(self.fixed_vec(count, &elements, |[b]: [u8; 1]| b != 0)?),
            T_STRING => {
                // check_count guarantees count * 8 <= remaining, so this allocation is bounded.
                let mut v = Vec::with_capacity(count as usize);
                for i in 0..count {
                    v.push(self.string(&|| format!("element {i} of {}", what()))?);
                }
                MetaArray::String(v)
            }
            T_ARRAY => {
                let mut v = Vec::with_capacity((count as usize).min(PREALLOC_LIMIT));
                for i in 0..count {
                    v.push(self.array_value(&|| format!("element {i} of {}", what()), depth + 1)?);
                }
                MetaArray::Array(v)
            }
            _ => unreachable!("element type checked above"),
        })
    }
}

fn type_name(ty: u32) -> &'static str {
    match ty {
        T_U8 => "u8",
        T_I8 => "i8",
        T_U16 => "u16",
        T_I16 => "i16",
        T_U32 => "u32",
        T_I32 => "i32",
        T_F32 => "f32",
        T_BOOL => "bool",
        T_STRING => "string",
        T_ARRAY => "array",
        T_U64 => "u64",
        T_I64 => "i64",
        T_F64 => "f64",
        _ => "unknown",
    }
}

fn describe_magic(m: &[u8]) -> String {
    let text: String = m
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect();
    let hex: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{text}\" ({})", hex.join(" "))
}

/// Parses and validates a whole GGUF image. `data` is the entire file.
pub(super) fn parse(data: &[u8], path: &Path) -> Result<Parsed, GgufError> {
    let mut c = Cursor { data, pos: 0, path };
    let file_len = data.len() as u64;

    // Magic.
    let magic = c.take(4, &|| "magic".to_string())?;
    if magic != b"GGUF" {
        return Err(GgufError::BadMagic {
            path: c.path(),
            found: describe_magic(magic),
        });
    }

    // Version.
    let version = c.u32(&|| "GGUF version".to_string())?;
    let reason = match version {
        2 | 3 => None,
        0 => Some("not a valid version"),
        1 => Some("GGUF v1 is no longer supported (as in llama.cpp); re-convert the model"),
        v if v & 0xffff == 0 => {
            Some("the file looks big-endian; only little-endian GGUF files are supported")
        }
        _ => Some("only versions 2 and 3 are supported"),
    };
    if let Some(reason) = reason {
        return Err(GgufError::UnsupportedVersion {
            path: c.path(),
            version,
            reason,
        });
    }

    // Counts. Each metadata entry takes at least 8 (key length) + 1 (key) + 4 (type) + 1
    // (smallest value) bytes; each tensor info at least 8 (name length) + 4 (n_dims) + 8 (one
    // dim) + 4 (type) + 8 (offset). Anything larger than the file could hold is rejected.
    let n_tensors = c.u64(&|| "tensor count".to_string())?;
    let n_kv = c.u64(&|| "metadata count".to_string())?;
    let rest = c.remaining() as u64;
    if n_kv > rest / 14 {
        return Err(c.malformed(
            "header",
            format!("metadata count {n_kv} is impossible: the rest of the file ({rest} bytes) holds at most {}; the file is corrupt or truncated", rest / 14),
        ));
    }
    if n_tensors > rest / 32 {
        return Err(c.malformed(
            "header",
            format!("tensor count {n_tensors} is impossible: the rest of the file ({rest} bytes) holds at most {}; the file is corrupt or truncated", rest / 32),
        ));
    }

    // Metadata.
    let mut metadata: Vec<(String, MetaValue)> =
        Vec::with_capacity((n_kv as usize).min(PREALLOC_LIMIT));
    let mut metadata_index: HashMap<String, usize> =
        HashMap::with_capacity((n_kv as usize).min(PREALLOC_LIMIT));
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        if key.is_empty() {
            return Err(c.malformed(format!("metadata entry {i}"), "empty key"));
        }
        if metadata_index.contains_key(&key) {
            return Err(c.malformed(format!("metadata key '{key}'"), "duplicate key"));
        }
        let what = || format!("metadata key '{key}'");
        let ty = c.u32(&|| format!("value type of {}", what()))?;
        let value = c.scalar(ty, &what)?;
        metadata_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    // Alignment.
    let alignment = match metadata_index.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) => *a,
        Some(other) => {
            return Err(c.malformed(
                format!("metadata key '{ALIGNMENT_KEY}'"),
                format!("must have type u32, found {}", other.type_name()),
            ))
        }
    };
    if !alignment.is_power_of_two() {
        return Err(c.malformed(
            format!("metadata key '{ALIGNMENT_KEY}'"),
            format!("alignment {alignment} is not a non-zero power of two"),
        ));
    }
    let align = u64::from(alignment);

    // Tensor infos: name, n_dims, dims, type, offset (relative to the data section).
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity((n_tensors as usize).min(PREALLOC_LIMIT));
    let mut tensor_index: HashMap<String, usize> =
        HashMap::with_capacity((n_tensors as usize).min(PREALLOC_LIMIT));
    let mut relative_offsets: Vec<u64> =
        Vec::with_capacity((n_tensors as usize).min(PREALLOC_LIMIT));
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor {i}"))?;
        if name.len() >= MAX_TENSOR_NAME {
            return Err(c.tensor_err(
                &name,
                format!(
                    "name is {} bytes long; ggml allows at most {}",
                    name.len(),
                    MAX_TENSOR_NAME - 1
                ),
            ));
        }
        if tensor_index.contains_key(&name) {
            return Err(c.tensor_err(&name, "duplicate tensor name"));
        }
        let what = |field: &str| format!("{field} of tensor '{name}'");

        let n_dims = c.u32(&|| what("dimension count"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(c.tensor_err(
                &name,
                format!("has {n_dims} dimensions; between 1 and {MAX_DIMS} are supported"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let ne = c.u64(&|| what(&format!("dimension {d}")))?;
            if ne == 0 {
                return Err(c.tensor_err(&name, format!("dimension {d} is zero")));
            }
            if ne > i64::MAX as u64 {
                return Err(c.tensor_err(
                    &name,
                    format!("dimension {d} is {ne}, larger than 2^63 - 1"),
                ));
            }
            dims.push(ne);
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64);
        let Some(n_elements) = n_elements else {
            return Err(c.tensor_err(
                &name,
                format!("shape {dims:?} has more than 2^63 - 1 elements"),
            ));
        };

        let type_id = c.u32(&|| what("type"))?;
        let Some(ggml_type) = GgmlType::from_ggml_id(type_id) else {
            return Err(GgufError::UnsupportedTensorType {
                path: c.path(),
                tensor: name,
                id: type_id,
            });
        };
        let row_len = dims[0];
        if row_len % ggml_type.block_len() as u64 != 0 {
            return Err(c.tensor_err(
                &name,
                format!(
                    "row length {row_len} is not a multiple of the {} block length {}",
                    ggml_type.name(),
                    ggml_type.block_len()
                ),
            ));
        }
        let row_bytes = usize::try_from(row_len)
            .ok()
            .and_then(|n| ggml_type.row_bytes(n));
        let size = row_bytes.and_then(|rb| (rb as u64).checked_mul(n_elements / row_len));
        let Some(size) = size.filter(|&s| usize::try_from(s).is_ok()) else {
            return Err(c.tensor_err(
                &name,
                format!(
                    "shape {dims:?} of type {} is too large to address",
                    ggml_type.name()
                ),
            ));
        };

        let offset = c.u64(&|| what("data offset"))?;

        tensor_index.insert(name.clone(), tensors.len());
        relative_offsets.push(offset);
        tensors.push(TensorInfo {
            name,
            ggml_type,
            dims,
            offset: 0, // made absolute below, once the data section's start is known
            size,
        });
    }

    // The data section starts at the next multiple of the alignment after the tensor infos.
    let data_offset = (c.pos as u64).next_multiple_of(align);

    // Tensor data. Like llama.cpp, require each tensor to start where the previous one ended,
    // rounded up to the alignment: this also rules out overlapping tensors.
    let mut expected = 0u64;
    for (t, &rel) in tensors.iter_mut().zip(&relative_offsets) {
        let err = |problem: String| GgufError::Tensor {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            problem,
        };
        if rel % align != 0 {
            return Err(err(format!(
                "data offset {rel} is not a multiple of the alignment {alignment}"
            )));
        }
        if rel != expected {
            return Err(err(format!(
                "data offset {rel} should be {expected} (tensors must be stored in order, each padded to the alignment {alignment})"
            )));
        }
        let start = data_offset.checked_add(rel);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => t.offset = start,
            _ => {
                return Err(err(format!(
                    "data [offset {}, {} bytes) runs past end of file ({file_len} bytes)",
                    data_offset as u128 + rel as u128,
                    t.size
                )))
            }
        }
        // Cannot overflow: end <= file_len, and padding adds less than the alignment (<= 2^31).
        expected = (rel + t.size).next_multiple_of(align);
    }

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        metadata_index,
        tensors,
        tensor_index,
    })
}
