//! The CUDA C emitter for row kernels: a lowered kernel and its [`Schedule`] in, one
//! self-contained `.cu` text out, holding both entry points of [`crate::abi`]
//! (`{spec}_v{N}` with vector accesses, `{spec}_v1` scalar).
//!
//! Parts: [`writer`] (structured text, no string surgery), [`prelude`] (types, conversions,
//! memory access, reductions, RoPE; no `#include`), `plan` (input checks, liveness, caching),
//! `expr` (one node as a C expression), `emit` (the file's structure), [`samples`] (reference
//! kernels used by the tests here and in the runtime).
//!
//! Invariants of the output (see `emit` and `prelude` for the details):
//! - the text is a pure function of the kernel and schedule (deterministic, no timestamps);
//! - it compiles with NVRTC for sm_80 and sm_90 without warnings;
//! - f32 results follow the CPU backend's formulas (precise math functions, round-to-nearest
//!   narrowing), so they agree within f32 rounding; the reduction order differs (tree vs
//!   sequential) and NVRTC contracts `a*b+c` into FMA unless compiled with `--fmad=false`.

pub mod attention;
mod attention_template;
mod emit;
mod expr;
mod names;
mod plan;
pub mod prelude;
pub mod samples;
pub mod writer;

use crate::compile::CompileError;
use crate::ir::Kernel;
use crate::schedule::Schedule;

/// The CUDA source of one kernel specialisation. `k` must be lowered (no `Softmax`, halves
/// only in params and casts) and `s` its schedule; violations are `CompileError::Emit`.
pub fn emit(k: &Kernel, s: &Schedule) -> Result<String, CompileError> {
    emit::emit(k, s)
}
