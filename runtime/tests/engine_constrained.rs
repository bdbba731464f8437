//! Constrained decoding in the engine, on the fake model (`engine_support`) with a fake grammar:
//! "even tokens below 60, at most `LIMIT` of them, then EOS" (EOS allowed after two tokens).
//! Its `accept` refuses any token its mask did not allow, so a path that samples past the mask
//! (a device-sampler job without it, the argmax kernel, a beam that forgot its constraint)
//! fails the request.

mod engine_support;

use engine_support::{collect, logits_for, reference_beam_with, start, Collected, EOS};
use kiln_runtime::engine::beam::log_softmax;
use kiln_runtime::engine::{BeamParams, EngineConfig, GenerateRequest, SamplingPlacement};
use kiln_runtime::sample::constraint::{allows, apply_mask, mask_words};
use kiln_runtime::sample::{ConstraintError, ConstraintSource, SamplingParams, TokenConstraint};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: usize = 7;

#[derive(Clone)]
struct EvenThenEos {
    taken: usize,
}

impl EvenThenEos {
    fn mask(&self) -> Vec<u32> {
        let mut m = vec![0u32; mask_words(64)];
        let mut set = |t: u32| m[t as usize / 32] |= 1 << (t % 32);
        if self.taken < LIMIT {
            (0..60).step_by(2).for_each(&mut set);
        }
        if self.taken >= 2 {
            set(EOS);
        }
        m
    }
}

impl TokenConstraint for EvenThenEos {
    fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), ConstraintError> {
        mask.copy_from_slice(&self.mask());
        Ok(())
    }

    fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        if !allows(&self.mask(), token) {
            return Err(ConstraintError(format!("token {token} is not allowed after {} tokens", self.taken)));
        }
        self.taken += 1;
        Ok(())
    }

    fn fork(&self) -> Box<dyn TokenConstraint> {
        Box::new(self.clone())
    }
}

#[derive(Debug)]
struct Source {
    fail: bool,
}

impl ConstraintSource for Source {
    fn start(&self, ends: &[u32]) -> Result<Box<dyn TokenConstraint>, ConstraintError> {
        assert_eq!(ends, [EOS], "the fake model's EOS ends these requests");
        if self.fail {
            return Err(ConstraintError("no grammar today".into()));
        }
        Ok(Box::new(EvenThenEos { taken: 0 }))
    }
}

fn source() -> Option<Arc<dyn ConstraintSource>> {
    Some(Arc::new(Source { fail: false }))
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 2 + (seed * 31 + i * 7) % 50).collect()
}

fn requests() -> Vec<GenerateRequest> {
    (0..6u32)
        .map(|i| GenerateRequest {
            prompt_ids: prompt(i, 4 + 7 * i as usize),
            params: SamplingParams {
                temperature: if i % 2 == 0 { 0.0 } else { 1.5 },
                seed: Some(7 + u64::from(i)),
                max_tokens: 12,
                logprobs: (i == 3).then_some(2),
                ..SamplingParams::default()
            },
            n: if i % 3 == 1 { 3 } else { 1 },
            beam: None,
        })
        .collect()
}

fn run_all(cfg: EngineConfig, reqs: &[GenerateRequest]) -> (Vec<Collected>, kiln_runtime::engine::EngineStats) {
    let e = start(cfg);
    let hs: Vec<_> = reqs.iter().map(|r| e.submit_constrained(r.clone(), source()).expect("submit")).collect();
    let out: Vec<Collected> = hs.into_iter().map(collect).collect();
    assert!(e.wait_idle(Duration::from_secs(30)));
    let stats = e.stats();
    assert_eq!(stats.kv_blocks_used, 0);
    (out, stats)
}

fn check_grammar(c: &Collected) {
    assert!(c.error.is_none(), "{:?}", c.error);
    for ch in &c.choices {
        let body = ch.tokens.strip_suffix(&[EOS]).unwrap_or(&ch.tokens);
        assert!(body.iter().all(|t| t % 2 == 0 && *t < 60), "{:?}", ch.tokens);
        assert!(body.len() <= LIMIT, "{:?}", ch.tokens);
    }
}

