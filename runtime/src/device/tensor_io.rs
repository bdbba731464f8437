//! Moving tensor bytes: allocation and host <-> device copies of strided views.
//!
//! A strided view is `rows` runs of `cols * elem` bytes, `row_stride * elem` bytes apart: a
//! 2-D copy (`cuMemcpy2DAsync`) on the GPU, a row loop on the host. Host-side results are
//! always contiguous (`rows × cols`, row-major).
//!
//! Invariants: every copy is issued on the backend's one stream; a device-to-host copy returns
//! only after the stream has finished it (the bytes are valid on return); copies into host
//! storage hold its write lock, copies out of it its read lock.

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::{drv, CudaError};
use crate::device::tensor::{Storage, Tensor, TensorError};
use cudarc::driver::sys::{self, CUmemorytype, CUDA_MEMCPY2D};
use cudarc::driver::{CudaSlice, DevicePtr};

/// A device allocation of `bytes` (at least 16, so every tensor has a valid address),
/// zero-filled when `zero`.
pub(crate) fn cuda_alloc(b: &CudaBackend, bytes: usize, zero: bool) -> Result<CudaSlice<u8>, CudaError> {
    let n = bytes.max(16);
    // SAFETY: u8 has no invalid bit patterns; callers treat uninit contents as unspecified.
    let slice = drv(format!("allocating {n} bytes"), unsafe { b.stream().alloc::<u8>(n) })?;
    if zero {
        drv("zero-filling an allocation", unsafe {
            cudarc::driver::result::memset_d8_async(base_ptr(&slice), 0, n, b.stream().cu_stream())
        })?;
    }
    Ok(slice)
}

/// A new device allocation holding `bytes`.
pub(crate) fn cuda_upload(b: &CudaBackend, bytes: &[u8]) -> Result<CudaSlice<u8>, CudaError> {
    let slice = cuda_alloc(b, bytes.len(), false)?;
    if !bytes.is_empty() {
        drv("copying host data to the GPU", unsafe {
            cudarc::driver::result::memcpy_htod_async(base_ptr(&slice), bytes, b.stream().cu_stream())
        })?;
        // The source is pageable host memory the caller may free on return: make sure the
        // driver is done reading it.
        b.synchronize()?;
    }
    Ok(slice)
}

/// Device address of a slice's first byte.
pub(crate) fn base_ptr(s: &CudaSlice<u8>) -> u64 {
    // Event tracking is off (see cuda_backend), so the returned guard records nothing.
    let (ptr, _guard) = s.device_ptr(s.stream());
    ptr
}

/// The view's bytes, contiguous (`rows × cols × elem`).
pub(crate) fn gather_bytes(t: &Tensor) -> Result<Vec<u8>, TensorError> {
    let sz = t.dtype.size_bytes();
    let row_bytes = t.cols * sz;
    let mut out = vec![0u8; t.rows * row_bytes];
    if out.is_empty() {
        return Ok(out);
    }
    match &*t.storage {
        Storage::Cpu(h) => {
            let g = h.read()?;
            let bytes = g.bytes();
            let (start, _) = t.byte_range();
            for (r, dst) in out.chunks_exact_mut(row_bytes).enumerate() {
                let s = start + r * t.row_stride * sz;
                dst.copy_from_slice(&bytes[s..s + row_bytes]);
            }
        }
        Storage::Cuda(_) => {
            let b = backend(t)?;
            let src = t.cuda_ptr().unwrap_or(0);
            let mut p = copy2d(row_bytes, t.rows);
            p.srcMemoryType = CUmemorytype::CU_MEMORYTYPE_DEVICE;
            p.srcDevice = src;
            p.srcPitch = t.row_stride * sz;
            p.dstMemoryType = CUmemorytype::CU_MEMORYTYPE_HOST;
            p.dstHost = out.as_mut_ptr().cast();
            p.dstPitch = row_bytes;
            run2d(b, &p, "copying a tensor to the host")?;
            b.synchronize()?;
        }
    }
    Ok(out)
}

