//! One error type for everything that can fail inside CUDA (driver, NVRTC, cuBLAS), always
//! carrying what kiln was doing when it failed.
//!
//! cudarc panics in a few places (a missing library or symbol, a failed log read); [`guarded`]
//! turns such a panic into [`CudaError::Panic`] so no CUDA failure takes the process down.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA driver: {op} failed: {source}")]
    Driver {
        op: String,
        #[source]
        source: DriverError,
    },
    #[error("cuBLAS: {op} failed: {source:?}")]
    Blas { op: String, source: CublasError },
    #[error("NVRTC: compiling `{kernel}` for {arch} failed: {msg}")]
    Nvrtc { kernel: String, arch: String, msg: String },
    #[error("CUDA library panicked during {op}: {msg}")]
    Panic { op: String, msg: String },
}

/// Attach context to a driver result: `drv("cuMemAlloc of 4 MiB", r)`.
pub(crate) fn drv<T>(op: impl Into<String>, r: Result<T, DriverError>) -> Result<T, CudaError> {
    r.map_err(|source| CudaError::Driver { op: op.into(), source })
}

/// Attach context to a cuBLAS result.
pub(crate) fn blas<T>(op: impl Into<String>, r: Result<T, CublasError>) -> Result<T, CudaError> {
    r.map_err(|source| CudaError::Blas { op: op.into(), source })
}

/// Run `f`, converting a panic inside cudarc into a typed error.
pub(crate) fn guarded<T>(op: &str, f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(CudaError::Panic { op: op.to_string(), msg })
        }
    }
}
