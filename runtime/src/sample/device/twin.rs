//! The CPU twin of the device sampler kernel: the same phases, the same radix selections and
//! the same exact arithmetic, run one job at a time with loops where the kernel has a thread
//! block. It exists to pin the kernel's *algorithm* down on machines without a GPU: its tests
//! hold it equal to [`crate::sample::Sampler`] (the specification) on random rows, and the
//! GPU check holds the kernel equal to both.
//!
//! Phases of one job (the kernel's comments carry the same numbers):
//! 1. the grammar's mask (every disallowed logit `-inf`, [`apply_mask`] as the engine's host
//!    path applies it), then the penalties, into a scratch copy of the row (only when the job
//!    has a mask or penalty entries; the kernel reads the mask on the fly when it has no
//!    penalties, which gives the same values);
//! 2. scan: the first bad logit (NaN or `+inf`), else the largest rank key (max logit, lowest
//!    id), else "all masked";
//! 3. the log-normaliser `ln(sum q(e(l - max)) / 2^40)` when log-probabilities are wanted;
//! 4. greedy: the argmax; otherwise truncation as a rank-key floor and its mass:
//!    top-k = the k-th largest key ([`select_kth`]), top-p = the key where the running mass
//!    from the top first reaches the target ([`select_mass`]), min-p = the smallest key whose
//!    weight reaches `min_p`; the narrowest (largest) floor wins;
//! 5. the draw: `r = below(seed, draw, mass)` and the first kept token by id whose running mass
//!    exceeds `r`;
//! 6. the `n` best keys for top log-probabilities ([`select_kth`] again, then a sort of `n`).
//!
//! Radix selection runs most-significant byte first over the 64-bit rank keys: each pass
//! histograms (count, mass, a key) per byte value among keys that share the bytes chosen
//! so far, picks the bucket where the running count or mass (from the top) crosses, and stops
//! as soon as that bucket holds a single key.

use super::job::{unpack_job, write_record, PackedJobs, Record, SampleJob, OUT_WORDS};
use crate::sample::constraint::apply_mask;
use crate::sample::math::{exp_nonpos, key_id, quantize, rank_key, WEIGHT_SCALE};
use crate::sample::params::MAX_LOGPROBS;
use crate::sample::rng;

/// Runs every job of `jobs` over `logits` (rows of `vocab` f32, back to back), writing one
/// record per job into `out` (`jobs.len() * OUT_WORDS` words).
pub(crate) fn run(logits: &[f32], vocab: usize, jobs: &PackedJobs, out: &mut [i32]) {
    let mut scratch = Vec::new();
    for i in 0..jobs.len() {
        let job = unpack_job(jobs, i);
        let start = job.row * vocab;
        let row = &logits[start..start + vocab];
        run_job(row, &job, &mut scratch, &mut out[i * OUT_WORDS..(i + 1) * OUT_WORDS]);
    }
}

/// Phase 1 applied: the job's logits as the pipeline sees them.
struct Row<'a> {
    l: &'a [f32],
    max: f32,
    temperature: f32,
}

impl Row<'_> {
    fn key(&self, i: usize) -> u64 {
        rank_key(self.l[i], i as u32)
    }
    fn weight(&self, i: usize) -> f32 {
        let z = self.l[i] - self.max;
        exp_nonpos(if self.temperature == 1.0 { z } else { z / self.temperature })
    }
    fn mass(&self, i: usize) -> u64 {
        quantize(self.weight(i))
    }
}

