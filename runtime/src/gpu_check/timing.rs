//! Timing for the GPU check: the runtime's CUDA-event timing ([`crate::device::timing`]) and how many
//! buffer sets to rotate through so timed launches don't run from L2.

use super::CheckError;
use crate::device::cuda_backend::CudaBackend;

/// [`crate::device::timing::median_us`] with the check's error type.
pub(crate) fn median_us(
    b: &CudaBackend,
    warmup: usize,
    reps: usize,
    f: impl FnMut(usize) -> Result<(), CheckError>,
) -> Result<f64, CheckError> {
    crate::device::timing::median_us(b, warmup, reps, f)
}

/// How many copies of a `bytes`-sized working set to rotate through so that consecutive
/// launches don't find their data in L2: enough to exceed 3× L2, at least 2, at most 64.
pub(crate) fn rotation_sets(bytes: usize, l2: usize) -> usize {
    let bytes = bytes.max(1);
    (3 * l2.max(1)).div_ceil(bytes).clamp(2, 64)
}
