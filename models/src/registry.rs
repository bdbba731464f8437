//! Architectures kiln runs, by the names configs give them (HF `model_type`, GGUF
//! `general.architecture`). Adding an architecture: one file (its config checks, tensor
//! names, layers and step; see `llama.rs`) plus one line in [`ARCHITECTURES`].

use crate::arch::{Architecture, Built, Checkpoint};
use crate::model::ModelError;
use kiln_runtime::DType;
use kiln_runtime::Device;

pub const ARCHITECTURES: &[Architecture] = &[
    Architecture { names: &["llama", "mistral"], build: crate::llama::build },
    Architecture { names: &["qwen2"], build: crate::qwen2::build },
    Architecture { names: &["qwen3"], build: crate::qwen3::build },
    Architecture { names: &["qwen3_moe", "qwen3moe"], build: crate::qwen3_moe::build },
    Architecture { names: &["mixtral"], build: crate::mixtral::build },
    Architecture { names: &["falcon"], build: crate::falcon::build },
    Architecture { names: &["phi3"], build: crate::phi3::build },
    Architecture { names: &["gemma2", "gemma3", "gemma3_text"], build: crate::gemma::build },
];

/// The entry that builds architecture `name`.
pub fn find(name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.names.contains(&name))
}

/// Every name the registry knows, for error messages.
pub fn known_names() -> Vec<&'static str> {
    ARCHITECTURES.iter().flat_map(|a| a.names.iter().copied()).collect()
}

/// Build the model of `ckpt` with the entry its architecture names; then fail on any tensor
/// of the checkpoint the entry did not consume.
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let arch = ckpt.architecture().map_err(|e| ModelError::Load(e.to_string()))?;
    let Some(entry) = find(&arch) else {
        return Err(ModelError::Unsupported(format!(
            "architecture `{arch}` (supported: {})",
            known_names().join(", ")
        )));
    };
    let built = (entry.build)(ckpt, dev, dtype)?;
    built.weights.check_all_used().map_err(|e| ModelError::Load(e.to_string()))?;
    Ok(built)
}
