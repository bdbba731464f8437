//! Property and statistical tests of `kiln_runtime::sample` through its public API.
//!
//! The sampler is checked token-for-token against `reference_sample`, a deliberately naive
//! transcription of the pipeline documented in `sample/mod.rs` (full sort, explicit masks), on
//! random logits with many ties, random parameters, seeds and histories. Stop handling is checked
//! against the definition "emitted text = text before the first completed stop string", for
//! random texts split at random points.

use std::collections::BTreeMap;

use kiln_runtime::sample::constraint::{allows, apply_mask, mask_words};
use kiln_runtime::sample::{
    device, math, rng, FinishReason, Sampler, SamplingError, SamplingParams, StopChecker, StopMatch, TokenHistory,
};
use kiln_runtime::{Device, Tensor};
use proptest::prelude::*;

// ---------------------------------------------------------------- reference sampler

/// Penalised logits, straight from the spec.
fn reference_penalties(logits: &[f32], prompt: &[u32], output: &[u32], p: &SamplingParams) -> Vec<f32> {
    let mut l = logits.to_vec();
    let mut seen: BTreeMap<u32, u32> = BTreeMap::new(); // token -> output count
    for &t in prompt {
        seen.entry(t).or_insert(0);
    }
    for &t in output {
        *seen.entry(t).or_insert(0) += 1;
    }
    for (&t, &c) in &seen {
        let x = &mut l[t as usize];
        if p.repetition_penalty != 1.0 {
            *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
        }
        if c > 0 {
            *x = *x - c as f32 * p.frequency_penalty - p.presence_penalty;
        }
    }
    l
}