#[test]
fn every_path_keeps_the_grammar_and_agrees() {
    let reqs = requests();
    let host = EngineConfig { sampling: SamplingPlacement::Host, ..EngineConfig::default() };
    let (want, stats) = run_all(host, &reqs);
    want.iter().for_each(check_grammar);
    assert!(want.iter().any(|c| c.choices.iter().any(|ch| ch.tokens.last() == Some(&EOS))), "EOS once allowed");
    let choices: usize = want.iter().map(|c| c.choices.len()).sum();
    assert!(stats.masks.count >= choices as u64, "every token's mask is timed: {:?}", stats.masks);
    assert!(stats.masks.p99_seconds > 0.0 && stats.masks.p99_seconds <= stats.masks.max_seconds);
    assert!(stats.host_sampling_steps > 0 && stats.host_sampling_steps == stats.steps, "{stats:?}");
    // The device placement samples constrained rows in the device sampler (its CPU twin here),
    // their masks going with their jobs: no step's logits come to the host, and every token,
    // log-probability and mask is the host path's. Preemption keeps each choice's state.
    let device = EngineConfig { sampling: SamplingPlacement::Device, ..EngineConfig::default() };
    let (got, stats) = run_all(device, &reqs);
    assert_eq!(got, want, "device placement");
    assert_eq!(stats.host_sampling_steps, 0, "{stats:?}");
    assert!(stats.masks.count >= choices as u64, "device jobs' masks are timed: {:?}", stats.masks);
    for sampling in [SamplingPlacement::Auto, SamplingPlacement::Device] {
        let tight = EngineConfig { kv_cache_bytes: Some(4 * 16 * 8), sampling, ..EngineConfig::default() };
        let (got, stats) = run_all(tight, &reqs);
        assert!(stats.preemptions > 0, "{stats:?}");
        assert_eq!(got, want, "with preemption, {sampling:?}");
    }
}

/// A grammar that allows only token 4, then nothing: the device sampler's job fails with the
/// host path's error after the same first token, and only that request fails.
#[test]
fn a_mask_that_allows_nothing_fails_alike_on_both_paths() {
    #[derive(Debug)]
    struct Dead;
    struct DeadEnd(usize);
    impl TokenConstraint for DeadEnd {
        fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), ConstraintError> {
            if self.0 == 0 {
                mask[0] = 1 << 4;
            }
            Ok(())
        }
        fn accept(&mut self, _: u32) -> Result<(), ConstraintError> {
            self.0 += 1;
            Ok(())
        }
        fn fork(&self) -> Box<dyn TokenConstraint> {
            Box::new(DeadEnd(self.0))
        }
    }
    impl ConstraintSource for Dead {
        fn start(&self, _: &[u32]) -> Result<Box<dyn TokenConstraint>, ConstraintError> {
            Ok(Box::new(DeadEnd(0)))
        }
    }
    let errors: Vec<String> = [SamplingPlacement::Host, SamplingPlacement::Device]
        .into_iter()
        .map(|sampling| {
            let e = start(EngineConfig { sampling, ..EngineConfig::default() });
            let bad = e.submit_constrained(requests()[1].clone(), Some(Arc::new(Dead))).unwrap();
            let good = e.submit_constrained(requests()[0].clone(), source()).unwrap();
            check_grammar(&collect(good));
            let bad = collect(bad);
            assert!(!bad.choices.is_empty() && bad.choices.iter().all(|c| c.tokens == [4]), "{bad:?}");
            bad.error.unwrap_or_default()
        })
        .collect();
    assert!(errors[0].contains("every logit is -inf"), "{errors:?}");
    assert_eq!(errors[0], errors[1]);
}