fn run_job(raw: &[f32], job: &SampleJob, scratch: &mut Vec<f32>, out: &mut [i32]) {
    // 1. the mask, then the penalties (the same f32 operations as `penalty::apply_penalties`)
    let l: &[f32] = if job.penalties.is_empty() && job.mask.is_none() {
        raw
    } else {
        scratch.clear();
        scratch.extend_from_slice(raw);
        if let Some(mask) = &job.mask {
            apply_mask(scratch, mask);
        }
        for &(t, c) in &job.penalties {
            let x = &mut scratch[t as usize];
            if job.repetition != 1.0 {
                *x = if *x > 0.0 { *x / job.repetition } else { *x * job.repetition };
            }
            if c > 0 {
                *x = *x - c as f32 * job.frequency - job.presence;
            }
        }
        scratch
    };
    // 2. scan
    let mut best = 0u64;
    let mut first_bad = None;
    for (i, &x) in l.iter().enumerate() {
        if x.is_nan() || x == f32::INFINITY {
            first_bad = first_bad.or(Some(i));
        } else {
            best = best.max(rank_key(x, i as u32));
        }
    }
    if let Some(i) = first_bad {
        return write_record(out, Record::NonFinite { token: i as u32, value: l[i] });
    }
    let argmax = key_id(best) as usize;
    let max = l[argmax];
    if max == f32::NEG_INFINITY {
        return write_record(out, Record::AllMasked);
    }
    // 3. log-normaliser (temperature 1 weights)
    let unit = Row { l, max, temperature: 1.0 };
    let log_norm = job.logprobs.map(|_| {
        let total = (0..l.len()).map(|i| unit.mass(i)).fold(0u64, u64::wrapping_add);
        (total as f64 / f64::from(WEIGHT_SCALE)).ln()
    });
    let logprob = |i: usize| log_norm.map_or(0.0, |ln| (f64::from(l[i] - max) - ln) as f32);
    // 4-5. token
    let token = if job.temperature == 0.0 {
        argmax
    } else {
        draw(&Row { l, max, temperature: job.temperature }, job).unwrap_or(argmax)
    };
    // 6. top log-probabilities
    let mut top: Vec<(u32, f32)> = Vec::new();
    if let Some(n) = job.logprobs.filter(|&n| n > 0) {
        let n = (n as usize).min(l.len()).min(MAX_LOGPROBS);
        let floor = if n < l.len() { select_kth(&unit, n as u64) } else { 0 };
        let mut keys: Vec<u64> = (0..l.len()).map(|i| unit.key(i)).filter(|&k| k >= floor).collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        top = keys.iter().map(|&k| (key_id(k), logprob(key_id(k) as usize))).collect();
    }
    write_record(out, Record::Sampled { token: token as u32, logprob: logprob(token), top: &top });
}

/// Phases 4 and 5 for a job with temperature > 0. `None` only if the kept set's invariant
/// broke (the top token is kept and `r < total`); the caller then takes the argmax, as the
/// kernel does.
fn draw(row: &Row<'_>, job: &SampleJob) -> Option<usize> {
    let v = row.l.len();
    let all_mass = || (0..v).map(|i| row.mass(i)).fold(0u64, u64::wrapping_add);
    let mass_from =
        |floor: u64| (0..v).filter(|&i| row.key(i) >= floor).map(|i| row.mass(i)).fold(0u64, u64::wrapping_add);
    // (floor key, mass of the keys at or above it); the narrowest floor is the largest key.
    let mut cut: Option<(u64, u64)> = None;
    let mut narrow = |c: (u64, u64)| cut = Some(cut.map_or(c, |old| if c.0 > old.0 { c } else { old }));
    let mut survivors_floor = 0u64;
    let mut survivors_mass = None;
    if job.top_k > 0 {
        let kth = select_kth(row, u64::from(job.top_k));
        let m = mass_from(kth);
        narrow((kth, m));
        survivors_floor = kth;
        survivors_mass = Some(m);
    }
    if job.top_p < 1.0 {
        let q = survivors_mass.unwrap_or_else(all_mass);
        let target = f64::from(job.top_p) * q as f64;
        narrow(select_mass(row, survivors_floor, target));
    }
    if job.min_p > 0.0 {
        let mut key = u64::MAX;
        let mut m = 0u64;
        for i in 0..v {
            let w = row.weight(i);
            if w >= job.min_p {
                key = key.min(row.key(i));
                m = m.wrapping_add(quantize(w));
            }
        }
        narrow((key, m));
    }
    let (floor, total) = cut.unwrap_or_else(|| (0, all_mass()));
    let r = rng::below(job.seed, job.draw, total);
    let mut cum = 0u64;
    for i in 0..v {
        if row.key(i) >= floor {
            cum += row.mass(i);
            if cum > r {
                return Some(i);
            }
        }
    }
    None
}