/// `Some(token)` per the spec for draw number `n`, `None` when every logit is -inf.
fn reference_sample(l: &[f32], p: &SamplingParams, seed: u64, n: u64) -> Option<u32> {
    let v = l.len();
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        return None;
    }
    if p.temperature == 0.0 {
        return l.iter().position(|&x| x == m).map(|i| i as u32);
    }
    let w: Vec<f32> = l.iter().map(|&x| math::exp_nonpos((x - m) / p.temperature)).collect();
    let q: Vec<u64> = w.iter().map(|&x| math::quantize(x)).collect();
    // Rank order by the spec's words, not by rank_key: logit descending, then lower id.
    let mut ranked: Vec<usize> = (0..v).collect();
    ranked.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap().then(a.cmp(&b)));
    let k = p.top_k.unwrap_or(0);
    let n_k = if k > 0 && k < v { k } else { v };
    let mut n_keep = n_k;
    if p.top_p < 1.0 {
        let total: u64 = ranked[..n_k].iter().map(|&i| q[i]).sum();
        let target = f64::from(p.top_p) * total as f64;
        let mut cum = 0u64;
        for (j, &i) in ranked[..n_k].iter().enumerate() {
            cum += q[i];
            if cum as f64 >= target {
                n_keep = j + 1;
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        n_keep = n_keep.min(w.iter().filter(|&&x| x >= p.min_p).count());
    }
    let mut kept = vec![false; v];
    ranked[..n_keep].iter().for_each(|&i| kept[i] = true);
    let total: u64 = (0..v).filter(|&i| kept[i]).map(|i| q[i]).sum();
    let r = rng::below(seed, n, total);
    let mut cum = 0u64;
    for i in 0..v {
        if kept[i] {
            cum += q[i];
            if cum > r {
                return Some(i as u32);
            }
        }
    }
    panic!("reference walk fell off the end: total {total}, r {r}");
}

fn reference_logprob(l: &[f32], token: u32) -> f64 {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = l.iter().map(|&x| f64::from(x - m).exp()).sum();
    f64::from(l[token as usize] - m) - z.ln()
}

/// Logits with many exact ties (a few levels, some masked) or continuous values.
fn logits_strategy() -> impl Strategy<Value = Vec<f32>> {
    let levels = prop::sample::select(vec![f32::NEG_INFINITY, -3.5, -1.0, 0.0, 0.25, 1.0, 2.5, 7.0]);
    prop_oneof![prop::collection::vec(levels, 1..300), prop::collection::vec(-10.0f32..10.0, 1..300),]
}

/// A grammar mask over `v` ids, of one of five kinds: about half allowed, about one in
/// sixteen, exactly one (`bits` picks it), none, every one.
fn random_mask(v: usize, kind: u8, bits: u64) -> Vec<u32> {
    let mut m = vec![0u32; mask_words(v)];
    let keep = |t: usize| match kind {
        0 => rng::bits(bits, t as u64) & 1 == 0,
        1 => rng::bits(bits, t as u64) & 15 == 0,
        2 => t as u64 == bits % v as u64,
        3 => false,
        _ => true,
    };
    (0..v).filter(|&t| keep(t)).for_each(|t| m[t / 32] |= 1 << (t % 32));
    m
}

fn params_strategy() -> impl Strategy<Value = SamplingParams> {
    (
        prop_oneof![Just(0.0f32), Just(1.0), Just(0.05), 0.1f32..5.0],
        prop_oneof![Just(None), (0usize..400).prop_map(Some)],
        prop_oneof![Just(1.0f32), Just(0.5), 0.01f32..1.0],
        prop_oneof![Just(0.0f32), Just(1.0), 0.0f32..1.0],
        prop_oneof![Just(1.0f32), 0.5f32..2.0],
        -2.0f32..2.0,
        -2.0f32..2.0,
        prop_oneof![Just(None), (0usize..=20).prop_map(Some)],
    )
        .prop_map(|(temperature, top_k, top_p, min_p, rep, presence, frequency, logprobs)| SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty: rep,
            presence_penalty: presence,
            frequency_penalty: frequency,
            logprobs,
            ..SamplingParams::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Three consecutive steps (each sampled token appended to the output) agree exactly with
    /// the reference, and the log-probabilities are those of the penalised log-softmax.
    #[test]
    fn sampler_matches_reference(
        logits in logits_strategy(),
        params in params_strategy(),
        seed in any::<u64>(),
        prompt_seed in any::<u64>(),
    ) {
        let v = logits.len() as u64;
        let prompt: Vec<u32> = (0..(prompt_seed % 8)).map(|i| (rng::bits(prompt_seed, i) % v) as u32).collect();
        let params = SamplingParams { seed: Some(seed), ..params };
        let mut sampler = Sampler::new(&params).unwrap();
        let mut history = TokenHistory::new(&prompt);
        for step in 0..3u64 {
            let pen = reference_penalties(&logits, history.prompt(), history.output(), &params);
            let got = sampler.sample(&logits, &history);
            match reference_sample(&pen, &params, seed, step) {
                None => {
                    prop_assert_eq!(got, Err(SamplingError::AllMasked));
                    return Ok(());
                }
                Some(want) => {
                    let got = got.unwrap();
                    prop_assert_eq!(got.token, want, "step {}", step);
                    prop_assert!(pen[want as usize] > f32::NEG_INFINITY);
                    prop_assert!((f64::from(got.logprob) - reference_logprob(&pen, want)).abs() < 1e-4);
                    let n_top = params.logprobs.unwrap_or(0).min(logits.len());
                    prop_assert_eq!(got.top_logprobs.len(), n_top);
                    for pair in got.top_logprobs.windows(2) {
                        let (a, b) = (pair[0].0 as usize, pair[1].0 as usize);
                        prop_assert!(pen[a] > pen[b] || (pen[a] == pen[b] && a < b));
                    }
                    for &(t, lp) in &got.top_logprobs {
                        prop_assert!((f64::from(lp) - reference_logprob(&pen, t)).abs() < 1e-4
                            || (lp == f32::NEG_INFINITY && pen[t as usize] == f32::NEG_INFINITY));
                    }
                    history.push_output(want);
                }
            }
        }
    }

    /// The device sampler (here its CPU twin, through the public `sample::device::sample`)
    /// picks exactly the sampler's tokens: two logits rows in one tensor (f32 or bf16), three
    /// jobs each with their own parameters and histories, three steps, errors included.
    #[test]
    fn device_sampler_matches_sampler(
        logits in logits_strategy(),
        params in prop::collection::vec(params_strategy(), 3),
        seed in any::<u64>(),
        bf16 in any::<bool>(),
    ) {
        let v = logits.len();
        let mut rows: Vec<f32> = logits.clone();
        rows.extend(logits.iter().rev().map(|&x| if x.is_finite() { x * 0.5 } else { x }));
        let dtype = if bf16 { kiln_runtime::DType::BF16 } else { kiln_runtime::DType::F32 };
        let t = Tensor::from_f32_as(&Device::Cpu, dtype, &rows, 2, v).unwrap();
        let rows = t.to_host_f32().unwrap(); // what the sampler sees after rounding to the dtype
        let mut seqs: Vec<(Sampler, TokenHistory, usize)> = params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p = SamplingParams { seed: Some(seed.wrapping_add(i as u64)), ..p.clone() };
                let prompt: Vec<u32> = (0..i as u64 * 3).map(|j| (rng::bits(seed, j) % v as u64) as u32).collect();
                (Sampler::new(&p).unwrap(), TokenHistory::new(&prompt), i % 2)
            })
            .collect();
        for step in 0..3 {
            let jobs: Vec<_> = seqs.iter().map(|(s, h, row)| s.device_job(h, v, *row).unwrap()).collect();
            let got = device::sample(&t, &jobs).unwrap();
            for ((s, h, row), got) in seqs.iter_mut().zip(got) {
                let want = s.sample(&rows[*row * v..(*row + 1) * v], h);
                match (got, want) {
                    (Ok(g), Ok(w)) => {
                        prop_assert_eq!(g.token, w.token, "step {}", step);
                        if s.params().logprobs.is_some() {
                            prop_assert!((g.logprob - w.logprob).abs() <= 1e-6 * w.logprob.abs().max(1.0)
                                || g.logprob == w.logprob);
                            let ids = |x: &[(u32, f32)]| x.iter().map(|p| p.0).collect::<Vec<_>>();
                            prop_assert_eq!(ids(&g.top_logprobs), ids(&w.top_logprobs));
                        }
                        h.push_output(w.token);
                    }
                    (Err(g), Err(w)) => prop_assert_eq!(g, w),
                    (g, w) => prop_assert!(false, "device {:?} vs sampler {:?}", g, w),
                }
            }
        }
    }

    /// A constrained row on the device sampler (its CPU twin) gives exactly what the engine's
    /// host path gives: the grammar's mask applied to the logits, then `Sampler::sample`. Masks
    /// of every shape (`mask_strategy`), three jobs over two rows (each its own mask, the
    /// prompt's tokens penalised whether masked or not), three steps, errors included.
    #[test]
    fn device_sampler_with_masks_matches_the_host_path(
        logits in logits_strategy(),
        params in prop::collection::vec(params_strategy(), 3),
        masks in prop::collection::vec((0u8..5, any::<u64>()), 3),
        seed in any::<u64>(),
    ) {
        let v = logits.len();
        let mut rows: Vec<f32> = logits.clone();
        rows.extend(logits.iter().map(|&x| if x.is_finite() { -x } else { x }));
        let t = Tensor::from_f32_as(&Device::Cpu, kiln_runtime::DType::F32, &rows, 2, v).unwrap();
        let mut seqs: Vec<(Sampler, TokenHistory, usize, Vec<u32>)> = params
            .iter()
            .zip(&masks)
            .enumerate()
            .map(|(i, (p, &(kind, bits)))| {
                let p = SamplingParams { seed: Some(seed.wrapping_add(i as u64)), ..p.clone() };
                let prompt: Vec<u32> = (0..8).map(|j| (rng::bits(seed, j) % v as u64) as u32).collect();
                (Sampler::new(&p).unwrap(), TokenHistory::new(&prompt), i % 2, random_mask(v, kind, bits))
            })
            .collect();
        for step in 0..3 {
            let jobs: Vec<_> = seqs
                .iter()
                .map(|(s, h, row, m)| device::SampleJob { mask: Some(m.clone()), ..s.device_job(h, v, *row).unwrap() })
                .collect();
            let got = device::sample(&t, &jobs).unwrap();
            for ((s, h, row, m), got) in seqs.iter_mut().zip(got) {
                let mut masked = rows[*row * v..(*row + 1) * v].to_vec();
                apply_mask(&mut masked, m);
                let want = s.sample(&masked, h);
                prop_assert!(device::same_outcome(&got, &want, s.params().logprobs.is_some()),
                    "step {}: device {:?} vs host {:?}", step, got, want);
                if let Ok(w) = want {
                    prop_assert!(allows(m, w.token));
                    h.push_output(w.token);
                }
            }
        }
    }

    /// The history's counts equal naive counts over random prompts and outputs.
    #[test]
    fn sample_history_counts_are_exact(prompt in prop::collection::vec(0u32..20, 0..50),
                                output in prop::collection::vec(0u32..20, 0..50)) {
        let mut h = TokenHistory::new(&prompt);
        output.iter().for_each(|&t| h.push_output(t));
        for t in 0..21u32 {
            let c = h.count(t);
            prop_assert_eq!(c.prompt as usize, prompt.iter().filter(|&&x| x == t).count());
            prop_assert_eq!(c.output as usize, output.iter().filter(|&&x| x == t).count());
        }
        prop_assert_eq!(h.all().len(), prompt.len() + output.len());
        prop_assert_eq!(h.max_token(), prompt.iter().chain(&output).max().copied());
    }
}