/// The pure search over the fake model with each beam's log-probabilities masked by the
/// grammar's state after that beam's tokens.
fn reference_beam(prompt: &[u32], width: usize, max_new: usize, n: usize) -> Vec<Vec<u32>> {
    reference_beam_with(prompt, width, max_new, n, |ctx, toks| {
        let mut lp = log_softmax(&logits_for(ctx));
        apply_mask(&mut lp, &EvenThenEos { taken: toks.len() }.mask());
        lp
    })
}

#[test]
fn beam_search_masks_each_beam_by_its_own_state() {
    let reqs: Vec<GenerateRequest> = (0..3u32)
        .map(|i| GenerateRequest {
            prompt_ids: prompt(i, 5 + 9 * i as usize),
            params: SamplingParams { max_tokens: 10, ..SamplingParams::greedy() },
            n: 2,
            beam: Some(BeamParams { width: 3, ..BeamParams::default() }),
        })
        .collect();
    let tiny =
        EngineConfig { kv_cache_bytes: Some(3 * 16 * 8), enable_prefix_caching: false, ..EngineConfig::default() };
    for cfg in [EngineConfig::default(), tiny] {
        let (got, _) = run_all(cfg, &reqs);
        for (g, r) in got.iter().zip(&reqs) {
            check_grammar(g);
            let toks: Vec<Vec<u32>> = g.choices.iter().map(|c| c.tokens.clone()).collect();
            assert_eq!(toks, reference_beam(&r.prompt_ids, 3, 10, 2));
        }
    }
}

#[test]
fn a_constraint_that_cannot_start_fails_its_request_only() {
    let e = start(EngineConfig::default());
    let bad = e.submit_constrained(requests()[0].clone(), Some(Arc::new(Source { fail: true }))).unwrap();
    let good = e.submit_constrained(requests()[1].clone(), source()).unwrap();
    let bad = collect(bad);
    assert!(bad.error.as_deref().is_some_and(|m| m.contains("no grammar today")), "{bad:?}");
    check_grammar(&collect(good));
}

/// A grammar that arrives after its request was submitted (compiled beside the prefill): the
/// same outputs as with the grammar given at once, on both sampling paths; one whose compile
/// failed fails its request only.
#[test]
fn a_grammar_compiled_after_submission_gives_the_same_outputs() {
    use kiln_runtime::sample::deferred::deferred;
    let reqs = requests();
    let host = EngineConfig { sampling: SamplingPlacement::Host, ..EngineConfig::default() };
    let (want, _) = run_all(host, &reqs);
    for sampling in [SamplingPlacement::Host, SamplingPlacement::Device] {
        let e = start(EngineConfig { sampling, ..EngineConfig::default() });
        let mut resolvers = Vec::new();
        let hs: Vec<_> = reqs
            .iter()
            .map(|r| {
                let (src, resolver) = deferred();
                resolvers.push(resolver);
                e.submit_constrained(r.clone(), Some(src as Arc<dyn ConstraintSource>)).expect("submit")
            })
            .collect();
        let late = std::thread::spawn(move || {
            for r in resolvers {
                std::thread::sleep(Duration::from_millis(5));
                r.resolve(Ok(Arc::new(Source { fail: false })));
            }
        });
        let got: Vec<Collected> = hs.into_iter().map(collect).collect();
        late.join().unwrap();
        assert_eq!(got, want, "{sampling:?}");
        let (src, resolver) = deferred();
        let failing = e.submit_constrained(reqs[0].clone(), Some(src as Arc<dyn ConstraintSource>)).unwrap();
        let ok = e.submit_constrained(reqs[0].clone(), source()).unwrap();
        resolver.resolve(Err("the schema did not compile".into()));
        let failed = collect(failing);
        assert!(failed.error.as_deref().is_some_and(|m| m.contains("did not compile")), "{failed:?}");
        assert_eq!(collect(ok), want[0]);
        assert!(e.wait_idle(Duration::from_secs(30)));
        assert_eq!(e.stats().kv_blocks_used, 0);
    }
}
