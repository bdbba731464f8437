//! The engine's mechanics on a fake model (`engine_support`), fast enough to run many
//! configurations: batching / preemption / chunked-prefill invariance, `n > 1` seeds, beam search
//! against the pure search and under pressure (detached beams), failure and panic handling,
//! aborts, overload, shutdown. The real model's tests are in `tests/tests/engine_model.rs`.

mod engine_support;

use engine_support::{collect, logits_for, reference_beam_with, run, start, Collected, EOS, FAIL, PANIC, SLOW, VOCAB};
use kiln_runtime::engine::beam::log_softmax;
use kiln_runtime::engine::{BeamParams, EngineConfig, EngineEvent, GenerateRequest, SamplingPlacement, SubmitError};
use kiln_runtime::sample::{FinishReason, SamplingParams};
use std::time::Duration;

const IDLE: Duration = Duration::from_secs(30);

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 2 + (seed * 31 + i * 7) % 50).collect()
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        params: SamplingParams { max_tokens, ..SamplingParams::greedy() },
        n: 1,
        beam: None,
    }
}

fn mixed_requests() -> Vec<GenerateRequest> {
    (0..12u32).map(|i| greedy(prompt(i, 3 + (i as usize * 13) % 40), 6 + (i as usize * 5) % 20)).collect()
}

fn concurrently(cfg: EngineConfig, reqs: &[GenerateRequest]) -> (Vec<Collected>, kiln_runtime::engine::EngineStats) {
    let e = start(cfg);
    let handles: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).expect("submit")).collect();
    let out: Vec<Collected> = handles.into_iter().map(collect).collect();
    assert!(e.wait_idle(IDLE));
    let stats = e.stats();
    assert_eq!((stats.kv_blocks_used, stats.running, stats.waiting), (0, 0, 0), "{stats:?}");
    (out, stats)
}

fn alone(reqs: &[GenerateRequest]) -> Vec<Collected> {
    let e = start(EngineConfig::default());
    reqs.iter().map(|r| run(&e, r.clone())).collect()
}

/// Requests covering every sampling feature: seeded temperature, top-k, top-p, min-p,
/// penalties, log-probabilities, `n > 1`, greedy with and without extras.
fn sampling_requests() -> Vec<GenerateRequest> {
    let base = |i: u32| SamplingParams {
        max_tokens: 8 + i as usize % 9,
        seed: Some(1000 + u64::from(i)),
        ..SamplingParams::default()
    };
    let params = [
        SamplingParams { temperature: 0.7, ..base(0) },
        SamplingParams { temperature: 1.3, top_k: Some(5), ..base(1) },
        SamplingParams { top_p: 0.6, logprobs: Some(4), ..base(2) },
        SamplingParams { min_p: 0.2, temperature: 0.9, ..base(3) },
        SamplingParams { repetition_penalty: 1.5, presence_penalty: 0.5, frequency_penalty: 0.3, ..base(4) },
        SamplingParams { temperature: 0.0, logprobs: Some(0), repetition_penalty: 1.2, ..base(5) },
        SamplingParams { temperature: 0.0, ..base(6) },
        SamplingParams { top_k: Some(3), top_p: 0.8, min_p: 0.05, logprobs: Some(2), ..base(7) },
    ];
    params
        .into_iter()
        .enumerate()
        .map(|(i, params)| GenerateRequest {
            prompt_ids: prompt(i as u32, 4 + i * 5),
            params,
            n: if i % 3 == 1 { 3 } else { 1 },
            beam: None,
        })
        .collect()
}