// ---------------------------------------------------------------- distributions and seeds

/// Pearson chi-square of `draws` samples against the probabilities `p`.
fn chi_square(params: SamplingParams, logits: &[f32], p: &[f64], draws: usize) -> f64 {
    let mut s = Sampler::new(&params).unwrap();
    let h = TokenHistory::new(&[]);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..draws {
        counts[s.sample(logits, &h).unwrap().token as usize] += 1;
    }
    counts
        .iter()
        .zip(p)
        .map(|(&c, &pi)| {
            let e = pi * draws as f64;
            if e == 0.0 {
                assert_eq!(c, 0, "a zero-probability token was drawn");
                0.0
            } else {
                (c as f64 - e).powi(2) / e
            }
        })
        .sum()
}

fn normalise(x: &[f64]) -> Vec<f64> {
    let s: f64 = x.iter().sum();
    x.iter().map(|v| v / s).collect()
}

#[test]
fn sample_temperature_reshapes_the_distribution() {
    // exp(logits) = 1, 2, 3, 4.
    let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
    let seeded = |t: f32| SamplingParams { temperature: t, seed: Some(1234), ..SamplingParams::default() };
    // df = 3: P(chi2 > 25) is about 1.5e-5; the seed is fixed, so this is a loose sanity bound.
    let cases = [
        (1.0f32, normalise(&[1.0, 2.0, 3.0, 4.0])),
        (0.5, normalise(&[1.0, 4.0, 9.0, 16.0])),
        (2.0, normalise(&[1.0, 2f64.sqrt(), 3f64.sqrt(), 2.0])),
    ];
    for (t, p) in cases {
        let chi = chi_square(seeded(t), &logits, &p, 40_000);
        assert!(chi < 25.0, "temperature {t}: chi-square {chi}");
    }
    // Same draws against the wrong temperature's distribution must fail the bound clearly.
    let chi = chi_square(seeded(0.5), &logits, &normalise(&[1.0, 2.0, 3.0, 4.0]), 40_000);
    assert!(chi > 1000.0, "chi-square {chi} should reject the untempered distribution");
}

