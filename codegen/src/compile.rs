//! The codegen pipeline in one call: lower (passes, verified after each), schedule, emit CUDA.
//! The `#[fused]` macro calls [`compile`] at expansion time; the runtime calls it again on the
//! embedded IR to get the schedule for the CPU backend and the launch rules.

use crate::ir::Kernel;
use crate::schedule::{schedule, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("pass `{pass}` on `{kernel}`: {msg}")]
    Pass { pass: &'static str, kernel: String, msg: String },
    #[error("CUDA emission for `{kernel}`: {msg}")]
    Emit { kernel: String, msg: String },
}

/// A lowered, scheduled kernel with its CUDA source.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The kernel after every pass (what the CPU backend runs and the CUDA was emitted from).
    pub kernel: Kernel,
    pub schedule: Schedule,
    /// The complete, self-contained CUDA C source (both entry points).
    pub cuda: String,
}

pub fn compile(k: Kernel) -> Result<Compiled, CompileError> {
    let kernel = crate::passes::lower(k)?;
    let schedule = schedule(&kernel);
    let cuda = crate::cuda::emit(&kernel, &schedule)?;
    Ok(Compiled { kernel, schedule, cuda })
}
