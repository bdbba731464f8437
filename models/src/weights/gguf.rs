//! Loading the eager `Weights` of a Llama-architecture GGUF file (`kiln convert`, tests):
//! llama.cpp tensor names -> HF names (the Llama entry's [`GgufNaming`]), dequantization to
//! f32, GGUF dims (innermost first) -> HF row-major shapes, and undoing the Q/K row permutation.
//!
//! Invariant: every tensor of the file is either mapped or reported (`UnknownTensor`); nothing
//! is dropped silently, because a dropped tensor would change the model's output unnoticed.

use std::borrow::Cow;
use std::path::Path;

use crate::config::LlamaConfig;
use crate::gguf::GgufFile;

use super::{GgufNaming, HostTensor, StoredFormat, StoredTensor, Weights, WeightsError};

/// The HF name of a llama.cpp tensor name of the Llama architecture (`blk.3.attn_q.weight`
/// -> `model.layers.3.self_attn.q_proj.weight`), or `None` if kiln has no mapping for it.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    GgufNaming::hf_order(&crate::llama::GGUF_BLOCKS).hf_name(name)
}

impl Weights {
    /// Dequantizes every tensor of `file` to f32 under its HF name, then checks the set
    /// against `config` (`validate_llama`).
    pub fn from_gguf(file: &GgufFile, config: &LlamaConfig) -> Result<Self, WeightsError> {
        let source_name = file.path().display().to_string();
        let naming = crate::llama::gguf_naming(config);
        let mut weights = Weights::new(source_name.clone());
        for info in file.tensors() {
            let Some(hf_name) = naming.hf_name(&info.name) else {
                return Err(WeightsError::UnknownTensor { source_name, tensor: info.name.clone() });
            };
            // The tensor as a `WeightSource` hands it out: its dequantization and Q/K
            // un-permutation are the ones models load with.
            let stored = StoredTensor {
                name: hf_name.clone(),
                shape: info.hf_shape(),
                format: StoredFormat::Ggml(info.ggml_type),
                bytes: Cow::Borrowed(file.tensor_bytes(info)?),
                permuted_heads: naming.permuted_heads(&info.name),
                owner: None,
            };
            let data = stored.to_f32().map_err(|e| e.in_source(&source_name))?;
            // Shape and data agree by construction: n_elements is the product of the dims.
            weights.insert(hf_name, HostTensor { shape: stored.shape, data })?;
        }
        weights.validate_llama(config)?;
        Ok(weights)
    }
}

/// Opens a GGUF file and loads its config and weights.
pub fn load_gguf(path: &Path) -> Result<(LlamaConfig, Weights), WeightsError> {
    let file = GgufFile::open(path)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let weights = Weights::from_gguf(&file, &config)?;
    Ok((config, weights))
}