/// The device sampler path (on the CPU: the kernel's twin) gives exactly the host sampler's
/// tokens, text and log-probabilities, in one batch and under preemption.
#[test]
fn device_sampling_equals_host_sampling() {
    let reqs = sampling_requests();
    let host = EngineConfig { sampling: SamplingPlacement::Host, ..EngineConfig::default() };
    let (want, _) = concurrently(host, &reqs);
    for c in &want {
        assert!(c.error.is_none(), "{c:?}");
    }
    assert!(want.iter().any(|c| c.choices.iter().any(|ch| !ch.logprobs.is_empty())));
    let device = EngineConfig { sampling: SamplingPlacement::Device, ..EngineConfig::default() };
    let (got, _) = concurrently(device.clone(), &reqs);
    assert_eq!(got, want, "device sampler, one batch");
    let tight = EngineConfig { kv_cache_bytes: Some(8 * 16 * 8), ..device };
    let (got, stats) = concurrently(tight, &reqs);
    assert!(stats.preemptions > 0, "{stats:?}");
    assert_eq!(got, want, "device sampler, with preemption");
}

#[test]
fn greedy_output_does_not_depend_on_batching_preemption_or_chunking() {
    let reqs = mixed_requests();
    let solo = alone(&reqs);
    for c in &solo {
        assert!(c.error.is_none() && !c.choices[0].tokens.is_empty());
    }
    let (batched, _) = concurrently(EngineConfig::default(), &reqs);
    assert_eq!(batched, solo, "batched");
    let small = EngineConfig { kv_cache_bytes: Some(8 * 16 * 8), ..EngineConfig::default() }; // 8 blocks of 16
    let (tight, stats) = concurrently(small, &reqs);
    assert!(stats.preemptions > 0, "the small pool should preempt: {stats:?}");
    assert_eq!(tight, solo, "with preemption");
    let chunked = EngineConfig { max_batched_tokens: 4, max_num_seqs: 4, ..EngineConfig::default() };
    let (chunks, _) = concurrently(chunked, &reqs);
    assert_eq!(chunks, solo, "with 4-token chunks");
    let nocache = EngineConfig { enable_prefix_caching: false, block_size: 1, ..EngineConfig::default() };
    let (b1, _) = concurrently(nocache, &reqs);
    assert_eq!(b1, solo, "block size 1, no prefix cache");
}

#[test]
fn n_choices_fork_the_prompt_and_use_seed_plus_index() {
    let e = start(EngineConfig::default());
    let params = SamplingParams { temperature: 1.0, seed: Some(40), max_tokens: 12, ..SamplingParams::default() };
    let req = GenerateRequest { prompt_ids: prompt(3, 21), params: params.clone(), n: 3, beam: None };
    let got = run(&e, req.clone());
    assert_eq!(got.choices.len(), 3);
    for (i, c) in got.choices.iter().enumerate() {
        let solo = run(
            &e,
            GenerateRequest {
                n: 1,
                params: SamplingParams { seed: Some(40 + i as u64), ..params.clone() },
                ..req.clone()
            },
        );
        assert_eq!(c, &solo.choices[0], "choice {i} vs seed {}", 40 + i);
    }
    assert_ne!(got.choices[0].tokens, got.choices[1].tokens);
    assert_eq!(run(&e, req.clone()).choices, got.choices, "reproducible");
    let u = got.usage.unwrap();
    assert_eq!(u.completion_tokens, got.choices.iter().map(|c| c.tokens.len()).sum::<usize>());
    assert!(e.wait_idle(IDLE));
    assert_eq!(e.stats().kv_blocks_used, 0);
}

/// Beam search straight over the fake model's logits, no engine.
fn reference_beam(prompt: &[u32], width: usize, max_new: usize, n: usize) -> Vec<Vec<u32>> {
    reference_beam_with(prompt, width, max_new, n, |ctx, _| log_softmax(&logits_for(ctx)))
}

fn beam_req(prompt: Vec<u32>, width: usize, n: usize, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        params: SamplingParams { max_tokens, ..SamplingParams::greedy() },
        n,
        beam: Some(BeamParams { width, ..BeamParams::default() }),
    }
}

