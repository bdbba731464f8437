//! The device sampler: [`crate::sample::Sampler`]'s pipeline run where the logits are, so a GPU
//! step sends back token ids (and requested log-probabilities) instead of a `[rows, vocab]`
//! logits matrix.
//!
//! A caller turns each sequence's sampler into a [`SampleJob`]
//! ([`crate::sample::Sampler::device_job`]), calls [`sample`] with the step's logits tensor, and
//! hands each result back to its sampler ([`crate::sample::Sampler::accept_external`]).
//!
//! Contract: for every job, the token equals what `Sampler::sample` picks from the same logits
//! row and history — exactly, not in distribution: the spec's arithmetic is integer or
//! bit-specified f32, and the kernel follows it operation by operation. A job with a grammar
//! mask ([`SampleJob::mask`]) is held to what the engine's host path does with a constrained
//! row: `Sampler::sample` on the row after [`super::constraint::apply_mask`]. Log-probabilities
//! agree up to the last bit of `ln`. The same errors come back for the same rows (a NaN or
//! `+inf` logit after penalties, every logit `-inf`). `logprob` is 0 when the job asked for no
//! log-probabilities.
//!
//! On a CUDA device the work is one kernel launch (`kernel.rs`, a thread block per job); on the
//! CPU it is the kernel's twin (`twin.rs`), which runs the same algorithm one job at a time. The
//! engine uses the CPU form only when told to (tests of the device path without a GPU).

mod job;
mod kernel;
mod self_check;
mod twin;

pub use job::{pack, unpack_job, BadRecord, PackedJobs, SampleJob, DESC_WORDS, OUT_WORDS};
pub use kernel::source;
pub use self_check::self_check;

use super::{Sampled, SamplingError};
use crate::device::cuda_error::CudaError;
use crate::device::tensor::{Tensor, TensorError};
use crate::Device;

/// Why a batch of jobs could not be run at all (per-row sampling failures are not this: they
/// come back as that row's [`SamplingError`]).
#[derive(Debug, thiserror::Error)]
pub enum DeviceSampleError {
    #[error("device sampling: {0}")]
    Shape(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error(transparent)]
    BadRecord(#[from] BadRecord),
}

/// Whether two results of one job agree as the contract says: the same token, or the same
/// error (a NaN in `NonFiniteLogit` equal to itself); with `logprobs`, log-probabilities
/// within 1e-5 relative (two `ln`s) and the same top-n ids.
pub fn same_outcome(a: &Result<Sampled, SamplingError>, b: &Result<Sampled, SamplingError>, logprobs: bool) -> bool {
    let close = |x: f32, y: f32| x == y || (x - y).abs() <= 1e-5 * y.abs().max(1.0);
    match (a, b) {
        (Ok(x), Ok(y)) => {
            x.token == y.token
                && (!logprobs
                    || (close(x.logprob, y.logprob)
                        && x.top_logprobs.len() == y.top_logprobs.len()
                        && x.top_logprobs.iter().zip(&y.top_logprobs).all(|(p, q)| p.0 == q.0 && close(p.1, q.1))))
        }
        // Debug text, not `==`: a NaN logit must compare equal to itself.
        (Err(x), Err(y)) => format!("{x:?}") == format!("{y:?}"),
        _ => false,
    }
}

/// Runs `jobs` over the `[rows, vocab]` float tensor `logits`, on the tensor's device, and
/// returns one result per job, in order.
pub fn sample(logits: &Tensor, jobs: &[SampleJob]) -> Result<Vec<Result<Sampled, SamplingError>>, DeviceSampleError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    if !logits.dtype().is_float() {
        return Err(DeviceSampleError::Shape(format!("logits must be a float tensor, not {}", logits.dtype())));
    }
    let vocab = logits.cols();
    if vocab == 0 || vocab > super::math::MAX_VOCAB {
        return Err(DeviceSampleError::Shape(format!(
            "a vocabulary of {vocab} is outside 1..={}",
            super::math::MAX_VOCAB
        )));
    }
    if let Some(j) = jobs.iter().find(|j| j.row >= logits.rows()) {
        return Err(DeviceSampleError::Shape(format!("job asks for logits row {} of {}", j.row, logits.rows())));
    }
    let words = super::constraint::mask_words(vocab);
    if let Some(j) = jobs.iter().find(|j| {
        j.penalties.iter().any(|&(t, _)| t as usize >= vocab)
            || j.top_k as usize >= vocab
            || j.mask.as_ref().is_some_and(|m| m.len() != words)
    }) {
        return Err(DeviceSampleError::Shape(format!("job for row {} does not fit a vocabulary of {vocab}", j.row)));
    }
    // Mask offsets travel as i32 words.
    let masked = jobs.iter().filter(|j| j.mask.is_some()).count();
    if masked.saturating_mul(words) > i32::MAX as usize {
        return Err(DeviceSampleError::Shape(format!("{masked} masks of {words} words are too many")));
    }
    let packed = pack(jobs);
    let out = match logits.device() {
        Device::Cpu => {
            let host = logits.to_host_f32()?;
            let mut out = vec![0i32; jobs.len() * OUT_WORDS];
            twin::run(&host, vocab, &packed, &mut out);
            out
        }
        Device::Cuda(b) => kernel::run(b, logits, &packed)?,
    };
    (0..jobs.len()).map(|i| Ok(job::read_record(&out, i, vocab)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Sampler, SamplingParams, TokenHistory};

    #[test]
    fn a_mask_that_does_not_fit_the_vocabulary_is_refused() {
        let logits = Tensor::from_host(&Device::Cpu, &[0.0f32; 40], 1, 40).unwrap();
        let job = Sampler::new(&SamplingParams::greedy()).unwrap().device_job(&TokenHistory::new(&[]), 40, 0).unwrap();
        for words in [1, 3] {
            let bad = SampleJob { mask: Some(vec![u32::MAX; words]), ..job.clone() };
            assert!(matches!(sample(&logits, &[bad]), Err(DeviceSampleError::Shape(_))), "{words} words");
        }
        let fits = SampleJob { mask: Some(vec![0, 1 << 7]), ..job };
        assert_eq!(sample(&logits, &[fits]).unwrap()[0].as_ref().map(|s| s.token), Ok(39));
    }
}
