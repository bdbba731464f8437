//! Architectures kiln runs, by the name configs give them (HF `model_type`, GGUF
//! `general.architecture`). Adding an architecture: one file plus one line in [`ARCHITECTURES`].

use crate::config::LlamaConfig;
use crate::model::{CausalLm, ModelError};
use crate::weights::Weights;
use kiln_codegen::ir::DType;
use kiln_runtime::Device;

type Build = fn(LlamaConfig, Weights, &Device, DType) -> Result<Box<dyn CausalLm>, ModelError>;

fn llama(c: LlamaConfig, w: Weights, d: &Device, t: DType) -> Result<Box<dyn CausalLm>, ModelError> {
    Ok(Box::new(crate::llama::Llama::new(c, w, d, t)?))
}

/// `(architecture name, constructor)`.
pub const ARCHITECTURES: &[(&str, Build)] = &[("llama", llama), ("mistral", llama)];

pub fn build(cfg: LlamaConfig, w: Weights, dev: &Device, dtype: DType) -> Result<Box<dyn CausalLm>, ModelError> {
    let arch = cfg.architecture.clone();
    match ARCHITECTURES.iter().find(|(name, _)| *name == arch) {
        Some((_, build)) => build(cfg, w, dev, dtype),
        None => Err(ModelError::Unsupported(format!(
            "architecture `{arch}` (supported: {})",
            ARCHITECTURES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))),
    }
}
