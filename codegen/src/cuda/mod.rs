//! CUDA C emitter. PLACEHOLDER: to be replaced by the emitter helper.
use crate::compile::CompileError;
use crate::ir::Kernel;
use crate::schedule::Schedule;
pub fn emit(k: &Kernel, _s: &Schedule) -> Result<String, CompileError> {
    Err(CompileError::Emit { kernel: k.spec_name(), msg: "emitter not written yet".into() })
}
