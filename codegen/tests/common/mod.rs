//! Shared test support: the test kernels (built with `Builder`, the way the `#[fused]` macro
//! builds them), host tensors, naive references, and the direct evaluator of unlowered IR.
#![allow(dead_code)]

pub mod eval;
pub mod host;
pub mod kernels;
pub mod runner;
