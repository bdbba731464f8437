//! [`CudaBackend`]: one GPU, as kiln uses it — a context, **one** stream, a cuBLAS handle and
//! the cache of compiled fused kernels.
//!
//! Invariants:
//! - every kernel launch, copy, allocation and GEMM kiln issues for this device goes on
//!   [`CudaBackend::stream`], so work is ordered by the stream alone. That is why cudarc's
//!   per-buffer event tracking is switched off before anything is allocated (it would record
//!   two events per buffer use for nothing);
//! - the stream is a created stream, not the legacy default stream, so it can be captured
//!   into CUDA graphs later;
//! - construction never panics: callers reach it only through [`crate::Device::cuda`], which
//!   checks the libraries first, and cudarc panics are caught by [`guarded`].

use crate::device::cuda_error::{blas, drv, guarded, CudaError};
use crate::device::kernel_cache::KernelCache;
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaStream};
use std::fmt;
use std::sync::Arc;

/// Bytes of cuBLAS workspace (what cuBLAS recommends for Hopper: 32 MiB).
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// cuBLAS's workspace, given to it explicitly so a GEMM never allocates (which would break
    /// a CUDA graph capture).
    _blas_workspace: cudarc::driver::CudaSlice<u8>,
    name: String,
    cc: (i32, i32),
    sm_count: i32,
    l2_bytes: usize,
    total_mem: usize,
    pub(crate) kernels: KernelCache,
}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaBackend({} #{}, {})", self.name, self.ordinal(), self.arch())
    }
}

impl CudaBackend {
    /// Open GPU `ordinal`. The caller has checked that the libraries are loadable.
    pub(crate) fn open(ordinal: usize) -> Result<CudaBackend, CudaError> {
        guarded("opening the CUDA device", || {
            let ctx = drv(format!("creating a context on GPU {ordinal}"), CudaContext::new(ordinal))?;
            // SAFETY: nothing has been allocated in this context through us yet, and all our
            // work goes on one stream (see the module invariants).
            unsafe { ctx.disable_event_tracking() };
            let stream = drv("creating a stream", ctx.new_stream())?;
            let blas = blas("creating the cuBLAS handle", CudaBlas::new(stream.clone()))?;
            // SAFETY: u8 has no invalid bit patterns; cuBLAS uses the memory as scratch.
            let ws = drv("allocating the cuBLAS workspace", unsafe { stream.alloc::<u8>(BLAS_WORKSPACE_BYTES) })?;
            let ws_ptr = crate::device::tensor_io::base_ptr(&ws);
            // SAFETY: the handle is live and the workspace outlives it (both owned by the
            // backend; fields drop in declaration order, the handle first).
            let st = unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ws_ptr as *mut std::ffi::c_void,
                    BLAS_WORKSPACE_BYTES,
                )
            };
            crate::device::cuda_error::blas("setting the cuBLAS workspace", st.result())?;
            let name = drv("reading the device name", ctx.name())?;
            let cc = drv("reading the compute capability", ctx.compute_capability())?;
            let attr = |a: CUdevice_attribute, what: &str| drv(format!("reading {what}"), ctx.attribute(a));
            let sm_count = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "the SM count")?;
            let l2 = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, "the L2 size")?;
            let total_mem = drv("reading the memory size", ctx.total_mem())?;
            Ok(CudaBackend {
                ctx,
                stream,
                blas,
                _blas_workspace: ws,
                name,
                cc,
                sm_count,
                l2_bytes: l2.max(0) as usize,
                total_mem,
                kernels: KernelCache::new(),
            })
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `(major, minor)`, e.g. `(9, 0)` for an H100.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }
    /// `sm_90` style name of the device's architecture.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.cc.0, self.cc.1)
    }
    pub fn sm_count(&self) -> i32 {
        self.sm_count
    }
    pub fn l2_bytes(&self) -> usize {
        self.l2_bytes
    }
    pub fn total_mem(&self) -> usize {
        self.total_mem
    }
    /// Device memory free right now, in bytes.
    pub fn free_mem(&self) -> Result<usize, CudaError> {
        drv("reading the free device memory", self.ctx.mem_get_info()).map(|(free, _)| free)
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The one stream all of kiln's work on this device goes on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub(crate) fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// Wait for all queued work; reports asynchronous faults of earlier launches.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        drv("synchronizing the stream", self.stream.synchronize())?;
        // Errors cudarc could only record (in Drop impls) surface here.
        drv("a deferred CUDA call (free, event record)", self.ctx.check_err())
    }

    /// Statistics of the fused-kernel cache (for reports).
    pub fn kernel_cache_stats(&self) -> crate::device::kernel_cache::KernelCacheStats {
        self.kernels.stats()
    }
}
