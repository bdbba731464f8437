//! cuBLAS GEMM: `out = a · b_tᵀ` for row-major views, in f32, f16 or bf16 with f32
//! accumulation (`cublasGemmEx`, `CUBLAS_COMPUTE_32F`; f32 inputs are not rounded to TF32, so
//! f32 results match the CPU to f32 rounding).
//!
//! Row-major to column-major: cuBLAS reads a row-major `[r, c]` matrix with row stride `s` as
//! the column-major `c × r` matrix (its transpose) with leading dimension `s`. So we ask cuBLAS
//! for `outᵀ = b_t · aᵀ`: A = `b_t` read column-major (`k × n`, ld = b_t's stride) and
//! transposed (`OP_T`), B = `a` read column-major (`k × m` = `aᵀ`, ld = a's stride, `OP_N`),
//! C = `out` read column-major (`n × m` = `outᵀ`, ld = out's stride). Every leading dimension
//! is a row stride ≥ the columns, as cuBLAS requires.

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::{blas, drv, CudaError};
use crate::device::tensor::Tensor;
use crate::DType;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use std::ffi::c_void;

/// cuBLAS's element type for a float dtype (`None` for the others).
pub(crate) fn cublas_type(d: DType) -> Option<cudaDataType_t> {
    match d {
        DType::F32 => Some(cudaDataType_t::CUDA_R_32F),
        DType::F16 => Some(cudaDataType_t::CUDA_R_16F),
        DType::BF16 => Some(cudaDataType_t::CUDA_R_16BF),
        _ => None,
    }
}

pub(crate) fn matmul(b: &CudaBackend, a: &Tensor, b_t: &Tensor, out: &mut Tensor) -> Result<(), CudaError> {
    // `gemm::matmul` only sends float dtypes here.
    let Some(ty) = cublas_type(a.dtype()) else {
        return Err(CudaError::Blas {
            op: format!("GEMM in {}", a.dtype()),
            source: cudarc::cublas::result::CublasError(
                cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            ),
        });
    };
    let int = |what: &str, v: usize| {
        i32::try_from(v).map_err(|_| CudaError::Blas {
            op: format!("GEMM {what} = {v} (over 2^31)"),
            source: cudarc::cublas::result::CublasError(
                cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE,
            ),
        })
    };
    let (m, n, k) = (int("m", a.rows())?, int("n", b_t.rows())?, int("k", a.cols())?);
    let (lda, ldb, ldc) =
        (int("a stride", a.row_stride())?, int("b_t stride", b_t.row_stride())?, int("out stride", out.row_stride())?);
    let (pa, pb, pc) = (a.cuda_ptr().unwrap_or(0), b_t.cuda_ptr().unwrap_or(0), out.cuda_ptr().unwrap_or(0));
    let alpha = 1.0f32;
    let beta = 0.0f32;
    drv("binding the CUDA context", b.context().bind_to_thread())?;
    // SAFETY: the three device ranges are live allocations covering the views (tensor
    // invariant); shapes and leading dimensions are as derived in the module docs; alpha and
    // beta are f32 host scalars, matching CUBLAS_COMPUTE_32F in the default pointer mode.
    let r = unsafe {
        cudarc::cublas::result::gemm_ex(
            *b.blas().handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            n,
            m,
            k,
            (&alpha) as *const f32 as *const c_void,
            pb as *const c_void,
            ty,
            ldb,
            pa as *const c_void,
            ty,
            lda,
            (&beta) as *const f32 as *const c_void,
            pc as *mut c_void,
            ty,
            ldc,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    };
    blas(format!("GEMM {}x{}x{} ({})", a.rows(), b_t.rows(), a.cols(), a.dtype()), r)
}