#[test]
fn sample_truncated_distributions_are_renormalised() {
    let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
    let base = SamplingParams { seed: Some(99), ..SamplingParams::default() };
    // top-k 2 keeps {3, 4} -> 3/7, 4/7.
    let p = SamplingParams { top_k: Some(2), ..base.clone() };
    let chi = chi_square(p, &logits, &[0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0], 20_000);
    assert!(chi < 20.0, "top-k chi-square {chi}");
    // min-p 0.5 keeps p >= 0.5 * 0.4 = 0.2: tokens 1..=3 (0.2 is kept: inclusive).
    let p = SamplingParams { min_p: 0.5, ..base.clone() };
    let chi = chi_square(p, &logits, &[0.0, 2.0 / 9.0, 3.0 / 9.0, 4.0 / 9.0], 20_000);
    assert!(chi < 20.0, "min-p chi-square {chi}");
    // top-p 0.65: 0.4 + 0.3 = 0.7 >= 0.65 keeps the top two.
    let p = SamplingParams { top_p: 0.65, ..base };
    let chi = chi_square(p, &logits, &[0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0], 20_000);
    assert!(chi < 20.0, "top-p chi-square {chi}");
}

#[test]
fn sample_seeded_output_is_independent_of_batch_interleaving() {
    let logits_a: Vec<f32> = (0..500).map(|i| ((i * 7919) % 113) as f32 * 0.05).collect();
    let logits_b: Vec<f32> = (0..500).map(|i| ((i * 104729) % 97) as f32 * 0.03).collect();
    let params = |seed| SamplingParams { seed: Some(seed), top_p: 0.9, ..SamplingParams::default() };
    let solo: Vec<u32> = {
        let mut a = Sampler::new(&params(1)).unwrap();
        let mut h = TokenHistory::new(&[1, 2, 3]);
        (0..40)
            .map(|_| {
                let t = a.sample(&logits_a, &h).unwrap().token;
                h.push_output(t);
                t
            })
            .collect()
    };
    let mut a = Sampler::new(&params(1)).unwrap();
    let mut b = Sampler::new(&params(2)).unwrap();
    let (mut ha, hb) = (TokenHistory::new(&[1, 2, 3]), TokenHistory::new(&[]));
    let mut batched = Vec::new();
    for step in 0..40 {
        // B runs a varying number of times between A's steps, as batches change.
        for _ in 0..(step % 3) {
            b.sample(&logits_b, &hb).unwrap();
        }
        let t = a.sample(&logits_a, &ha).unwrap().token;
        ha.push_output(t);
        batched.push(t);
    }
    assert_eq!(solo, batched);
}

