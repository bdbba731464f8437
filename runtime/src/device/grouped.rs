//! Grouped products, for the experts of a mixture-of-experts layer: `out[g.rows] = x[g.rows] ·
//! g.wᵀ` for each group `g` of consecutive rows of `x` (an expert's tokens, sorted by expert),
//! each group against its own dense `[n, k]` weight.
//!
//! On a GPU every group goes into one cuBLAS grouped GEMM call (`cublasGemmGroupedBatchedEx`,
//! f32 accumulation: the shapes in host arrays, the groups' matrix addresses in device arrays
//! uploaded per call), instead of one GEMM per expert; where cuBLAS declines the call (an
//! older library, a dtype it does not group), each group runs through [`matmul`]. On the CPU,
//! [`matmul`] per group is the reference the GPU path is held to.
//!
//! Row-major to column-major as in `gemm_cuda`: each group computes `outᵀ (n × rows) = W (op
//! T of the k × n view) · xᵀ (k × rows)`.
//!
//! Invariants: groups lie inside `x` and `out` and do not overlap; every weight is `[n, k]` in
//! `x`'s dtype on `x`'s device; an empty group writes nothing; rows of `out` outside every
//! group are left as they were.

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::{blas, drv};
use crate::device::gemm::{matmul, GemmError};
use crate::device::gemm_cuda::cublas_type;
use crate::device::tensor::Tensor;
use crate::Device;
use cudarc::cublas::sys::{self as bs, cublasComputeType_t, cublasOperation_t};
use std::ffi::c_void;
use std::ops::Range;

/// One group: rows of `x` (and of `out`) and the weight they are multiplied by.
#[derive(Clone)]
pub struct Group<'a> {
    pub rows: Range<usize>,
    pub w: &'a Tensor,
}

