//! Reading and writing HF safetensors checkpoints as f32 `Weights`.
//!
//! A checkpoint directory holds either `model.safetensors`, or shards listed by
//! `model.safetensors.index.json` (`{"weight_map": {tensor: shard file}}`). Reading goes
//! through [`WeightSource::open_safetensors_dir`], which keeps the layout rules (a shard name
//! is a plain file name inside the directory; every tensor the index lists is in the shard it
//! names; F32/F16/BF16 only, other dtypes are errors naming the tensor); f16/bf16 widen to f32
//! exactly.
//!
//! Invariant: writing goes to a temporary file renamed into place, so a crash never leaves a truncated
//! `model.safetensors` behind.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};

use crate::weights::{HostTensor, WeightSource, Weights, WeightsError};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

impl Weights {
    /// Loads every tensor of the HF checkpoint in `dir` (single file or sharded) as f32,
    /// through the lazy [`WeightSource`] (which validates the index, shards and dtypes).
    pub fn from_safetensors_dir(dir: &Path) -> Result<Self, WeightsError> {
        let src = WeightSource::open_safetensors_dir(dir)?;
        let mut weights = Weights::new(dir.display().to_string());
        for name in src.names() {
            weights.insert(name, src.f32(name)?)?;
        }
        Ok(weights)
    }
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