// ---------------------------------------------------------------- stop strings

/// Emitted text per the definition: cut before the stop string that completes first (longest
/// among those completing at the same place); `None` when no stop string occurs.
fn expected_cut(text: &str, stops: &[String]) -> Option<usize> {
    let ends = text.char_indices().map(|(i, c)| i + c.len_utf8());
    for end in ends {
        let best = stops.iter().filter(|s| text[..end].ends_with(s.as_str())).map(|s| s.len()).max();
        if let Some(len) = best {
            return Some(end - len);
        }
    }
    None
}

fn text_strategy(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!['a', 'b', 'c', ' ', 'é', '世', '→']), 0..max)
        .prop_map(|cs| cs.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn sample_stop_strings_cut_at_the_first_completed_match(
        text in text_strategy(40),
        stops in prop::collection::vec(text_strategy(4).prop_filter("non-empty", |s| !s.is_empty()), 1..4),
        cuts in prop::collection::vec(0usize..=40, 0..12),
    ) {
        // Split at random char positions; repeated cuts give empty deltas, as real ones can be.
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut at: Vec<usize> = cuts.iter().map(|&c| chars.get(c).map_or(text.len(), |x| x.0)).collect();
        at.sort_unstable();
        let mut deltas = Vec::new();
        let mut prev = 0;
        for a in at.into_iter().chain([text.len()]) {
            deltas.push(&text[prev..a]);
            prev = a;
        }

        let params = SamplingParams { stop: stops.clone(), max_tokens: deltas.len(), ..SamplingParams::default() };
        let mut checker = StopChecker::new(&params, &[]).unwrap();
        let want = match expected_cut(&text, &stops) {
            Some(cut) => &text[..cut],
            None => text.as_str(),
        };
        let mut emitted = String::new();
        let mut finish = None;
        for (i, d) in deltas.iter().enumerate() {
            let out = checker.step(i as u32 + 100, d).unwrap();
            emitted.push_str(&out.text);
            // Never anything past the cut, at any moment.
            prop_assert!(want.starts_with(&emitted), "emitted {:?} is not a prefix of {:?}", emitted, want);
            if let Some(f) = out.finish {
                if f == FinishReason::Stop {
                    prop_assert!(matches!(out.matched, Some(StopMatch::Text(ref s)) if stops.contains(s)));
                }
                finish = Some(f);
                break;
            }
        }
        prop_assert_eq!(emitted.as_str(), want);
        let want_reason = if expected_cut(&text, &stops).is_some() { FinishReason::Stop } else { FinishReason::Length };
        prop_assert_eq!(finish, Some(want_reason));
    }
}