/// `out[g.rows] = x[g.rows] · g.wᵀ` for every group (see the module header).
pub fn grouped_matmul(dev: &Device, x: &Tensor, groups: &[Group<'_>], out: &mut Tensor) -> Result<(), GemmError> {
    let live: Vec<&Group<'_>> = groups.iter().filter(|g| !g.rows.is_empty()).collect();
    check(x, &live, out)?;
    if let Device::Cuda(b) = dev {
        if live.len() > 1 && grouped_cuda(b, dev, x, &live, out)? {
            return Ok(());
        }
    }
    for g in live {
        let len = g.rows.len();
        matmul(dev, &x.view_rows(g.rows.start, len)?, g.w, &mut out.view_rows(g.rows.start, len)?)?;
    }
    Ok(())
}

/// The shapes: groups inside `x` and `out`, ascending and apart, every weight `[out.cols(),
/// x.cols()]` in `x`'s dtype (devices and aliasing are checked by [`matmul`] per group on the
/// fallback, and for every operand by the grouped call).
fn check(x: &Tensor, groups: &[&Group<'_>], out: &Tensor) -> Result<(), GemmError> {
    if out.rows() != x.rows() {
        return Err(GemmError::Shape(format!("grouped: x has {} rows, out {}", x.rows(), out.rows())));
    }
    let mut end = 0;
    for g in groups {
        if g.rows.start < end || g.rows.end > x.rows() {
            return Err(GemmError::Shape(format!(
                "grouped: rows {:?} overlap the group before or leave the {} rows",
                g.rows,
                x.rows()
            )));
        }
        end = g.rows.end;
        if g.w.rows() != out.cols() || g.w.cols() != x.cols() {
            return Err(GemmError::Shape(format!(
                "grouped: a weight of {}x{} for x of {} columns into {} columns",
                g.w.rows(),
                g.w.cols(),
                x.cols(),
                out.cols()
            )));
        }
        if g.w.dtype() != x.dtype() || out.dtype() != x.dtype() {
            return Err(GemmError::DTypes { a: x.dtype(), b: g.w.dtype(), out: out.dtype() });
        }
    }
    Ok(())
}

/// The groups in one cuBLAS call; `Ok(false)` where cuBLAS declines it (the caller then runs
/// each group itself).
fn grouped_cuda(
    b: &CudaBackend,
    dev: &Device,
    x: &Tensor,
    groups: &[&Group<'_>],
    out: &mut Tensor,
) -> Result<bool, GemmError> {
    let Some(ty) = cublas_type(x.dtype()) else { return Ok(false) };
    // `matmul`'s device and aliasing checks, for every operand of the call.
    for (which, t) in [("x", x), ("out", &*out)].into_iter().chain(groups.iter().map(|g| ("w", g.w))) {
        if t.device() != dev {
            return Err(GemmError::WrongDevice { which, tensor: t.device().label(), device: dev.label() });
        }
    }
    if out.shares_storage(x) {
        return Err(GemmError::Aliased("x"));
    }
    let int = |what: &str, v: usize| {
        i32::try_from(v).map_err(|_| GemmError::Shape(format!("grouped GEMM {what} = {v} (over 2^31)")))
    };
    let count = groups.len();
    let (n, k) = (int("n", out.cols())?, int("k", x.cols())?);
    let (ldx, ldo) = (int("x stride", x.row_stride())?, int("out stride", out.row_stride())?);
    let elt = x.dtype().size_bytes() as u64;
    let (xp, op) = (x.cuda_ptr().unwrap_or(0), out.cuda_ptr().unwrap_or(0));
    let mut rows = Vec::with_capacity(count);
    let mut ldw = Vec::with_capacity(count);
    // Device addresses of A (weights), B (x rows), C (out rows), as the u64 words cuBLAS reads.
    let mut ptrs: Vec<u64> = Vec::with_capacity(3 * count);
    for g in groups {
        rows.push(int("rows", g.rows.len())?);
        ldw.push(int("weight stride", g.w.row_stride())?);
    }
    ptrs.extend(groups.iter().map(|g| g.w.cuda_ptr().unwrap_or(0)));
    ptrs.extend(groups.iter().map(|g| xp + (g.rows.start * x.row_stride()) as u64 * elt));
    ptrs.extend(groups.iter().map(|g| op + (g.rows.start * out.row_stride()) as u64 * elt));
    let words: Vec<i32> = ptrs.iter().flat_map(|p| [*p as u32 as i32, (*p >> 32) as u32 as i32]).collect();
    let table = Tensor::from_host(dev, &words, 1, words.len())?;
    let at = table.cuda_ptr().unwrap_or(0);
    let (transa, transb) = (vec![cublasOperation_t::CUBLAS_OP_T; count], vec![cublasOperation_t::CUBLAS_OP_N; count]);
    let (ns, ks, ldxs, ldos) = (vec![n; count], vec![k; count], vec![ldx; count], vec![ldo; count]);
    let (alpha, beta, sizes) = (vec![1.0f32; count], vec![0.0f32; count], vec![1i32; count]);
    drv("binding the CUDA context", b.context().bind_to_thread())?;
    // SAFETY: the host arrays hold `count` entries each and live through the call; the device
    // table holds the 3 × count addresses of live allocations covering each group's views
    // (tensor invariant), and is freed in stream order after the call's kernels; alpha and
    // beta are f32 host scalars, matching CUBLAS_COMPUTE_32F in the default pointer mode.
    let status = unsafe {
        bs::cublasGemmGroupedBatchedEx(
            *b.blas().handle(),
            transa.as_ptr(),
            transb.as_ptr(),
            ns.as_ptr(),
            rows.as_ptr(),
            ks.as_ptr(),
            alpha.as_ptr() as *const c_void,
            at as *const *const c_void,
            ty,
            ldw.as_ptr(),
            (at + 8 * count as u64) as *const *const c_void,
            ty,
            ldxs.as_ptr(),
            beta.as_ptr() as *const c_void,
            (at + 16 * count as u64) as *const *mut c_void,
            ty,
            ldos.as_ptr(),
            count as i32,
            sizes.as_ptr(),
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
        )
    };
    if status == bs::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED {
        return Ok(false);
    }
    blas(format!("grouped GEMM of {count} groups, {}x{n}x{k} ({})", x.rows(), x.dtype()), status.result())?;
    drop(table);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn filled(rows: usize, cols: usize, seed: usize) -> Tensor {
        let v: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 + seed * 13) % 17) as f32 / 8.0 - 1.0).collect();
        Tensor::from_f32(&Device::Cpu, &v, rows, cols).unwrap()
    }

    #[test]
    fn each_group_takes_its_own_weight_and_other_rows_stay() {
        let dev = Device::Cpu;
        let x = filled(7, 5, 1);
        let (w0, w1) = (filled(3, 5, 2), filled(3, 5, 3));
        let mut out = Tensor::from_f32(&dev, &[9.0; 21], 7, 3).unwrap();
        let groups = [Group { rows: 0..2, w: &w0 }, Group { rows: 2..2, w: &w1 }, Group { rows: 3..6, w: &w1 }];
        grouped_matmul(&dev, &x, &groups, &mut out).unwrap();
        let got = out.to_host_f32().unwrap();
        for (rows, w) in [(0..2, &w0), (3..6, &w1)] {
            let mut want = Tensor::zeros(&dev, DType::F32, rows.len(), 3).unwrap();
            matmul(&dev, &x.view_rows(rows.start, rows.len()).unwrap(), w, &mut want).unwrap();
            assert_eq!(&got[rows.start * 3..rows.end * 3], &want.to_host_f32().unwrap()[..]);
        }
        // Row 2 (an empty group's place) and row 6 (no group) keep their values.
        assert_eq!(&got[6..9], &[9.0; 3]);
        assert_eq!(&got[18..21], &[9.0; 3]);
    }

    #[test]
    fn overlapping_or_misshaped_groups_are_refused() {
        let dev = Device::Cpu;
        let x = filled(4, 5, 1);
        let w = filled(3, 5, 2);
        let wide = filled(3, 6, 2);
        let mut out = Tensor::zeros(&dev, DType::F32, 4, 3).unwrap();
        let overlap = [Group { rows: 0..3, w: &w }, Group { rows: 2..4, w: &w }];
        assert!(grouped_matmul(&dev, &x, &overlap, &mut out).is_err());
        let outside = [Group { rows: 3..5, w: &w }];
        assert!(grouped_matmul(&dev, &x, &outside, &mut out).is_err());
        let misshaped = [Group { rows: 0..1, w: &wide }];
        assert!(grouped_matmul(&dev, &x, &misshaped, &mut out).is_err());
    }
}
