//! What the GPU products of quantized weights share ([`super::int4_cuda`], [`super::w8_cuda`]):
//! the argument checks, the GEMV over row chunks of `x` and parts of a stacked weight, and the
//! dequantize-into-scratch + one cuBLAS GEMM path.
//!
//! Invariant: a stacked weight's parts share `cols` and are multiplied each into its own
//! columns of `out`, in order (part `i`'s columns start at the sum of the earlier parts' rows).

use super::int4_cuda::Scratch;
use crate::device::cuda_backend::CudaBackend;
use crate::device::tensor::Tensor;
use crate::{Device, GemmError};
use std::sync::Arc;

/// One part of a quantized weight in GPU memory.
pub(super) trait GpuPart {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// `out = x · Wᵀ` by the GEMV, `x.rows() ≤` the GEMV's largest instance.
    fn gemv(&self, b: &CudaBackend, x: &Tensor, out: &mut Tensor) -> Result<(), GemmError>;
    /// The dense weight into `out` (`[rows, cols]`, any row stride, dtype of `out`).
    fn dequantize_into(&self, out: &mut Tensor) -> Result<(), GemmError>;
    /// The device's dequantization scratch this part shares.
    fn scratch(&self) -> &Scratch;
}

/// Whether `t`'s rows start at 16-byte boundaries (its pointer and row stride), so kernels may
/// read them in 16-byte loads.
pub(super) fn rows_aligned16(t: &Tensor) -> bool {
    let elt = t.dtype().size_bytes();
    t.cuda_ptr().unwrap_or(0).is_multiple_of(16) && (t.row_stride() * elt).is_multiple_of(16)
}

/// The backend of a product of `x` and the stacked `parts` into `out`, after checking their
/// shapes, dtypes and devices; `None` when `x` has no rows (nothing to do). `what` names the
/// format in errors.
pub(super) fn checked<P: GpuPart>(
    x: &Tensor,
    parts: &[P],
    out: &Tensor,
    what: &str,
) -> Result<Option<Arc<CudaBackend>>, GemmError> {
    let Device::Cuda(b) = x.device().clone() else {
        return Err(GemmError::Shape(format!("{what} GPU weight with a CPU input")));
    };
    let (m, k, n) = (x.rows(), x.cols(), parts.iter().map(P::rows).sum::<usize>());
    if parts.is_empty() || parts.iter().any(|w| w.cols() != k) || out.rows() != m || out.cols() != n {
        return Err(GemmError::Shape(format!("x {m}×{k} · {what}ᵀ ({n} rows) into {}×{}", out.rows(), out.cols())));
    }
    if x.dtype() != out.dtype() || !x.dtype().is_float() || out.device().is_cpu() {
        return Err(GemmError::DTypes { a: x.dtype(), b: x.dtype(), out: out.dtype() });
    }
    if m == 0 {
        return Ok(None);
    }
    if x.shares_storage(out) {
        return Err(GemmError::Aliased("x"));
    }
    Ok(Some(b))
}

/// Every part's GEMV, `chunk` rows of `x` per launch.
pub(super) fn gemv_all<P: GpuPart>(
    b: &CudaBackend,
    x: &Tensor,
    parts: &[P],
    out: &mut Tensor,
    chunk: usize,
) -> Result<(), GemmError> {
    per_row_chunk(x, parts, out, chunk, |w, xs, o| w.gemv(b, xs, o))
}

/// `f(part, rows of x, their block of out)` for every part and every `chunk` rows of `x`: the
/// launches of a kernel that takes a few rows at a time.
pub(super) fn per_row_chunk<P: GpuPart>(
    x: &Tensor,
    parts: &[P],
    out: &mut Tensor,
    chunk: usize,
    mut f: impl FnMut(&P, &Tensor, &mut Tensor) -> Result<(), GemmError>,
) -> Result<(), GemmError> {
    let m = x.rows();
    let mut at = 0;
    for w in parts {
        for r0 in (0..m).step_by(chunk) {
            let rows = (m - r0).min(chunk);
            let xs = x.view_rows(r0, rows)?;
            let mut o = out.view_rows(r0, rows)?.view_cols(at, w.rows())?;
            f(w, &xs, &mut o)?;
        }
        at += w.rows();
    }
    Ok(())
}

/// `out = x · Wᵀ` by dequantizing every part into the shared scratch (one matrix holds the
/// fused projection's rows) and one dense GEMM.
pub(super) fn dequant_product<P: GpuPart>(x: &Tensor, parts: &[P], out: &mut Tensor) -> Result<(), GemmError> {
    let (k, n) = (x.cols(), parts.iter().map(P::rows).sum::<usize>());
    let scratch = parts[0].scratch().lock().unwrap_or_else(|e| e.into_inner());
    if scratch.cols() < n * k || scratch.dtype() != x.dtype() {
        return Err(GemmError::Shape(format!("dequantization scratch of {} for {n}×{k}", scratch.cols())));
    }
    let dense = scratch.view_cols(0, n * k)?.reshape(n, k)?;
    let mut at = 0;
    for w in parts {
        w.dequantize_into(&mut dense.view_rows(at, w.rows())?)?;
        at += w.rows();
    }
    crate::matmul(x.device(), x, &dense, out)
}
