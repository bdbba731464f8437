//! Reading and writing HF safetensors checkpoints as f32 `Weights`.
//!
//! A checkpoint directory holds either `model.safetensors`, or shards listed by
//! `model.safetensors.index.json` (`{"weight_map": {tensor: shard file}}`). Files are
//! memory-mapped; F32/F16/BF16 tensors are widened to f32 (exactly: every f16/bf16 value is an
//! f32 value), other dtypes are errors naming the tensor.
//!
//! Invariants: a shard name from the index must be a plain file name inside the directory (no
//! `..`, no separators); every tensor the index lists must be found in the shard it names;
//! writing goes to a temporary file renamed into place, so a crash never leaves a truncated
//! `model.safetensors` behind.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::gguf::{dequantize, GgmlType};
use crate::weights::{HostTensor, Weights, WeightsError};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl Weights {
    /// Loads every tensor of the HF checkpoint in `dir` (single file or sharded).
    pub fn from_safetensors_dir(dir: &Path) -> Result<Self, WeightsError> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let mut weights = Weights::new(dir.display().to_string());
        if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|err| WeightsError::Io { path: index_path.clone(), err })?;
            let index: Index = serde_json::from_str(&text).map_err(|e| WeightsError::Safetensors {
                path: index_path.clone(),
                reason: format!("invalid index: {e}"),
            })?;
            let shards: BTreeSet<&String> = index.weight_map.values().collect();
            let mut found: HashMap<String, String> = HashMap::new();
            for shard in shards {
                if shard.is_empty() || shard.contains(['/', '\\']) || shard == ".." || shard == "." {
                    return Err(WeightsError::Safetensors {
                        path: index_path.clone(),
                        reason: format!("shard name '{shard}' is not a plain file name"),
                    });
                }
                for name in read_safetensors_file(&dir.join(shard), &mut weights)? {
                    found.insert(name, shard.clone());
                }
            }
            for (tensor, shard) in &index.weight_map {
                if found.get(tensor) != Some(shard) {
                    return Err(WeightsError::Safetensors {
                        path: index_path.clone(),
                        reason: format!("tensor '{tensor}' is listed in shard '{shard}' but not stored there"),
                    });
                }
            }
        } else if single.is_file() {
            read_safetensors_file(&single, &mut weights)?;
        } else {
            return Err(WeightsError::Safetensors {
                path: dir.to_path_buf(),
                reason: format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
            });
        }
        Ok(weights)
    }
}

/// Adds every tensor of one safetensors file to `weights` (as f32); returns their names.
pub fn read_safetensors_file(path: &Path, weights: &mut Weights) -> Result<Vec<String>, WeightsError> {
    let io = |err| WeightsError::Io { path: path.to_path_buf(), err };
    let file = File::open(path).map_err(io)?;
    // Safety: read-only mapping; we assume the checkpoint is not modified while loading.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    let st = SafeTensors::deserialize(&map).map_err(|e| WeightsError::Safetensors {
        path: path.to_path_buf(),
        reason: format!("invalid safetensors file: {e}"),
    })?;
    let mut names = Vec::new();
    for (name, view) in st.iter() {
        let ty = match view.dtype() {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::Bf16,
            other => {
                return Err(WeightsError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    tensor: name.to_owned(),
                    dtype: other.to_string(),
                })
            }
        };
        let shape = view.shape().to_vec();
        let n: usize = shape.iter().product();
        // The raw little-endian layouts of these dtypes are those of the GGML types of the
        // same name, so the GGUF widening kernels apply unchanged.
        let data = dequantize(ty, view.data(), n).map_err(|e| WeightsError::Safetensors {
            path: path.to_path_buf(),
            reason: format!("tensor '{name}': {e}"),
        })?;
        weights.insert(name, HostTensor { shape, data })?;
        names.push(name.to_owned());
    }
    Ok(names)
}

/// A `HostTensor` seen by the safetensors serializer as F32 bytes.
struct F32View<'a>(&'a HostTensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(&self.0.data))
        } else {
            Cow::Owned(self.0.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }

    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

/// Writes all of `weights` as F32 to the safetensors file `path` (with `format: pt` metadata,
/// which transformers expects).
pub fn write_safetensors(path: &Path, weights: &Weights) -> Result<(), WeightsError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".partial-{}", std::process::id()));
    let partial = PathBuf::from(partial);
    let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let result = safetensors::serialize_to_file(weights.iter().map(|(n, t)| (n, F32View(t))), Some(meta), &partial)
        .map_err(|e| WeightsError::Safetensors { path: path.to_path_buf(), reason: format!("cannot write: {e}") })
        .and_then(|()| {
            std::fs::rename(&partial, path).map_err(|err| WeightsError::Io { path: path.to_path_buf(), err })
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial); // best effort: the error above is what matters
    }
    result
}