#[test]
fn beam_search_matches_the_pure_search_alone_and_under_pressure() {
    let reqs: Vec<GenerateRequest> = (0..4u32).map(|i| beam_req(prompt(i, 5 + 9 * i as usize), 4, 2, 10)).collect();
    let want: Vec<Vec<Vec<u32>>> = reqs.iter().map(|r| reference_beam(&r.prompt_ids, 4, 10, 2)).collect();
    let e = start(EngineConfig::default());
    for (r, w) in reqs.iter().zip(&want) {
        let got = run(&e, r.clone());
        assert!(got.error.is_none(), "{:?}", got.error);
        let toks: Vec<Vec<u32>> = got.choices.iter().map(|c| c.tokens.clone()).collect();
        assert_eq!(&toks, w);
        for c in &got.choices {
            let ended = c.tokens.last() == Some(&EOS);
            assert_eq!(c.reason, Some(if ended { FinishReason::Stop } else { FinishReason::Length }));
        }
    }
    // Four searches of width 4 with room for 6 sequences and a small pool: forks wait for running
    // slots and beams are preempted, so beams get detached and re-added.
    let tight = EngineConfig {
        max_num_seqs: 6,
        max_batched_tokens: 6,
        kv_cache_bytes: Some(8 * 16 * 8),
        ..EngineConfig::default()
    };
    // And a pool of 3 blocks without prefix caching: beams are preempted and recomputed.
    let tiny =
        EngineConfig { kv_cache_bytes: Some(3 * 16 * 8), enable_prefix_caching: false, ..EngineConfig::default() };
    for (name, cfg) in [("running cap", tight), ("tiny pool", tiny)] {
        let (got, stats) = concurrently(cfg, &reqs);
        for (g, w) in got.iter().zip(&want) {
            assert!(g.error.is_none(), "{name}: {:?}", g.error);
            let toks: Vec<Vec<u32>> = g.choices.iter().map(|c| c.tokens.clone()).collect();
            assert_eq!(&toks, w, "{name}");
        }
        assert!(name != "tiny pool" || stats.preemptions > 0, "{stats:?}");
    }
}

#[test]
fn a_failed_step_errors_its_requests_and_the_engine_goes_on() {
    let e = start(EngineConfig::default());
    let mut bad = prompt(1, 5);
    bad[2] = FAIL;
    let got = run(&e, greedy(bad, 4));
    assert!(got.error.as_deref().unwrap_or("").contains("fail token"), "{got:?}");
    let ok = run(&e, greedy(prompt(2, 5), 4));
    assert!(ok.error.is_none() && ok.usage.is_some());
    assert!(e.wait_idle(IDLE));
    let s = e.stats();
    assert_eq!((s.requests_failed_total, s.requests_finished_total, s.kv_blocks_used), (1, 1, 0));
    assert!(e.heartbeat().alive);
}

#[test]
fn a_panic_errors_every_request_and_kills_the_heartbeat() {
    let e = start(EngineConfig::default());
    let long = e.submit(greedy(prompt(1, 5), 400)).unwrap();
    let mut bad = prompt(2, 5);
    bad[0] = PANIC;
    let boom = e.submit(greedy(bad, 4)).unwrap();
    for c in [collect(long), collect(boom)] {
        assert!(c.error.as_deref().unwrap_or("").contains("panic token"), "{c:?}");
    }
    assert!(e.wait_idle(IDLE));
    assert!(!e.heartbeat().alive);
    assert_eq!(e.submit(greedy(prompt(3, 5), 4)).err(), Some(SubmitError::ShuttingDown));
}

