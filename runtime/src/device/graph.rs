//! CUDA graphs: capture the work a closure queues on the backend's stream, replay it later
//! with one launch. Decode steps are captured once per batch shape and replayed every step,
//! which removes the per-kernel launch cost (hundreds of launches a step).
//!
//! Invariants: a captured graph reads and writes exactly the device addresses its kernels were
//! given at capture time, so its inputs must be rewritten in place (same allocations) before a
//! replay, and nothing it touches may be freed while it lives; every CUDA module it uses must
//! be loaded before capture (run the work once eagerly first), since loading is not a stream
//! operation. Capture is relaxed-mode, ended even when the closure fails.

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::{drv, CudaError};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

/// One instantiated graph on a backend's stream.
pub struct CapturedGraph {
    graph: CudaGraph,
}

// SAFETY: a graph exec may be launched from any thread when calls on it are serialised;
// kiln keeps each graph behind its owner's lock and launches it only on the stream it was
// captured on.
unsafe impl Send for CapturedGraph {}

impl CapturedGraph {
    /// Replay on the stream it was captured on (asynchronous).
    pub fn launch(&self) -> Result<(), CudaError> {
        drv("launching a CUDA graph", self.graph.launch())
    }
}

/// Capture everything `f` queues on `b`'s stream into a graph; returns the graph and `f`'s
/// value.
pub fn capture<T, E: From<CudaError>>(
    b: &CudaBackend,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<(CapturedGraph, T), E> {
    drv("beginning a stream capture", b.stream().begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED))?;
    let value = f();
    let ended = b.stream().end_capture(CUgraphInstantiate_flags(0));
    let value = value?;
    let graph = drv("ending a stream capture", ended)?.ok_or_else(|| CudaError::Driver {
        op: "ending a stream capture: nothing was captured".into(),
        source: cudarc::driver::DriverError(cudarc::driver::sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED),
    })?;
    drv("uploading a CUDA graph", graph.upload())?;
    Ok((CapturedGraph { graph }, value))
}
