//! kiln-runtime: devices, tensors, fused-kernel launch, GEMMs, the paged KV cache, the
//! scheduler, sampling and the engine loop.
pub mod kv;
pub mod sched;
pub mod sample;
