//! The one seam every projection of every architecture goes through: [`linear`] computes
//! `out = x · Wᵀ` for a [`Weight`], picking the kernel by the weight's storage and the device.
//! Models never name a format or a GEMM; a new storage kind (quantized blocks, FP8, a shard)
//! is a new `Weight` variant and a new arm here, and no model changes.
//!
//! Invariant: a `Weight` is `[out_features, in_features]` (HF's layout of `nn.Linear`), and
//! `linear` takes `x: [rows, in_features]` into `out: [rows, out_features]`.

use crate::{matmul, Device, GemmError, Tensor};

/// A projection's weight, in the form it is stored on its device.
#[derive(Clone, Debug)]
pub enum Weight {
    /// A dense `[out, in]` matrix in a float storage dtype (f32, f16, bf16).
    Dense(Tensor),
}

impl Weight {
    pub fn out_features(&self) -> usize {
        match self {
            Weight::Dense(t) => t.rows(),
        }
    }

    pub fn in_features(&self) -> usize {
        match self {
            Weight::Dense(t) => t.cols(),
        }
    }

    /// The dense matrix, for the few uses that need one (a tied embedding's row gather).
    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Weight::Dense(t) => Some(t),
        }
    }

    /// A short name of the storage format, for reports (`bf16`, later `q4_k`, `fp8`, ...).
    pub fn format(&self) -> String {
        match self {
            Weight::Dense(t) => t.dtype().to_string(),
        }
    }
}

impl From<Tensor> for Weight {
    fn from(t: Tensor) -> Weight {
        Weight::Dense(t)
    }
}

/// `out = x · Wᵀ`: `x` is `[rows, in]`, `out` is `[rows, out]`.
pub fn linear(dev: &Device, x: &Tensor, w: &Weight, out: &mut Tensor) -> Result<(), GemmError> {
    match w {
        Weight::Dense(t) => matmul(dev, x, t, out),
    }
}
