//! Lowering passes: pure functions `Kernel -> Kernel`, run in a fixed order by [`lower`], with
//! the verifier run on the input and after every pass.
//!
//! Order and purpose:
//! 1. [`lower_softmax`]: expand `Softmax` into max / sub / exp / sum / div (after it the kernel
//!    must satisfy the *lowered* rules: no softmax, halves only loaded and cast);
//! 2. [`const_fold`]: evaluate ops whose operands are all constants (same semantics as the
//!    backends, through [`crate::cpu::math`]);
//! 3. [`cse`]: merge identical nodes (keeping the first one's name);
//! 4. [`dce`]: drop nodes no output depends on, renumbering the rest.
//!
//! Invariants: passes never change `Kernel::params` (the ABI) nor the outputs' names, kinds
//! and order; every pass maps a verified kernel to a verified kernel with the same values at
//! every output. On an unverified kernel a pass does not panic: bad references are carried
//! through unchanged, and the verifier that runs after it reports them.

mod const_fold;
mod cse;
mod dce;
mod lower_softmax;
mod rewrite;

pub use const_fold::const_fold;
pub use cse::cse;
pub use dce::dce;
pub use lower_softmax::lower_softmax;

use crate::compile::CompileError;
use crate::ir::Kernel;
use crate::verify::{verify_at, Level};

/// A named pass, as listed in [`PASSES`].
pub type Pass = fn(Kernel) -> Kernel;

/// The lowering pipeline, in order.
pub const PASSES: [(&str, Pass); 4] =
    [("lower_softmax", lower_softmax), ("const_fold", const_fold), ("cse", cse), ("dce", dce)];

/// Run every pass in order; verify the input (frontend rules) and the result of each pass
/// (lowered rules). A failure names the pass after which the kernel was found invalid.
pub fn lower(k: Kernel) -> Result<Kernel, CompileError> {
    check("input", &k, Level::Frontend)?;
    let mut k = k;
    for (name, pass) in PASSES {
        k = pass(k);
        check(name, &k, Level::Lowered)?;
    }
    Ok(k)
}

fn check(pass: &'static str, k: &Kernel, level: Level) -> Result<(), CompileError> {
    verify_at(k, level).map_err(|e| CompileError::Pass { pass, kernel: k.spec_name(), msg: e.to_string() })
}