/// One radix pass's histogram over byte values: key count, mass and a key.
struct Histogram {
    count: [u32; 256],
    mass: [u64; 256],
    /// A key of the bucket: the only one when its count is 1 (the kernel keeps any one).
    key: [u64; 256],
}

impl Histogram {
    /// Keys `>= floor` whose bytes above `shift` equal `prefix`'s.
    fn build(row: &Row<'_>, floor: u64, prefix: u64, mask: u64, shift: u32, with_mass: bool) -> Histogram {
        let mut h = Histogram { count: [0; 256], mass: [0; 256], key: [0; 256] };
        for i in 0..row.l.len() {
            let k = row.key(i);
            if k >= floor && k & mask == prefix {
                let b = ((k >> shift) & 255) as usize;
                h.count[b] += 1;
                h.key[b] = k;
                if with_mass {
                    h.mass[b] += row.mass(i);
                }
            }
        }
        h
    }
}

/// The `k`-th largest rank key of the row (`1 <= k <= vocab`).
fn select_kth(row: &Row<'_>, k: u64) -> u64 {
    let (mut prefix, mut mask, mut rem) = (0u64, 0u64, k);
    for shift in (0..8).rev().map(|d| d * 8) {
        let h = Histogram::build(row, 0, prefix, mask, shift, false);
        let mut sel = 0;
        for b in (0..256).rev() {
            if rem <= u64::from(h.count[b]) {
                sel = b;
                break;
            }
            rem -= u64::from(h.count[b]);
        }
        prefix |= (sel as u64) << shift;
        mask |= 255 << shift;
        if h.count[sel] == 1 {
            return h.key[sel];
        }
    }
    prefix
}

