//! [`matmul`]: `out = a · b_tᵀ`, the projection of every linear layer.
//!
//! Shapes: `a` is `[m, k]` (activations, one row per token), `b_t` is `[n, k]` — weights stored
//! `[out_features, in_features]` as Hugging Face checkpoints store them — and `out` is `[m, n]`.
//! All three are strided views (row stride ≥ columns); columns are contiguous.
//!
//! Backends: the CPU computes in f32 ([`crate::device::gemm_cpu`]: a bandwidth-bound matrix-vector
//! path for decode-sized `m`, the `gemm` crate above it); CUDA runs cuBLAS in f32, f16 or bf16
//! with f32 accumulation ([`crate::device::gemm_cuda`]).
//!
//! Invariants: `out` must not share storage with `a` or `b_t` (a GEMM reads all of its inputs
//! while writing); all three have one dtype and live on `dev`; nothing is written on error.

use crate::device::cuda_error::CudaError;
use crate::device::tensor::{Tensor, TensorError};
use crate::device::Device;
use crate::DType;

#[derive(Debug, thiserror::Error)]
pub enum GemmError {
    #[error("matmul: {0}")]
    Shape(String),
    #[error("matmul: dtypes differ (a {a}, b_t {b}, out {out})")]
    DTypes { a: DType, b: DType, out: DType },
    #[error("matmul: {dtype} is not supported on {device}")]
    Unsupported { dtype: DType, device: String },
    #[error("matmul: `{which}` is on {tensor}, the call is on {device}")]
    WrongDevice { which: &'static str, tensor: String, device: String },
    #[error("matmul: `out` shares storage with `{0}`")]
    Aliased(&'static str),
    #[error("matmul: {0}")]
    Tensor(#[from] TensorError),
    #[error("matmul: {0}")]
    Cuda(#[from] CudaError),
}

/// `out[m, n] = a[m, k] · b_t[n, k]ᵀ` on `dev`.
pub fn matmul(dev: &Device, a: &Tensor, b_t: &Tensor, out: &mut Tensor) -> Result<(), GemmError> {
    let (m, k, n) = (a.rows(), a.cols(), b_t.rows());
    if b_t.cols() != k {
        return Err(GemmError::Shape(format!(
            "a is {m}x{k} but b_t is {}x{} (needs {k} columns)",
            b_t.rows(),
            b_t.cols()
        )));
    }
    if out.rows() != m || out.cols() != n {
        return Err(GemmError::Shape(format!("out is {}x{}, expected {m}x{n}", out.rows(), out.cols())));
    }
    if a.dtype() != b_t.dtype() || a.dtype() != out.dtype() {
        return Err(GemmError::DTypes { a: a.dtype(), b: b_t.dtype(), out: out.dtype() });
    }
    for (which, t) in [("a", a), ("b_t", b_t), ("out", &*out)] {
        if t.device() != dev {
            return Err(GemmError::WrongDevice { which, tensor: t.device().label(), device: dev.label() });
        }
    }
    if out.shares_storage(a) {
        return Err(GemmError::Aliased("a"));
    }
    if out.shares_storage(b_t) {
        return Err(GemmError::Aliased("b_t"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        return Err(GemmError::Shape("inner dimension k is 0".into()));
    }
    match dev {
        Device::Cpu => {
            if a.dtype() != DType::F32 {
                return Err(GemmError::Unsupported { dtype: a.dtype(), device: dev.label() });
            }
            crate::device::gemm_cpu::matmul_f32(a, b_t, out)
        }
        Device::Cuda(b) => {
            if !a.dtype().is_float() {
                return Err(GemmError::Unsupported { dtype: a.dtype(), device: dev.label() });
            }
            Ok(crate::device::gemm_cuda::matmul(b, a, b_t, out)?)
        }
    }
}