/// Overwrite the view with contiguous `bytes` (`rows × cols × elem`, length checked by caller).
pub(crate) fn scatter_bytes(t: &mut Tensor, bytes: &[u8]) -> Result<(), TensorError> {
    let sz = t.dtype.size_bytes();
    let row_bytes = t.cols * sz;
    if bytes.is_empty() {
        return Ok(());
    }
    match &*t.storage {
        Storage::Cpu(h) => {
            let mut g = h.write()?;
            let dst = g.bytes_mut();
            let (start, _) = t.byte_range();
            for (r, src) in bytes.chunks_exact(row_bytes).enumerate() {
                let s = start + r * t.row_stride * sz;
                dst[s..s + row_bytes].copy_from_slice(src);
            }
        }
        Storage::Cuda(_) => {
            let b = backend(t)?;
            let mut p = copy2d(row_bytes, t.rows);
            p.srcMemoryType = CUmemorytype::CU_MEMORYTYPE_HOST;
            p.srcHost = bytes.as_ptr().cast();
            p.srcPitch = row_bytes;
            p.dstMemoryType = CUmemorytype::CU_MEMORYTYPE_DEVICE;
            p.dstDevice = t.cuda_ptr().unwrap_or(0);
            p.dstPitch = t.row_stride * sz;
            run2d(b, &p, "copying host data into a tensor")?;
            // `bytes` is borrowed pageable memory: wait until the driver has read it.
            b.synchronize()?;
        }
    }
    Ok(())
}

/// Device-to-device copy of `src`'s view into `dst`'s view (same shape and dtype, same GPU).
pub(crate) fn copy_device(src: &Tensor, dst: &mut Tensor) -> Result<(), TensorError> {
    let sz = src.dtype.size_bytes();
    let b = backend(dst)?;
    let mut p = copy2d(src.cols * sz, src.rows);
    p.srcMemoryType = CUmemorytype::CU_MEMORYTYPE_DEVICE;
    p.srcDevice = src.cuda_ptr().unwrap_or(0);
    p.srcPitch = src.row_stride * sz;
    p.dstMemoryType = CUmemorytype::CU_MEMORYTYPE_DEVICE;
    p.dstDevice = dst.cuda_ptr().unwrap_or(0);
    p.dstPitch = dst.row_stride * sz;
    Ok(run2d(b, &p, "copying a tensor on the GPU")?)
}

fn backend(t: &Tensor) -> Result<&CudaBackend, TensorError> {
    t.device.cuda_backend().map(|b| &**b).ok_or_else(|| TensorError::Shape("CUDA storage on a CPU device".into()))
}

fn copy2d(width_bytes: usize, height: usize) -> CUDA_MEMCPY2D {
    // Every field spelled out: the memory-type enums have no zero variant, so
    // `mem::zeroed` is undefined behaviour here (and Rust aborts on it at run time).
    CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: CUmemorytype::CU_MEMORYTYPE_HOST,
        srcHost: std::ptr::null(),
        srcDevice: 0,
        srcArray: std::ptr::null_mut(),
        srcPitch: 0,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: CUmemorytype::CU_MEMORYTYPE_HOST,
        dstHost: std::ptr::null_mut(),
        dstDevice: 0,
        dstArray: std::ptr::null_mut(),
        dstPitch: 0,
        WidthInBytes: width_bytes,
        Height: height,
    }
}

fn run2d(b: &CudaBackend, p: &CUDA_MEMCPY2D, op: &str) -> Result<(), CudaError> {
    drv("binding the CUDA context", b.context().bind_to_thread())?;
    // SAFETY: the caller filled `p` with a host buffer of at least Height*pitch bytes and a
    // device range inside a live allocation (a tensor view is inside its storage).
    drv(op, unsafe { sys::cuMemcpy2DAsync_v2(p, b.stream().cu_stream()).result() })
}
