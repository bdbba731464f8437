//! What a `#[fused]` function becomes at run time: a [`FusedDef`] with one [`FusedSpec`] per
//! storage dtype. The macro fills these with compile-time constants (the lowered IR as JSON
//! and the CUDA source); [`FusedDef::compiled`] parses the IR once per dtype and re-derives the
//! schedule, so the CPU backend, the CUDA launcher and the `kernels-generated/` writer all read
//! the same kernel.
//!
//! Invariant: for every spec, `compile(ir).cuda == spec.cuda` (the runtime checks it in debug
//! builds; the freshness test checks it in CI).

use crate::compile::{compile, CompileError, Compiled};
use crate::ir::{DType, Kernel};
use std::sync::OnceLock;

/// One specialisation, as compile-time constants.
#[derive(Debug)]
pub struct FusedSpec {
    pub dtype: DType,
    /// The lowered kernel, serialised with serde_json.
    pub ir_json: &'static str,
    /// The emitted CUDA C source (both entry points).
    pub cuda: &'static str,
}

/// A `#[fused]` function: its name, where it is written, and its specialisations.
#[derive(Debug)]
pub struct FusedDef {
    pub name: &'static str,
    pub source: &'static str,
    pub specs: &'static [FusedSpec],
    /// Parsed and scheduled kernels, filled on first use (same order as `specs`).
    pub cache: &'static [OnceLock<Result<Compiled, String>>],
}

#[derive(Debug, thiserror::Error)]
pub enum FusedError {
    #[error("kernel `{name}` has no {dtype} specialisation")]
    NoSpec { name: &'static str, dtype: DType },
    #[error("kernel `{name}` ({dtype}): embedded IR is invalid: {msg}")]
    BadIr { name: &'static str, dtype: DType, msg: String },
}

impl FusedDef {
    pub fn spec(&self, dtype: DType) -> Option<(usize, &'static FusedSpec)> {
        self.specs.iter().enumerate().find(|(_, s)| s.dtype == dtype)
    }

    /// The lowered, scheduled kernel of a specialisation (parsed once, then cached).
    pub fn compiled(&self, dtype: DType) -> Result<&Compiled, FusedError> {
        let (i, spec) = self.spec(dtype).ok_or(FusedError::NoSpec { name: self.name, dtype })?;
        let slot = self.cache[i].get_or_init(|| {
            let k: Kernel = serde_json::from_str(spec.ir_json).map_err(|e| e.to_string())?;
            compile(k).map_err(|e: CompileError| e.to_string())
        });
        slot.as_ref().map_err(|msg| FusedError::BadIr { name: self.name, dtype, msg: msg.clone() })
    }

    /// Every specialisation's kernel (for the kernels-generated writer and the compile tests).
    pub fn all(&self) -> Result<Vec<&Compiled>, FusedError> {
        self.specs.iter().map(|s| self.compiled(s.dtype)).collect()
    }
}
