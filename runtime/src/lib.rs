//! kiln-runtime: devices, tensors, fused-kernel launch, GEMMs, the paged KV cache, the
//! scheduler, sampling and the engine loop.
pub mod attention;
pub mod cache_dir;
pub mod engine;
pub mod gather;
pub mod kv;
pub mod model;
pub mod nvrtc_check;
pub mod sample;
pub mod sched;

// Devices, tensors, fused-kernel launch, GEMM.
pub mod cuda_backend;
pub mod cuda_error;
pub mod cuda_libs;
pub mod device;
pub mod device_kernels;
pub mod element;
pub mod fused;
mod fused_bind;
mod fused_cpu;
mod fused_cuda;
pub mod fused_def;
pub mod gemm;
mod gemm_cpu;
mod gemm_cuda;
pub mod gpu_check;
pub mod graph;
pub mod host_buf;
pub mod kernel_cache;
pub mod linear;
pub mod ptx_cache;
pub mod tensor;
mod tensor_io;
pub mod timing;

pub use device::{Device, DeviceError};
pub use element::Element;
pub use fused::{launch, Arg, FusedError};
pub use gemm::{matmul, GemmError};
pub use tensor::{HostView, HostViewMut, Storage, Tensor, TensorError};
