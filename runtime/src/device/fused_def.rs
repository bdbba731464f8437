//! [`leak_def`]: a [`FusedDef`] built at run time from IR kernels, for tests and tools that
//! need a fused kernel without the `#[fused]` macro (the GPU check's built-in samples).
//!
//! A `FusedDef` is made of `'static` parts because the macro emits it as constants; here
//! they are leaked. Build each def once (a `OnceLock`), not per launch.
//!
//! Invariant (the one the macro keeps too): each spec's `cuda` is what `compile` emits for its
//! `ir_json`, so the runtime's stale-source check passes.

use kiln_codegen::compile::{compile, CompileError, Compiled};
use kiln_codegen::fused::{FusedDef, FusedSpec};
use kiln_codegen::ir::Kernel;
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum DefError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("building a kernel: {0}")]
    Build(#[from] kiln_codegen::builder::BuildError),
    #[error("kernel `{0}`: IR does not serialise: {1}")]
    Json(String, String),
    #[error("building the defs failed earlier in this process: {0}")]
    Earlier(String),
    #[error("leak_def(`{0}`) needs at least one kernel")]
    Empty(String),
}

/// A def named `name` with one spec per kernel (one kernel per storage dtype).
pub fn leak_def(name: &str, kernels: Vec<Kernel>) -> Result<&'static FusedDef, DefError> {
    if kernels.is_empty() {
        return Err(DefError::Empty(name.to_string()));
    }
    let mut specs = Vec::with_capacity(kernels.len());
    for k in kernels {
        let dtype = k.dtype;
        let spec_name = k.spec_name();
        let c: Compiled = compile(k)?;
        let ir_json = serde_json::to_string(&c.kernel).map_err(|e| DefError::Json(spec_name, e.to_string()))?;
        specs.push(FusedSpec { dtype, ir_json: leak_str(ir_json), cuda: leak_str(c.cuda) });
    }
    let cache: Vec<OnceLock<Result<Compiled, String>>> = specs.iter().map(|_| OnceLock::new()).collect();
    let source = specs.first().map_or("", |_| "runtime-built (kiln_runtime::device::fused_def)");
    Ok(Box::leak(Box::new(FusedDef {
        name: leak_str(name.to_string()),
        source,
        specs: Box::leak(specs.into_boxed_slice()),
        cache: Box::leak(cache.into_boxed_slice()),
    })))
}

fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
