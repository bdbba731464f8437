//! kiln-runtime, in two layers:
//! - the device layer ([`device`]): devices, tensors, host buffers, CUDA libraries, NVRTC and
//!   kernel caches, fused-kernel launch, GEMMs and the `linear` seam, graphs, timing;
//! - the serving core above it: the model interface ([`model`]), paged attention plans
//!   ([`attention`]), the KV allocator ([`kv`]), the scheduler ([`sched`]), sampling
//!   ([`sample`]), the engine loop ([`engine`]) and the tensor-parallel collectives
//!   ([`comm`]); plus the GPU check harness ([`gpu_check`]) and the cache-directory rule
//!   ([`cache_dir`]).
//!
//! The layering is one-way: nothing in `device` imports from the serving core.
pub mod attention;
pub mod cache_dir;
pub mod comm;
pub mod device;
pub mod engine;
pub mod gpu_check;
pub mod kv;
pub mod model;
pub mod sample;
pub mod sched;

pub use device::dtype::DType;
pub use device::element::Element;
pub use device::fused::{launch, Arg, FusedError};
pub use device::gemm::{matmul, GemmError};
pub use device::tensor::{HostView, HostViewMut, Storage, Tensor, TensorError};
pub use device::{Device, DeviceError};