/// Among keys `>= floor`, the key at which the running mass from the top first reaches
/// `target` (`(mass as f64) >= target`), with that running mass.
fn select_mass(row: &Row<'_>, floor: u64, target: f64) -> (u64, u64) {
    let (mut prefix, mut mask, mut before) = (0u64, 0u64, 0u64);
    for shift in (0..8).rev().map(|d| d * 8) {
        let h = Histogram::build(row, floor, prefix, mask, shift, true);
        // The crossing bucket; if rounding ever left none, the last non-empty one.
        let mut sel = None;
        let mut last = 0;
        for b in (0..256).rev().filter(|&b| h.count[b] > 0) {
            if (before + h.mass[b]) as f64 >= target {
                sel = Some(b);
                break;
            }
            before += h.mass[b];
            last = b;
        }
        let sel = sel.unwrap_or_else(|| {
            before -= h.mass[last];
            last
        });
        prefix |= (sel as u64) << shift;
        mask |= 255 << shift;
        if h.count[sel] == 1 {
            return (h.key[sel], before + h.mass[sel]);
        }
    }
    (prefix, before + row.mass(key_id(prefix) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::constraint::allows;
    use crate::sample::device::job::{pack, read_record};
    use crate::sample::{Sampled, Sampler, SamplingError, SamplingParams, TokenHistory};

    fn twin(logits: &[f32], job: SampleJob) -> Result<crate::sample::Sampled, crate::sample::SamplingError> {
        let jobs = pack(&[job]);
        let mut out = vec![0; OUT_WORDS];
        run(logits, logits.len(), &jobs, &mut out);
        read_record(&out, 0, logits.len()).unwrap()
    }

    fn spec_job(p: &SamplingParams, history: &TokenHistory, vocab: usize) -> SampleJob {
        Sampler::new(p).unwrap().device_job(history, vocab, 0).unwrap()
    }

    #[test]
    fn select_kth_breaks_ties_by_id() {
        let l = [1.0f32, 2.0, 2.0, 2.0, 0.0, -0.0];
        let row = Row { l: &l, max: 2.0, temperature: 1.0 };
        let ids: Vec<u32> = (1..=6).map(|k| key_id(select_kth(&row, k))).collect();
        assert_eq!(ids, vec![1, 2, 3, 0, 4, 5]);
    }

    #[test]
    fn select_mass_finds_the_crossing_key() {
        // Distinct logits in a scrambled order, against a plain running sum in rank order.
        let l: Vec<f32> = (0..300).map(|i| -((i * 7919 % 300) as f32) * 0.01).collect();
        let row = Row { l: &l, max: 0.0, temperature: 1.0 };
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(row.key(i)));
        let total: u64 = order.iter().map(|&i| row.mass(i)).sum();
        for p in [1e-9, 0.1, 0.5, 0.77, 0.999, 1.0] {
            let target = p * total as f64;
            let mut cum = 0;
            let want = order
                .iter()
                .find_map(|&i| {
                    cum += row.mass(i);
                    ((cum as f64) >= target).then_some((row.key(i), cum))
                })
                .unwrap();
            assert_eq!(select_mass(&row, 0, target), want, "p {p}");
        }
    }

    #[test]
    fn equals_the_sampler_on_a_few_fixed_cases() {
        let logits: Vec<f32> = (0..500).map(|i| ((i * 37 % 101) as f32) * 0.05 - 2.0).collect();
        let mut h = TokenHistory::new(&[3, 5, 5, 400]);
        h.push_output(5);
        h.push_output(17);
        for (temperature, top_k, top_p, min_p, rep, logprobs) in [
            (0.0, None, 1.0, 0.0, 1.0, None),
            (0.0, None, 1.0, 0.0, 1.3, Some(5)),
            (1.0, None, 1.0, 0.0, 1.0, Some(0)),
            (0.8, Some(10), 1.0, 0.0, 1.0, None),
            (1.3, None, 0.9, 0.0, 1.1, Some(20)),
            (0.5, Some(50), 0.5, 0.1, 1.0, Some(2)),
            (2.0, None, 1.0, 0.3, 1.0, None),
        ] {
            let p = SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty: rep,
                frequency_penalty: 0.1,
                logprobs,
                seed: Some(42),
                ..SamplingParams::default()
            };
            let mut s = Sampler::new(&p).unwrap();
            for step in 0..20 {
                let job = s.device_job(&h, logits.len(), 0).unwrap();
                let got = twin(&logits, job).unwrap();
                let want = s.sample(&logits, &h).unwrap();
                assert_eq!(got.token, want.token, "{p:?} step {step}");
                if logprobs.is_some() {
                    assert!((got.logprob - want.logprob).abs() <= 1e-6 * want.logprob.abs().max(1.0));
                    assert_eq!(got.top_logprobs, want.top_logprobs);
                }
            }
        }
    }

    /// The engine's host path for a constrained row: the mask applied to a copy, then the sampler.
    fn host(s: &mut Sampler, logits: &[f32], mask: &[u32], h: &TokenHistory) -> Result<Sampled, SamplingError> {
        let mut l = logits.to_vec();
        apply_mask(&mut l, mask);
        s.sample(&l, h)
    }

    fn mask_of(vocab: usize, keep: impl Fn(usize) -> bool) -> Vec<u32> {
        let mut m = vec![0u32; crate::sample::constraint::mask_words(vocab)];
        (0..vocab).filter(|&t| keep(t)).for_each(|t| m[t / 32] |= 1 << (t % 32));
        m
    }

    /// Masked jobs against the host path, over every setting, ten draws each: tokens, errors,
    /// log-probabilities and top ids equal. Returns what the host path gave at the first draw.
    fn check_masked(logits: &[f32], mask: &[u32], h: &TokenHistory) -> Vec<Result<Sampled, SamplingError>> {
        let mut first = Vec::new();
        for (temperature, top_k, top_p, min_p, rep, freq, presence, logprobs) in [
            (0.0, None, 1.0, 0.0, 1.0, 0.0, 0.0, None),
            (0.0, None, 1.0, 0.0, 1.3, 0.4, 0.5, Some(4)),
            (1.0, None, 1.0, 0.0, 1.0, 0.0, 0.0, Some(0)),
            (0.8, Some(3), 1.0, 0.0, 1.0, 0.0, 0.0, None),
            (1.3, None, 0.6, 0.0, 0.8, 0.0, -1.0, Some(20)),
            (0.5, Some(8), 0.9, 0.2, 1.0, 0.25, 0.0, Some(2)),
        ] {
            let p = SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty: rep,
                frequency_penalty: freq,
                presence_penalty: presence,
                logprobs,
                seed: Some(5),
                ..SamplingParams::default()
            };
            let mut s = Sampler::new(&p).unwrap();
            for step in 0..10 {
                let job = SampleJob { mask: Some(mask.to_vec()), ..s.device_job(h, logits.len(), 0).unwrap() };
                let got = twin(logits, job);
                let want = host(&mut s, logits, mask, h);
                assert!(
                    super::super::same_outcome(&got, &want, logprobs.is_some()),
                    "{p:?} step {step}: {got:?} vs {want:?}"
                );
                if step == 0 {
                    first.push(want);
                }
                if got.is_err() {
                    break;
                }
            }
        }
        first
    }

    #[test]
    fn masked_rows_equal_the_host_path() {
        let v = 100;
        let logits: Vec<f32> = (0..v).map(|i| ((i * 37 % 101) as f32) * 0.05 - 2.0).collect();
        let mut h = TokenHistory::new(&[3, 5, 5, 40, 41]);
        [5, 17, 40, 97].into_iter().for_each(|t| h.push_output(t));
        // A random-looking mask with penalised tokens on both sides of it.
        let sparse = mask_of(v, |t| (t * 7919) % 5 < 2 || t == 7 || t == 40);
        assert!(check_masked(&logits, &sparse, &h).iter().all(|r| r.as_ref().is_ok_and(|s| allows(&sparse, s.token))));
        // All masked but one: the row's worst token, penalised too, is the only answer.
        let worst = (0..v).min_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
        h.push_output(worst as u32);
        let one = mask_of(v, |t| t == worst);
        assert!(check_masked(&logits, &one, &h).iter().all(|r| r.as_ref().is_ok_and(|s| s.token == worst as u32)));
        // Ties: three equal maxima, the lowest-id one masked, so greedy takes the next id.
        let mut tied = logits.clone();
        [10, 20, 30].into_iter().for_each(|t| tied[t] = 9.0);
        let no_10 = mask_of(v, |t| t != 10);
        assert_eq!(check_masked(&tied, &no_10, &TokenHistory::new(&[]))[0].as_ref().unwrap().token, 20);
        // A NaN the mask removes is no error; one it keeps is the sampler's error.
        let mut nan = logits.clone();
        nan[7] = f32::NAN;
        check_masked(&nan, &mask_of(v, |t| t != 7), &h).iter().for_each(|r| assert!(r.is_ok(), "{r:?}"));
        assert!(check_masked(&nan, &sparse, &h)
            .iter()
            .all(|r| matches!(r, Err(SamplingError::NonFiniteLogit { token: 7, .. }))));
        // A mask that allows nothing: the host path's error, on every setting.
        let none = mask_of(v, |_| false);
        assert!(check_masked(&logits, &none, &h).iter().all(|r| *r == Err(SamplingError::AllMasked)));
    }

    #[test]
    fn errors_match_the_sampler() {
        let h = TokenHistory::new(&[]);
        let p = SamplingParams { seed: Some(1), ..SamplingParams::default() };
        let job = spec_job(&p, &h, 4);
        assert_eq!(
            twin(&[0.0, f32::INFINITY, 1.0, f32::NAN], job.clone()),
            Err(crate::sample::SamplingError::NonFiniteLogit { token: 1, value: f32::INFINITY })
        );
        assert_eq!(twin(&[f32::NEG_INFINITY; 4], job), Err(crate::sample::SamplingError::AllMasked));
    }
}
