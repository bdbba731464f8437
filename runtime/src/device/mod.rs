//! The device layer: everything that knows where memory lives and how a kernel runs — the
//! [`Device`] itself (this file), tensors and their host/device I/O, host buffers, the CUDA
//! backend and library loading, NVRTC and the PTX/kernel caches, fused-kernel launch and
//! argument binding, GEMMs and the one projection seam ([`linear`]), grouped GEMMs and the
//! experts' combine (mixture-of-experts layers), row gathers, CUDA graphs, event timing and
//! the utility kernels.
//!
//! Layering: this layer imports nothing from the serving core above it (engine, scheduler,
//! sampling, KV allocator, attention plans, model interface); they build on it. New storage
//! kinds (quantized weights), their kernels and the communicator for several GPUs land here.
//!
//! [`Device`]: where tensors live and kernels run — the host CPU or one CUDA GPU.
//!
//! Invariants:
//! - [`Device::cuda`] and [`Device::auto`] never panic, on any machine: the CUDA libraries are
//!   probed ([`crate::device::cuda_libs::probe`]) before cudarc touches them (cudarc panics when a
//!   library is missing), and cudarc calls run under a panic guard;
//! - a `Device` is cheap to clone (an `Arc` for CUDA); two clones are the same device;
//! - `KILN_DEVICE=cpu|cuda|cuda:N` overrides [`Device::auto`]'s choice.

pub mod cuda_backend;
pub mod cuda_error;
pub mod cuda_libs;
pub mod device_kernels;
pub mod dtype;
pub mod element;
pub mod expert_combine;
pub mod fused;
mod fused_bind;
mod fused_cpu;
mod fused_cuda;
pub mod fused_def;
pub mod gather;
pub mod gemm;
pub(crate) mod gemm_cpu;
mod gemm_cuda;
pub mod graph;
pub mod grouped;
pub mod host_buf;
pub mod kernel_cache;
pub mod linear;
pub mod nvrtc_check;
pub mod ptx_cache;
pub mod quant;
pub mod tensor;
mod tensor_io;
pub mod timing;

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::CudaError;
use std::fmt;
use std::sync::Arc;

#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<CudaBackend>),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("CUDA libraries not found: {}. Put them on the loader path or name their folders in KILN_CUDA_LIB_DIRS", missing.join(", "))]
    LibrariesMissing { missing: Vec<&'static str> },
    #[error("no CUDA GPU {ordinal}: {count} GPU(s) visible")]
    NoSuchGpu { ordinal: usize, count: usize },
    #[error("KILN_DEVICE={0:?} is not one of cpu, cuda, cuda:N")]
    BadOverride(String),
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("Cpu"),
            Device::Cuda(b) => write!(f, "{b:?}"),
        }
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.ordinal() == b.ordinal(),
            _ => false,
        }
    }
}

impl Device {
    /// The best device here, and one human line saying which and why.
    pub fn auto() -> (Device, String) {
        match std::env::var("KILN_DEVICE") {
            Ok(v) if !v.is_empty() => match parse_override(&v) {
                Ok(None) => return (Device::Cpu, "CPU (KILN_DEVICE=cpu)".into()),
                Ok(Some(ordinal)) => {
                    return match Device::cuda(ordinal) {
                        Ok(d) => {
                            let line = format!("{} (KILN_DEVICE={v})", d.describe());
                            (d, line)
                        }
                        Err(e) => (Device::Cpu, format!("CPU: KILN_DEVICE={v} asked for a GPU but {e}")),
                    }
                }
                Err(e) => return (Device::Cpu, format!("CPU: {e}")),
            },
            _ => {}
        }
        let libs = cuda_libs::probe();
        if !libs.driver {
            return (Device::Cpu, "CPU: no NVIDIA driver (libcuda) on this machine".into());
        }
        if !libs.all_present() {
            return (
                Device::Cpu,
                format!("CPU: NVIDIA driver found but not {} (set KILN_CUDA_LIB_DIRS)", libs.missing().join(", ")),
            );
        }
        match Device::cuda(0) {
            Ok(d) => {
                let line = d.describe();
                (d, line)
            }
            Err(e) => (Device::Cpu, format!("CPU: CUDA libraries present but {e}")),
        }
    }

    /// Open CUDA GPU `ordinal`. Errors (never panics) when a library or the GPU is missing.
    pub fn cuda(ordinal: usize) -> Result<Device, DeviceError> {
        let libs = cuda_libs::probe();
        if !libs.all_present() {
            return Err(DeviceError::LibrariesMissing { missing: libs.missing() });
        }
        let count = gpu_count()?;
        if ordinal >= count {
            return Err(DeviceError::NoSuchGpu { ordinal, count });
        }
        Ok(Device::Cuda(Arc::new(CudaBackend::open(ordinal)?)))
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    pub fn cuda_backend(&self) -> Option<&Arc<CudaBackend>> {
        match self {
            Device::Cuda(b) => Some(b),
            Device::Cpu => None,
        }
    }

    /// `cpu` or `cuda:N`.
    pub fn label(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(b) => format!("cuda:{}", b.ordinal()),
        }
    }

    /// One line: which device, what it is.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => format!("CPU ({} threads)", rayon::current_num_threads()),
            Device::Cuda(b) => format!(
                "CUDA: GPU {} {} ({}, {} SMs, {:.0} GiB)",
                b.ordinal(),
                b.name(),
                b.arch(),
                b.sm_count(),
                b.total_mem() as f64 / (1u64 << 30) as f64
            ),
        }
    }

    /// Wait until all queued work on the device is done; reports asynchronous GPU faults.
    pub fn synchronize(&self) -> Result<(), DeviceError> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(b) => Ok(b.synchronize()?),
        }
    }
}

/// `cpu` -> None, `cuda` -> Some(0), `cuda:N` -> Some(N).
fn parse_override(v: &str) -> Result<Option<usize>, DeviceError> {
    match v {
        "cpu" => Ok(None),
        "cuda" | "gpu" => Ok(Some(0)),
        _ => v
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| DeviceError::BadOverride(v.to_string())),
    }
}

fn gpu_count() -> Result<usize, DeviceError> {
    use crate::device::cuda_error::{drv, guarded};
    let n = guarded("counting GPUs", || {
        drv("cuInit", cudarc::driver::result::init())?;
        drv("counting GPUs", cudarc::driver::result::device::get_count())
    })?;
    Ok(n.max(0) as usize)
}
