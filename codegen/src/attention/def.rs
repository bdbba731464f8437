//! What an attention `#[fused]` fn becomes at run time: an [`AttnDef`] with one [`AttnSpec`]
//! per storage dtype, filled by the macro with compile-time constants (the lowered kernel as
//! JSON and the CUDA source); [`AttnDef::compiled`] parses a spec once, so the CPU path, the
//! CUDA launcher and the `kernels-generated/` writer read the same kernel.
//!
//! Invariant: for every spec, `compile_attention(ir).cuda == spec.cuda` (checked by the
//! freshness test in CI).

use super::{compile_attention, AttnKernel, CompiledAttn};
use crate::ir::DType;
use std::sync::OnceLock;

#[derive(Debug)]
pub struct AttnSpec {
    pub dtype: DType,
    /// The [`AttnKernel`] (score modifier lowered), serialised with serde_json.
    pub ir_json: &'static str,
    /// The CUDA C source of the template instance (every entry point).
    pub cuda: &'static str,
}

#[derive(Debug)]
pub struct AttnDef {
    pub name: &'static str,
    pub source: &'static str,
    pub specs: &'static [AttnSpec],
    /// Parsed kernels, filled on first use (same order as `specs`).
    pub cache: &'static [OnceLock<Result<CompiledAttn, String>>],
}

#[derive(Debug, thiserror::Error)]
pub enum AttnDefError {
    #[error("attention `{name}` has no {dtype} specialisation")]
    NoSpec { name: &'static str, dtype: DType },
    #[error("attention `{name}` ({dtype}): embedded kernel is invalid: {msg}")]
    BadIr { name: &'static str, dtype: DType, msg: String },
}

impl AttnDef {
    pub fn spec(&self, dtype: DType) -> Option<(usize, &'static AttnSpec)> {
        self.specs.iter().enumerate().find(|(_, s)| s.dtype == dtype)
    }

    /// The lowered kernel of a specialisation (parsed once, then cached).
    pub fn compiled(&self, dtype: DType) -> Result<&CompiledAttn, AttnDefError> {
        let (i, spec) = self.spec(dtype).ok_or(AttnDefError::NoSpec { name: self.name, dtype })?;
        let slot = self.cache[i].get_or_init(|| {
            let k: AttnKernel = serde_json::from_str(spec.ir_json).map_err(|e| e.to_string())?;
            compile_attention(k).map_err(|e| e.to_string())
        });
        slot.as_ref().map_err(|msg| AttnDefError::BadIr { name: self.name, dtype, msg: msg.clone() })
    }

    /// Every specialisation (for the kernels-generated writer and the compile tests).
    pub fn all(&self) -> Result<Vec<&CompiledAttn>, AttnDefError> {
        self.specs.iter().map(|s| self.compiled(s.dtype)).collect()
    }
}
