//! `kiln-check-sampler`: the device sampler's CUDA kernel against the sampling specification
//! (`Sampler::sample`) and its CPU twin on random logits, then what one step's sampling costs
//! on the GPU against the argmax kernel and against the host path (copy the logits, sample on
//! the CPU). Needs an NVIDIA GPU; `--cpu` runs the correctness part on the twin alone.
//!
//! Cases: vocabularies 1 to 128256, f32/f16/bf16 logits, rows with exact ties, `-inf` masks,
//! a NaN, an all-`-inf` row; parameters drawn over temperature, top-k, top-p, min-p, the three
//! penalties (with random histories) and log-probabilities; about half the jobs carry a
//! grammar mask (dense, sparse, a single token, a tied maximum removed, nothing allowed),
//! checked against the engine's host path for a constrained row (`apply_mask`, then
//! `Sampler::sample`). Tokens and errors must be equal; log-probabilities within 1e-5 (CUDA's
//! `log` against Rust's), top-n ids equal. The timing table has a masked setting too.

use kiln_runtime::sample::constraint::{apply_mask, mask_words};
use kiln_runtime::sample::device::{self, SampleJob};
use kiln_runtime::sample::{rng, Sampler, SamplingParams, TokenHistory};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};
use std::process::ExitCode;
use std::time::Instant;

/// Counter-based random numbers (the sampler's own SplitMix64).
struct Rand {
    seed: u64,
    n: u64,
}

