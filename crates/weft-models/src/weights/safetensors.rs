//! Hugging Face safetensors: one `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists. Every file is memory-mapped and its header validated
//! by the `safetensors` crate (offsets inside the file, no overlaps) before any tensor is used.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use weft_kernels::quant::GgmlType;

use super::{TensorInfo, WeightSource};

/// Why a safetensors directory could not be read.
#[derive(thiserror::Error, Debug)]
pub enum SafetensorsError {
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The tensors of one or more safetensors files, as one source. Offsets in [`TensorInfo`] are
/// into the files' concatenation, in the order they were opened.
pub struct SafetensorsFiles {
    dir: PathBuf,
    maps: Vec<Mmap>,
    /// Where each file starts in the concatenation.
    starts: Vec<u64>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

impl SafetensorsFiles {
    /// Opens the weights of the Hugging Face model directory `dir`: the shards named by
    /// `model.safetensors.index.json` when it exists, otherwise `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<SafetensorsFiles, SafetensorsError> {
        let index_path = dir.join(INDEX_FILE);
        let files = if index_path.exists() {
            shard_names(&index_path)?
        } else {
            vec![SINGLE_FILE.to_string()]
        };
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        SafetensorsFiles::open(dir, &paths)
    }

    /// Opens `paths` as one source; `dir` names it in messages.
    pub fn open(dir: &Path, paths: &[PathBuf]) -> Result<SafetensorsFiles, SafetensorsError> {
        let mut files = SafetensorsFiles {
            dir: dir.to_path_buf(),
            maps: Vec::with_capacity(paths.len()),
            starts: Vec::with_capacity(paths.len()),
            tensors: Vec::new(),
            index: HashMap::new(),
        };
        let mut start = 0u64;
        for path in paths {
            let io = |action: &'static str| {
                move |source| SafetensorsError::Io {
                    path: path.clone(),
                    action,
                    source,
                }
            };
            let file = File::open(path).map_err(io("cannot open"))?;
            // SAFETY (memmap2's contract): the mapping is read-only; model files are not
            // expected to change under a running engine (as for GGUF files).
            let map = unsafe { Mmap::map(&file) }.map_err(io("cannot memory-map"))?;
            files.add(path, &map, start)?;
            files.starts.push(start);
            start += map.len() as u64;
            files.maps.push(map);
        }
        Ok(files)
    }

    fn add(&mut self, path: &Path, map: &[u8], start: u64) -> Result<(), SafetensorsError> {
        let invalid = |message: String| SafetensorsError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let st = SafeTensors::deserialize(map).map_err(|e| invalid(e.to_string()))?;
        let base = map.as_ptr() as u64;
        let mut views = st.tensors();
        // Header order is not data order; sort so that the source lists tensors as stored.
        views.sort_by_key(|(_, v)| v.data().as_ptr() as u64);
        for (name, view) in views {
            let ggml_type = match view.dtype() {
                Dtype::F32 => GgmlType::F32,
                Dtype::F16 => GgmlType::F16,
                Dtype::BF16 => GgmlType::BF16,
                other => {
                    return Err(invalid(format!(
                        "tensor '{name}' has dtype {other:?}; weft reads F32, F16 and BF16"
                    )))
                }
            };
            // Row-major shape, outermost first: GGUF's order is the reverse. A scalar is [1].
            let mut dims: Vec<u64> = view.shape().iter().rev().map(|&d| d as u64).collect();
            if dims.is_empty() {
                dims.push(1);
            }
            if self.index.contains_key(&name) {
                return Err(invalid(format!("tensor '{name}' is in more than one file")));
            }
            self.index.insert(name.clone(), self.tensors.len());
            self.tensors.push(TensorInfo {
                name,
                ggml_type,
                dims,
                offset: start + (view.data().as_ptr() as u64 - base),
                size: view.data().len() as u64,
            });
        }
        Ok(())
    }

    /// Renames every tensor with `name_of` (a Hugging Face name to the GGUF one), leaving out
    /// those it maps to `None` (tensors of parts weft does not run). Two tensors with one new
    /// name are an error.
    pub fn rename(
        mut self,
        name_of: impl Fn(&str) -> Option<String>,
    ) -> Result<SafetensorsFiles, SafetensorsError> {
        let mut index = HashMap::with_capacity(self.tensors.len());
        let mut kept = Vec::with_capacity(self.tensors.len());
        for mut t in std::mem::take(&mut self.tensors) {
            let Some(new) = name_of(&t.name) else {
                continue;
            };
            if index.insert(new.clone(), kept.len()).is_some() {
                return Err(SafetensorsError::Invalid {
                    path: self.dir.clone(),
                    message: format!("two tensors map to '{new}' (one is '{}')", t.name),
                });
            }
            t.name = new;
            kept.push(t);
        }
        self.tensors = kept;
        self.index = index;
        Ok(self)
    }
}

/// The distinct shard files of an index, in first-seen order. Names must be plain file names
/// in the directory.
fn shard_names(index_path: &Path) -> Result<Vec<String>, SafetensorsError> {
    let invalid = |message: String| SafetensorsError::Invalid {
        path: index_path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index_path).map_err(|source| SafetensorsError::Io {
        path: index_path.to_path_buf(),
        action: "cannot read",
        source,
    })?;
    let root: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let map = root["weight_map"]
        .as_object()
        .ok_or_else(|| invalid("no weight_map object".into()))?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| invalid("a weight_map value is not a file name".into()))?;
        let plain = Path::new(file).file_name().is_some_and(|n| n == file);
        if !plain || file == ".." {
            return Err(invalid(format!(
                "shard '{file}' is not a file in the directory"
            )));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    if names.is_empty() {
        return Err(invalid("the weight_map is empty".into()));
    }
    Ok(names)
}

impl WeightSource for SafetensorsFiles {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let file = self.starts.partition_point(|&s| s <= info.offset) - 1;
        let local = (info.offset - self.starts[file]) as usize;
        self.maps[file]
            .get(local..local + info.size as usize)
            .unwrap_or_else(|| {
                panic!(
                    "{}: tensor '{}' is not inside its file",
                    self.dir.display(),
                    info.name
                )
            })
    }
}
