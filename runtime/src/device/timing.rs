//! Timing GPU work with CUDA events: warm-up launches first (module load, first-touch and
//! clock ramp stay out of the numbers), then one event pair around each timed launch, all
//! queued back to back; the median of the per-launch times is the result.
//!
//! Small kernels run faster than the host can queue them, and then an event pair would time
//! the host's launch overhead (the GPU idles between the start event and the kernel). So the
//! timed launches are queued behind a long memset that keeps the GPU busy while the host
//! queues them all: each start event then fires when the previous kernel ends.

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::{drv, CudaError};
use cudarc::driver::sys::CUevent_flags;

/// Size of the scratch buffer the busy memsets write.
const BUSY_CHUNK: usize = 512 << 20;

/// Median microseconds of `f(i)` over `reps` launches after `warmup` untimed ones. `i` counts
/// all calls, so callers can rotate buffer sets with `i % sets`.
pub fn median_us<E: From<CudaError>>(
    b: &CudaBackend,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut(usize) -> Result<(), E>,
) -> Result<f64, E> {
    for i in 0..warmup {
        f(i)?;
    }
    b.synchronize()?;
    let ctx = b.context();
    let mut events = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = drv("creating a timing event", ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))?;
        let end = drv("creating a timing event", ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))?;
        events.push((start, end));
    }
    // About 50 MB of memset per timed launch (~20 µs of GPU time each at ~2.5 TB/s, more than
    // the host needs to queue one launch).
    let busy_bytes = BUSY_CHUNK;
    let busy = crate::device::tensor_io::cuda_alloc(b, busy_bytes, false)?;
    let busy_ptr = crate::device::tensor_io::base_ptr(&busy);
    for _ in 0..(reps * 50_000_000).div_ceil(busy_bytes) {
        // SAFETY: `busy` is a live allocation of `busy_bytes` bytes, freed after the sync below.
        drv("queueing the busy memset", unsafe {
            cudarc::driver::result::memset_d8_async(busy_ptr, 0, busy_bytes, b.stream().cu_stream())
        })?;
    }
    for (i, (start, end)) in events.iter().enumerate() {
        drv("recording an event", start.record(b.stream()))?;
        f(warmup + i)?;
        drv("recording an event", end.record(b.stream()))?;
    }
    b.synchronize()?;
    drop(busy);
    let mut us = Vec::with_capacity(events.len());
    for (start, end) in &events {
        us.push(drv("reading an event pair", start.elapsed_ms(end))? as f64 * 1e3);
    }
    Ok(median(&mut us))
}

/// The median of `v` (sorted in place); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Seconds this process has run on a CPU, all threads together (`/proc/self/task/*/schedstat`),
/// or `None` where /proc does not say: a clock for CPU benchmarks on a shared machine, where
/// wall time counts other processes' use of the cores too.
pub fn process_cpu_seconds() -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}