impl Rand {
    fn u64(&mut self) -> u64 {
        self.n += 1;
        rng::bits(self.seed, self.n)
    }
    fn below(&mut self, m: u64) -> u64 {
        self.u64() % m.max(1)
    }
    fn unit(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// One random logits row of `vocab` entries, in one of several shapes.
fn logits_row(r: &mut Rand, vocab: usize, kind: u64) -> Vec<f32> {
    let levels = [-3.5f32, -1.0, 0.0, 0.25, 1.0, 2.5, 7.0];
    (0..vocab)
        .map(|_| match kind {
            0 => r.unit() * 16.0 - 8.0,
            1 => r.pick(&levels),
            2 => {
                if r.below(4) == 0 {
                    f32::NEG_INFINITY
                } else {
                    r.unit() * 4.0 - 2.0
                }
            }
            // Peaked: one large logit over a flat floor, as trained models often give.
            _ => {
                if r.below(vocab as u64 / 8 + 1) == 0 {
                    12.0 + r.unit()
                } else {
                    r.unit() * 2.0
                }
            }
        })
        .collect()
}

/// A grammar mask for `row`, or none: dense (about half allowed), sparse (about 1 in 64), a
/// single token, every token but the row's argmax (a tie's lowest id, when it has one), or
/// nothing allowed.
fn mask(r: &mut Rand, row: &[f32]) -> Option<Vec<u32>> {
    let v = row.len();
    let argmax = (0..v).fold(0, |best, i| if row[i] > row[best] { i } else { best });
    let kind = r.below(10);
    let one = r.below(v as u64) as usize;
    let mut m = vec![0u32; mask_words(v)];
    for t in 0..v {
        let keep = match kind {
            0 | 1 => r.below(2) == 0,
            2 | 3 => r.below(64) == 0,
            4 => t == one,
            5 => t != argmax,
            6 => false,
            _ => return None,
        };
        if keep {
            m[t / 32] |= 1 << (t % 32);
        }
    }
    Some(m)
}

/// The engine's host path for a row: the mask (if any) applied to a copy, then the sampler.
fn host_sample(
    s: &mut Sampler,
    row: &[f32],
    mask: Option<&[u32]>,
    h: &TokenHistory,
) -> Result<kiln_runtime::sample::Sampled, kiln_runtime::sample::SamplingError> {
    match mask {
        None => s.sample(row, h),
        Some(m) => {
            let mut l = row.to_vec();
            apply_mask(&mut l, m);
            s.sample(&l, h)
        }
    }
}

fn params(r: &mut Rand) -> SamplingParams {
    SamplingParams {
        temperature: r.pick(&[0.0, 1.0, 0.05, 0.7, 1.5, 3.0]),
        top_k: r.pick(&[None, Some(1), Some(5), Some(50), Some(1000)]),
        top_p: r.pick(&[1.0, 0.9, 0.5, 0.01]),
        min_p: r.pick(&[0.0, 0.05, 0.5]),
        repetition_penalty: r.pick(&[1.0, 1.3, 0.8]),
        presence_penalty: r.pick(&[0.0, 0.5, -1.0]),
        frequency_penalty: r.pick(&[0.0, 0.25]),
        logprobs: r.pick(&[None, Some(0), Some(5), Some(20)]),
        seed: Some(r.u64()),
        ..SamplingParams::default()
    }
}

/// Correctness over `cases` random batches; returns (jobs checked, failures).
fn check(gpu: Option<&Device>, cases: u64) -> Result<(usize, usize), String> {
    let (mut jobs_checked, mut failures) = (0, 0);
    for case in 0..cases {
        let mut r = Rand { seed: 0x5a4d_7e11 ^ case, n: 0 };
        let vocab = r.pick(&[1usize, 2, 37, 1000, 49_152, 128_256]);
        let dtype = r.pick(&[DType::F32, DType::BF16, DType::F16]);
        let rows = r.pick(&[1usize, 3, 16]);
        let mut data = Vec::with_capacity(rows * vocab);
        for i in 0..rows {
            let kind = r.below(4);
            let mut row = logits_row(&mut r, vocab, kind);
            if case % 7 == 3 && i == 0 {
                let j = r.below(vocab as u64) as usize;
                row[j] = f32::NAN;
            }
            if case % 11 == 5 && i == rows - 1 {
                row.fill(f32::NEG_INFINITY);
            }
            data.extend(row);
        }
        let cpu = Tensor::from_f32_as(&Device::Cpu, dtype, &data, rows, vocab).map_err(|e| e.to_string())?;
        let host = cpu.to_host_f32().map_err(|e| e.to_string())?;
        // Two jobs per row, each with its own parameters and history, a few steps deep.
        let mut jobs: Vec<SampleJob> = Vec::new();
        let mut want = Vec::new();
        for j in 0..2 * rows {
            let p = params(&mut r);
            let mut s = Sampler::new(&p).map_err(|e| e.to_string())?;
            let prompt: Vec<u32> = (0..r.below(40)).map(|_| r.below(vocab as u64) as u32).collect();
            let mut h = TokenHistory::new(&prompt);
            for _ in 0..r.below(20) {
                h.push_output(r.below(vocab as u64) as u32);
            }
            for _ in 0..r.below(3) {
                s.accept_external(); // a few earlier draws
            }
            let row = j % rows;
            let logits = &host[row * vocab..(row + 1) * vocab];
            let m = mask(&mut r, logits);
            let job = s.device_job(&h, vocab, row).map_err(|e| e.to_string())?;
            want.push(host_sample(&mut s, logits, m.as_deref(), &h));
            jobs.push(SampleJob { mask: m, ..job });
        }
        let twin = device::sample(&cpu, &jobs).map_err(|e| e.to_string())?;
        let got = match gpu {
            Some(g) => {
                let t = cpu.to_device(g).map_err(|e| e.to_string())?;
                device::sample(&t, &jobs).map_err(|e| e.to_string())?
            }
            None => twin.clone(),
        };
        for (j, ((g, w), t)) in got.iter().zip(&want).zip(&twin).enumerate() {
            jobs_checked += 1;
            let logprobs = jobs[j].logprobs.is_some();
            if !device::same_outcome(g, w, logprobs) || !device::same_outcome(t, w, logprobs) {
                failures += 1;
                if failures <= 10 {
                    let mut shown = jobs[j].clone();
                    let allowed = shown.mask.take().map(|m| m.iter().map(|w| w.count_ones()).sum::<u32>());
                    println!("FAIL case {case} job {j} vocab {vocab} {dtype} (mask allows {allowed:?}): {shown:?}\n  device {g:?}\n  twin   {t:?}\n  spec   {w:?}");
                }
            }
        }
    }
    Ok((jobs_checked, failures))
}

fn median_ms(reps: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    for _ in 0..3 {
        f()?;
    }
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(kiln_runtime::device::timing::median(&mut v))
}

/// Per-step cost of sampling `batch` rows of `vocab` bf16 logits: device sampler (upload of
/// the jobs, the kernel, the results back), argmax kernel, host path.
fn timing(gpu: &Device) -> Result<(), String> {
    println!("\n| vocab | batch | settings | device sampler ms | argmax kernel ms | host path ms (copy + CPU sampler) |\n|---|---|---|---|---|---|");
    // (label, parameters, whether each row carries a grammar mask allowing every other token)
    let settings: [(&str, SamplingParams, bool); 4] = [
        ("T 1", SamplingParams { seed: Some(1), ..SamplingParams::default() }, false),
        (
            "T 0.8, top-k 50, top-p 0.9",
            SamplingParams {
                temperature: 0.8,
                top_k: Some(50),
                top_p: 0.9,
                seed: Some(1),
                ..SamplingParams::default()
            },
            false,
        ),
        (
            "T 0.8, top-p 0.9, penalties, 5 logprobs",
            SamplingParams {
                temperature: 0.8,
                top_p: 0.9,
                repetition_penalty: 1.1,
                frequency_penalty: 0.2,
                logprobs: Some(5),
                seed: Some(1),
                ..SamplingParams::default()
            },
            false,
        ),
        (
            "T 0.8, top-p 0.9, grammar mask (half the vocabulary)",
            SamplingParams { temperature: 0.8, top_p: 0.9, seed: Some(1), ..SamplingParams::default() },
            true,
        ),
    ];
    for (vocab, batch) in [(49_152usize, 1usize), (49_152, 64), (128_256, 1), (128_256, 64), (128_256, 256)] {
        let mut r = Rand { seed: 7, n: 0 };
        let data: Vec<f32> = (0..batch).flat_map(|_| logits_row(&mut r, vocab, 3)).collect();
        let cpu = Tensor::from_f32_as(&Device::Cpu, DType::BF16, &data, batch, vocab).map_err(|e| e.to_string())?;
        let t = cpu.to_device(gpu).map_err(|e| e.to_string())?;
        let history = TokenHistory::new(&(0..256).map(|i| (i * 97 % vocab) as u32).collect::<Vec<_>>());
        let half: Vec<u32> = vec![0x5555_5555; mask_words(vocab)];
        for (label, p, masked) in &settings {
            let m = masked.then_some(half.as_slice());
            let mut samplers: Vec<Sampler> =
                (0..batch).map(|_| Sampler::new(p)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
            let jobs: Vec<SampleJob> = samplers
                .iter()
                .enumerate()
                .map(|(i, s)| s.device_job(&history, vocab, i).map(|j| SampleJob { mask: m.map(<[u32]>::to_vec), ..j }))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let dev_ms = median_ms(20, || device::sample(&t, &jobs).map(|_| ()).map_err(|e| e.to_string()))?;
            let argmax_ms = median_ms(20, || {
                let mut ids = Tensor::uninit(gpu, DType::I32, 1, batch).map_err(|e| e.to_string())?;
                kiln_runtime::device::device_kernels::argmax_rows(&t, &mut ids).map_err(|e| e.to_string())?;
                ids.to_host::<i32>().map(|_| ()).map_err(|e| e.to_string())
            })?;
            let host_ms = median_ms(5, || {
                let l = t.to_host_f32().map_err(|e| e.to_string())?;
                for (i, s) in samplers.iter_mut().enumerate() {
                    host_sample(s, &l[i * vocab..(i + 1) * vocab], m, &history).map_err(|e| e.to_string())?;
                }
                Ok(())
            })?;
            println!("| {vocab} | {batch} | {label} | {dev_ms:.3} | {argmax_ms:.3} | {host_ms:.3} |");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cpu_only = args.iter().any(|a| a == "--cpu");
    let cases: u64 = args
        .iter()
        .position(|a| a == "--cases")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let gpu = if cpu_only {
        None
    } else {
        match Device::cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("kiln-check-sampler: no GPU ({e}); `--cpu` checks the twin alone");
                return ExitCode::FAILURE;
            }
        }
    };
    if let Some(g) = &gpu {
        println!("device: {}", g.describe());
    }
    let t = Instant::now();
    let (n, failed) = match check(gpu.as_ref(), cases) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("kiln-check-sampler: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "sampler check ({}): {n} jobs in {cases} random batches, {failed} failed ({:.1} s)",
        if gpu.is_some() { "CUDA kernel and CPU twin vs Sampler" } else { "CPU twin vs Sampler" },
        t.elapsed().as_secs_f64()
    );
    if let Some(g) = &gpu {
        if let Err(e) = timing(g) {
            eprintln!("kiln-check-sampler: timing: {e}");
            return ExitCode::FAILURE;
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
