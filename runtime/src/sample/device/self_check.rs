//! The device sampler's start-up check: before an engine trusts a GPU to sample, it runs a
//! small batch of jobs (every setting, the model's vocabulary size) through the kernel and
//! through the CPU twin and requires the same tokens, errors and log-probabilities. A driver,
//! architecture or build that breaks the kernel's exactness then costs speed (the engine
//! samples on the host), never wrong tokens.

use super::job::SampleJob;
use super::{same_outcome, sample};
use crate::device::tensor::Tensor;
use crate::sample::constraint::mask_words;
use crate::sample::rng;
use crate::DType;
use crate::Device;

/// Rows of the check batch.
const ROWS: usize = 4;

/// A grammar mask over `vocab` ids allowing those `keep` picks.
fn mask(vocab: usize, keep: impl Fn(usize) -> bool) -> Option<Vec<u32>> {
    let mut m = vec![0u32; mask_words(vocab)];
    for t in (0..vocab).filter(|&t| keep(t)) {
        m[t / 32] |= 1 << (t % 32);
    }
    Some(m)
}

/// The check's jobs: two or three per row, covering greedy, temperature, top-k, top-p, min-p,
/// penalties, log-probabilities and grammar masks (a sparse one, and one allowing a single
/// token under penalties).
fn jobs(vocab: usize) -> Vec<SampleJob> {
    let v = vocab as u32;
    let base = |row: usize| SampleJob {
        row,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repetition: 1.0,
        presence: 0.0,
        frequency: 0.0,
        seed: 0x6b69_6c6e + row as u64,
        draw: 3,
        logprobs: None,
        penalties: Vec::new(),
        mask: None,
    };
    let small_k = (vocab as u32 / 2).clamp(1, 40) % v.max(1);
    vec![
        SampleJob { temperature: 0.0, logprobs: Some(5), ..base(0) },
        SampleJob { temperature: 0.8, top_p: 0.9, ..base(0) },
        SampleJob { top_k: small_k, logprobs: Some(0), ..base(1) },
        SampleJob { min_p: 0.1, temperature: 1.5, ..base(1) },
        SampleJob {
            repetition: 1.3,
            presence: 0.5,
            frequency: 0.2,
            penalties: vec![(0, 2), (v / 2, 0), (v - 1, 1)],
            top_p: 0.5,
            ..base(2)
        },
        SampleJob { temperature: 0.3, top_k: small_k, top_p: 0.7, min_p: 0.02, logprobs: Some(20), ..base(2) },
        SampleJob { temperature: 2.0, ..base(3) },
        SampleJob { temperature: 0.0, penalties: vec![(v / 3, 4)], repetition: 1.1, frequency: 0.5, ..base(3) },
        SampleJob { temperature: 0.7, top_k: small_k, logprobs: Some(3), mask: mask(vocab, |t| t % 3 != 1), ..base(1) },
        SampleJob {
            temperature: 0.0,
            penalties: vec![(v / 2, 1)],
            presence: 0.5,
            logprobs: Some(2),
            mask: mask(vocab, |t| t == vocab / 2),
            ..base(3)
        },
    ]
    .into_iter()
    .map(|mut j| {
        j.penalties.sort_unstable();
        j.penalties.dedup_by_key(|p| p.0);
        j
    })
    .collect()
}

/// Runs the check on `dev` for a `vocab`-wide model. `Ok` on the CPU (the twin is the
/// reference there); on a GPU, `Err` says how the kernel disagreed or failed.
pub fn self_check(dev: &Device, vocab: usize) -> Result<(), String> {
    if dev.is_cpu() || vocab == 0 {
        return Ok(());
    }
    // Peaked rows with ties and masks, as bf16 logits (the dtype models run in on a GPU).
    let data: Vec<f32> = (0..ROWS * vocab)
        .map(|i| {
            let b = rng::bits(0x7365_6c66, i as u64);
            match b % 16 {
                0 => f32::NEG_INFINITY,
                1 => 9.0 + (b >> 60) as f32,
                2..=4 => 1.0,
                _ => ((b >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0,
            }
        })
        .collect();
    let host = Tensor::from_f32_as(&Device::Cpu, DType::BF16, &data, ROWS, vocab).map_err(|e| e.to_string())?;
    let gpu = host.to_device(dev).map_err(|e| e.to_string())?;
    let jobs = jobs(vocab);
    let got = sample(&gpu, &jobs).map_err(|e| e.to_string())?;
    // On a CPU tensor `sample` runs the twin, over the same bf16-rounded logits.
    let want = sample(&host, &jobs).map_err(|e| e.to_string())?;
    for (i, (g, want)) in got.iter().zip(&want).enumerate() {
        if !same_outcome(g, want, jobs[i].logprobs.is_some()) {
            return Err(format!("job {i} ({:?}): the GPU gave {g:?}, the CPU twin {want:?}", jobs[i]));
        }
    }
    // The batch must have exercised real sampling, not only errors.
    if got.iter().filter(|g| g.is_ok()).count() < jobs.len() / 2 {
        return Err("too few jobs sampled a token".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_fit_any_vocabulary() {
        for vocab in [1usize, 2, 3, 50, 49_152] {
            for j in jobs(vocab) {
                assert!(j.row < ROWS);
                assert!((j.top_k as usize) < vocab, "top_k {} for vocab {vocab}", j.top_k);
                assert!(j.penalties.iter().all(|&(t, _)| (t as usize) < vocab));
                assert!(j.mask.as_ref().is_none_or(|m| m.len() == mask_words(vocab)));
            }
        }
    }

    #[test]
    fn the_cpu_passes_trivially() {
        assert_eq!(self_check(&Device::Cpu, 100), Ok(()));
    }
}
