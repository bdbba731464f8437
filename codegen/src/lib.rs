//! kiln-codegen: the fused IR and everything that turns it into code.
//!
//! Pipeline: a frontend (the `#[fused]` macro, or a test through [`builder::Builder`]) builds a
//! [`ir::Kernel`]; [`passes`] lower and clean it, with `verify` run after every pass;
//! [`schedule`] splits it into stages at row reductions; [`cuda`] emits CUDA C from the
//! scheduled kernel, and [`cpu`] runs the same IR on the host. [`compile::compile`] runs the
//! whole pipeline. Nothing here touches a GPU.

pub mod abi;
pub mod attention;
pub mod builder;
pub mod compile;
pub mod cpu;
pub mod cuda;
pub mod display;
pub mod fused;
pub mod ir;
pub mod passes;
pub mod schedule;
pub mod typeck;
pub mod verify;

pub use compile::{compile, CompileError, Compiled};
