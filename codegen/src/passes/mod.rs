//! Lowering passes. PLACEHOLDER: to be replaced by the passes helper.
use crate::compile::CompileError;
use crate::ir::Kernel;
pub fn lower(k: Kernel) -> Result<Kernel, CompileError> {
    Ok(k)
}