#[test]
fn dropping_or_aborting_frees_everything() {
    let e = start(EngineConfig { max_batched_tokens: 8, max_num_seqs: 8, ..EngineConfig::default() });
    // Mid-decode: a few tokens, then drop (an n = 3 request, so forks are freed too).
    let mut slow = prompt(1, 40);
    slow[0] = SLOW;
    let mut h = e.submit(GenerateRequest { n: 3, ..greedy(slow, 400) }).unwrap();
    for _ in 0..5 {
        let ev = h.blocking_recv();
        assert!(matches!(ev, Some(EngineEvent::Token { .. })), "{ev:?}");
    }
    assert!(e.stats().kv_blocks_used > 0, "{:?}", e.stats());
    drop(h);
    assert!(e.wait_idle(IDLE));
    assert_eq!(e.stats().kv_blocks_used, 0);
    // Mid-prefill: 200 prompt tokens in chunks of 8; abort after a couple of steps.
    let mut long = prompt(2, 200);
    long[0] = SLOW;
    let steps = e.stats().steps;
    let mut h = e.submit(greedy(long, 4)).unwrap();
    let t0 = std::time::Instant::now();
    while e.stats().steps < steps + 3 && t0.elapsed() < IDLE {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(h.try_recv().is_none(), "still in prefill: no token yet");
    h.abort();
    assert!(e.wait_idle(IDLE));
    let s = e.stats();
    assert_eq!((s.kv_blocks_used, s.running, s.waiting), (0, 0, 0));
    // abort_all: every request ends with Finished(abort) + Done.
    let hs: Vec<_> = (0..3)
        .map(|i| {
            let mut p = prompt(i, 10);
            p[0] = SLOW;
            e.submit(greedy(p, 400)).unwrap()
        })
        .collect();
    e.abort_all();
    for h in hs {
        let c = collect(h);
        assert!(c.usage.is_some(), "{c:?}");
        assert_eq!(c.choices[0].reason, Some(FinishReason::Abort));
    }
    assert!(e.wait_idle(IDLE));
    assert_eq!(e.stats().kv_blocks_used, 0);
}

#[test]
fn invalid_requests_are_refused_at_submit_with_the_reason() {
    let e = start(EngineConfig { max_model_len: Some(100), ..EngineConfig::default() });
    assert_eq!(e.max_model_len(), 100);
    let msg = |r| match e.submit(r) {
        Err(SubmitError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {:?}", other.map(|h| h.id)),
    };
    assert!(msg(greedy(prompt(1, 90), 11)).contains("exceeds the model's context length of 100"));
    assert!(msg(greedy(vec![], 4)).contains("empty"));
    assert!(msg(greedy(vec![VOCAB as u32], 4)).contains("vocabulary"));
    let mut r = greedy(prompt(1, 5), 4);
    r.params.temperature = -1.0;
    assert!(msg(r).contains("temperature"));
    let e = start(EngineConfig { kv_cache_bytes: Some(4 * 16 * 8), ..EngineConfig::default() });
    assert_eq!(e.max_model_len(), 64, "the context is capped at what the pool holds");
    assert!(msg_of(&e, greedy(prompt(1, 60), 5)).contains("context length of 64"));
}

fn msg_of(e: &kiln_runtime::engine::EngineHandle, r: GenerateRequest) -> String {
    match e.submit(r) {
        Err(SubmitError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {:?}", other.map(|h| h.id)),
    }
}

#[test]
fn a_full_queue_overloads_and_shutdown_lets_accepted_requests_finish() {
    let e = start(EngineConfig { max_num_seqs: 1, max_batched_tokens: 4, max_queue: 2, ..EngineConfig::default() });
    let mut accepted = Vec::new();
    let mut overloaded = 0;
    for i in 0..4 {
        match e.submit(greedy(prompt(i, 8), 60)) {
            Ok(h) => accepted.push(h),
            Err(SubmitError::Overloaded(m)) => {
                assert!(m.contains("limit 2"), "{m}");
                overloaded += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(overloaded >= 1 && accepted.len() >= 2);
    e.shutdown();
    assert_eq!(e.submit(greedy(prompt(9, 8), 4)).err(), Some(SubmitError::ShuttingDown));
    for h in accepted {
        let c = collect(h);
        assert!(c.usage.is_some(), "accepted requests finish after shutdown: {c:?}");
    }
    assert!(e.wait_idle(IDLE));
    // The thread exits once idle.
    let t0 = std::time::Instant::now();
    while e.heartbeat().alive && t0.elapsed() < IDLE {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!e.heartbeat().alive);
}

#[test]
fn handles_are_thread_safe_and_an_idle_engine_keeps_beating() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<kiln_runtime::engine::EngineHandle>();
    send_sync::<kiln_runtime::engine::RequestHandle>();
    let e = start(EngineConfig::default());
    std::thread::sleep(Duration::from_millis(700));
    let hb = e.heartbeat();
    assert!(hb.alive);
    assert!(hb.last_progress.elapsed() < Duration::from_millis(500), "an idle engine still reports progress");
    assert_eq!(e.stats().steps, 0, "an idle engine runs no steps");
}

/// The engine's own host time per step (scheduling, batch building, sampling and
/// detokenizing on the host, events, update), with a model that costs almost nothing: what a
/// GPU step pays on top of its kernels when nothing overlaps. `cargo test --release -p
/// kiln-runtime --test engine_fake -- --ignored --nocapture host_time`.
#[test]
#[ignore]
fn host_time_per_step() {
    for batch in [1usize, 64, 256] {
        let e = start(EngineConfig { max_num_seqs: 256, max_batched_tokens: 8192, ..EngineConfig::default() });
        let reqs: Vec<GenerateRequest> = (0..batch as u32)
            .map(|i| GenerateRequest {
                prompt_ids: prompt(i, 16),
                params: SamplingParams { max_tokens: 200, ignore_eos: true, ..SamplingParams::greedy() },
                n: 1,
                beam: None,
            })
            .collect();
        let handles: Vec<_> = reqs.into_iter().map(|r| e.submit(r).expect("submit")).collect();
        handles.into_iter().for_each(|h| {
            collect(h);
        });
        let s = e.stats();
        let per = |x: f64| x / s.steps as f64 * 1e6;
        eprintln!(
            "batch {batch}: {} steps, engine host time {:.1} µs/step, fake model {:.1} µs/step",
            s.steps,
            per(s.step_seconds - s.model_seconds),
            per(s.model_seconds)
        );
    }
}

/// A model whose logits the device sampler refuses (i32): the engine must notice the failure
/// at the first sampled step, say so, and sample on the host from then on, with the host
/// path's exact output and no failed request.
#[test]
fn a_failing_device_sampler_falls_back_to_the_host() {
    use kiln_runtime::model::{CausalLm, ForwardBatch, KvCache, ModelError, ModelInfo};
    use kiln_runtime::{Device, Tensor};
    use std::sync::Arc;
    struct IntLogits(Arc<dyn CausalLm>);
    impl CausalLm for IntLogits {
        fn info(&self) -> &ModelInfo {
            self.0.info()
        }
        fn device(&self) -> &Device {
            self.0.device()
        }
        fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache, ModelError> {
            self.0.new_kv_cache(num_blocks, block_size)
        }
        fn forward(&self, batch: &ForwardBatch<'_>, kv: &mut KvCache) -> Result<Tensor, ModelError> {
            let l = self.0.forward(batch, kv)?;
            let ints: Vec<i32> =
                l.to_host_f32()?.iter().map(|&x| if x.is_finite() { (x * 100.0) as i32 } else { -1_000_000 }).collect();
            Ok(Tensor::from_host(self.device(), &ints, l.rows(), l.cols())?)
        }
    }
    let run = |sampling: SamplingPlacement| {
        let model: Arc<dyn CausalLm> = Arc::new(IntLogits(engine_support::fake_model(512)));
        let cfg = EngineConfig { sampling, ..EngineConfig::default() };
        let e = kiln_runtime::engine::Engine::start(model, Arc::new(engine_support::FakeDetok), cfg).expect("start");
        let out: Vec<Collected> = sampling_requests().into_iter().map(|r| run(&e, r)).collect();
        (out, e.sampling_note())
    };
    let (want, _) = run(SamplingPlacement::Host);
    let (got, note) = run(SamplingPlacement::Device);
    assert!(want.iter().all(|c| c.error.is_none()), "{want:?}");
    assert_eq!(got, want);
    assert!(note.contains("device sampler failed") && note.contains("float"), "{note}");
}
