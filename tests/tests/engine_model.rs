//! The engine on the real default model (CPU, f32): batching invariance (16 concurrent greedy
//! requests of mixed lengths give exactly their solo tokens, also under preemption and with small
//! prefill chunks), prefix caching, aborts freeing everything, admission errors, beam search
//! against HF transformers (tests/fixtures/reference.json "beam"), and seeded `n > 1` sampling
//! with the prompt's blocks shared.

use kiln_models::detok_adapter::TokenizerDetokenizer;
use kiln_models::generate::generate;
use kiln_models::loader::{load_with, LoadedModel, WeightMode};
use kiln_models::tokenizer::Tokenizer;
use kiln_runtime::engine::{
    BeamParams, Engine, EngineConfig, EngineEvent, EngineHandle, EngineStats, GenerateRequest, RequestHandle,
    SubmitError,
};
use kiln_runtime::model::CausalLm;
use kiln_runtime::sample::{FinishReason, SamplingParams};
use kiln_runtime::DType;
use kiln_runtime::Device;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const IDLE: Duration = Duration::from_secs(120);
/// Tokens per request in the invariance tests: enough to cross block boundaries, cheap on 2 cores.
const MAX_TOKENS: usize = 10;

struct Shared {
    model: Arc<dyn CausalLm>,
    tokenizer: Tokenizer,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let path = match std::env::var_os("KILN_MODEL") {
            Some(p) => PathBuf::from(p),
            None => kiln_models::fetch::default_model_path().expect("the default model (run `kiln fetch`)"),
        };
        let LoadedModel { model, tokenizer, .. } =
            load_with(&path, &Device::Cpu, DType::F32, WeightMode::Dense).expect("load the default model");
        Shared { model: Arc::from(model), tokenizer }
    })
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference.json");
        serde_json::from_str(&std::fs::read_to_string(&p).expect("tests/fixtures/reference.json")).unwrap()
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn fixture_prompts() -> Vec<Vec<u32>> {
    reference()["prompts"].as_array().unwrap().iter().map(|p| ids(&p["ids"])).collect()
}

/// 16 prompts of mixed lengths (3 to 95 tokens): the fixture prompts, their halves, and
/// concatenations that cross the 64-row boundary of the CPU GEMM's paths.
fn mixed_prompts() -> Vec<Vec<u32>> {
    let f = fixture_prompts();
    let mut out = f.clone();
    for p in &f {
        out.push(p[..p.len().div_ceil(2)].to_vec());
    }
    out.push([f[2].as_slice(), &f[0]].concat());
    out.push([f[3].as_slice(), &f[1]].concat());
    out.push([f[5].as_slice(), &f[2][..40]].concat());
    out.push(f[1][..3].to_vec());
    assert_eq!(out.len(), 16);
    out
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        params: SamplingParams { max_tokens, ..SamplingParams::greedy() },
        n: 1,
        beam: None,
    }
}

fn start(cfg: EngineConfig) -> EngineHandle {
    let s = shared();
    Engine::start(s.model.clone(), Arc::new(TokenizerDetokenizer::new(s.tokenizer.clone())), cfg).expect("start")
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Choice {
    tokens: Vec<u32>,
    text: String,
    reason: Option<FinishReason>,
}

#[derive(Debug, Default)]
struct Out {
    choices: Vec<Choice>,
    cached_prompt_tokens: usize,
    error: Option<String>,
}

/// Collects a request's events, checking the stream contract on the way.
fn collect(mut h: RequestHandle) -> Out {
    let mut out = Out::default();
    while let Some(ev) = h.blocking_recv() {
        match ev {
            EngineEvent::Token { index, token, text, .. } => {
                if out.choices.len() <= index {
                    out.choices.resize(index + 1, Choice::default());
                }
                let c = &mut out.choices[index];
                assert!(c.reason.is_none(), "token after Finished");
                c.tokens.push(token);
                c.text.push_str(&text);
            }
            EngineEvent::Finished { index, reason, text, token_ids } => {
                if out.choices.len() <= index {
                    out.choices.resize(index + 1, Choice::default());
                }
                let c = &mut out.choices[index];
                if c.tokens.is_empty() {
                    c.tokens = token_ids.clone();
                }
                assert_eq!(c.tokens, token_ids);
                c.text.push_str(&text);
                c.reason = Some(reason);
            }
            EngineEvent::Done { usage } => {
                out.cached_prompt_tokens = usage.cached_prompt_tokens;
                assert_eq!(usage.completion_tokens, out.choices.iter().map(|c| c.tokens.len()).sum::<usize>());
                return out;
            }
            EngineEvent::Error { message } => {
                out.error = Some(message);
                return out;
            }
        }
    }
    panic!("the stream ended without Done or Error");
}

/// Each prompt alone, through the single-sequence `generate`.
fn solo_tokens() -> &'static Vec<Vec<u32>> {
    static S: OnceLock<Vec<Vec<u32>>> = OnceLock::new();
    S.get_or_init(|| {
        let s = shared();
        let params = SamplingParams { max_tokens: MAX_TOKENS, ..SamplingParams::greedy() };
        mixed_prompts()
            .iter()
            .map(|p| generate(s.model.as_ref(), &s.tokenizer, p, &params, |_| {}).expect("generate").token_ids)
            .collect()
    })
}

/// All 16 prompts at once on an engine with `cfg`; checks every output against its solo run and
/// that the pool is empty afterwards.
fn check_invariance(cfg: EngineConfig) -> EngineStats {
    let e = start(cfg);
    let handles: Vec<RequestHandle> =
        mixed_prompts().into_iter().map(|p| e.submit(greedy(p, MAX_TOKENS)).expect("submit")).collect();
    let outs: Vec<Out> = handles.into_iter().map(collect).collect();
    for (i, (out, want)) in outs.iter().zip(solo_tokens()).enumerate() {
        assert!(out.error.is_none(), "request {i}: {:?}", out.error);
        assert_eq!(&out.choices[0].tokens, want, "request {i}: batched output differs from its solo run");
    }
    assert!(e.wait_idle(IDLE));
    let stats = e.stats();
    assert_eq!((stats.kv_blocks_used, stats.running, stats.waiting), (0, 0, 0), "{stats:?}");
    stats
}

#[test]
fn sixteen_concurrent_greedy_requests_match_their_solo_runs() {
    let stats = check_invariance(EngineConfig::default());
    assert_eq!(stats.requests_finished_total, 16);
}

#[test]
fn invariance_holds_under_preemption() {
    // 24 blocks of 16 tokens for 16 requests of up to ~105 tokens: the pool runs out.
    let bytes = shared().model.info().kv_bytes_per_token() * 16 * 24;
    let stats = check_invariance(EngineConfig { kv_cache_bytes: Some(bytes), ..EngineConfig::default() });
    assert!(stats.preemptions > 0, "expected preemptions: {stats:?}");
}

#[test]
fn invariance_holds_with_small_prefill_chunks() {
    let stats = check_invariance(EngineConfig { max_batched_tokens: 16, max_num_seqs: 16, ..EngineConfig::default() });
    // 16 requests with up to 95-token prompts and 16 tokens a step: prompts were chunked.
    assert!(stats.steps > 30, "{stats:?}");
}

#[test]
fn a_shared_prefix_is_reused_and_gives_identical_output() {
    let s = shared();
    let f = fixture_prompts();
    let prefix = [f[2].as_slice(), &f[3]].concat(); // 92 tokens: 5 full blocks
    let first = [prefix.as_slice(), &f[0]].concat();
    let second = [prefix.as_slice(), &f[1]].concat();
    let e = start(EngineConfig::default());
    let a = collect(e.submit(greedy(first, 4)).unwrap());
    assert!(a.error.is_none());
    let hits = e.stats().prefix_cache_hit_tokens;
    let b = collect(e.submit(greedy(second.clone(), 6)).unwrap());
    let grown = e.stats().prefix_cache_hit_tokens - hits;
    assert!(grown >= 80, "the second request should reuse the prefix's 5 full blocks, got {grown} tokens");
    assert_eq!(b.cached_prompt_tokens as u64, grown);
    let params = SamplingParams { max_tokens: 6, ..SamplingParams::greedy() };
    let want = generate(s.model.as_ref(), &s.tokenizer, &second, &params, |_| {}).unwrap();
    assert_eq!(b.choices[0].tokens, want.token_ids);
    assert_eq!(b.choices[0].text, want.text);
}

#[test]
fn aborts_mid_prefill_and_mid_decode_free_everything() {
    let e = start(EngineConfig { max_batched_tokens: 16, max_num_seqs: 16, ..EngineConfig::default() });
    let f = fixture_prompts();
    let long = [f[2].as_slice(), &f[3], &f[4]].concat(); // 132 tokens: 9 chunks of 16
    let steps = e.stats().steps;
    let mut h = e.submit(greedy(long, 50)).unwrap();
    let t0 = std::time::Instant::now();
    while e.stats().steps < steps + 2 && t0.elapsed() < IDLE {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(h.try_recv().is_none(), "still in prefill: no token yet");
    drop(h); // mid-prefill
    assert!(e.wait_idle(IDLE));
    let s = e.stats();
    assert_eq!((s.kv_blocks_used, s.running, s.waiting), (0, 0, 0), "{s:?}");
    let mut h = e.submit(GenerateRequest { n: 2, ..greedy(f[2].clone(), 200) }).unwrap();
    let mut tokens = 0;
    while tokens < 4 {
        if let Some(EngineEvent::Token { .. }) = h.blocking_recv() {
            tokens += 1;
        }
    }
    assert!(e.stats().kv_blocks_used > 0);
    drop(h); // mid-decode, with a fork
    assert!(e.wait_idle(IDLE));
    let s = e.stats();
    assert_eq!((s.kv_blocks_used, s.running, s.waiting), (0, 0, 0), "{s:?}");
    assert_eq!(s.requests_finished_total, 2);
}

#[test]
fn over_long_requests_are_refused_with_the_reason() {
    let e = start(EngineConfig::default());
    let max = e.max_model_len();
    match e.submit(greedy(vec![504; max - 3], 4)) {
        Err(SubmitError::Invalid(m)) => assert!(m.contains(&format!("context length of {max} tokens")), "{m}"),
        other => panic!("expected Invalid, got {:?}", other.map(|h| h.id)),
    }
    let small = start(EngineConfig {
        kv_cache_bytes: Some(shared().model.info().kv_bytes_per_token() * 64),
        ..EngineConfig::default()
    });
    assert_eq!(small.max_model_len(), 64);
    match small.submit(greedy(fixture_prompts()[2].clone(), 20)) {
        Err(SubmitError::Invalid(m)) => assert!(m.contains("55 tokens") && m.contains("context length of 64"), "{m}"),
        other => panic!("expected Invalid, got {:?}", other.map(|h| h.id)),
    }
}

#[test]
fn beam_search_equals_hf_transformers() {
    let beam = &reference()["beam"];
    let p = &beam["params"];
    let params = BeamParams {
        width: p["num_beams"].as_u64().unwrap() as usize,
        length_penalty: p["length_penalty"].as_f64().unwrap() as f32,
        early_stopping: p["early_stopping"].as_bool().unwrap(),
    };
    assert_eq!(params, BeamParams::default(), "kiln's beam defaults are HF's fixture settings");
    let max_tokens = p["max_new_tokens"].as_u64().unwrap() as usize;
    let prompts = fixture_prompts();
    let e = start(EngineConfig::default());
    let results = beam["results"].as_array().unwrap();
    let handles: Vec<RequestHandle> = results
        .iter()
        .map(|r| {
            let prompt = prompts[r["prompt_index"].as_u64().unwrap() as usize].clone();
            e.submit(GenerateRequest { beam: Some(params.clone()), ..greedy(prompt, max_tokens) }).unwrap()
        })
        .collect();
    for (r, h) in results.iter().zip(handles) {
        let out = collect(h);
        assert!(out.error.is_none(), "{:?}", out.error);
        assert_eq!(out.choices.len(), 1);
        assert_eq!(out.choices[0].tokens, ids(&r["ids"]), "prompt {}: {:?}", r["prompt_index"], out.choices[0].text);
        let ended = out.choices[0].tokens.last() == Some(&2);
        assert_eq!(out.choices[0].reason, Some(if ended { FinishReason::Stop } else { FinishReason::Length }));
    }
    assert!(e.wait_idle(IDLE));
    assert_eq!(e.stats().kv_blocks_used, 0);
}

#[test]
fn seeded_n3_sampling_is_reproducible_and_shares_the_prompt() {
    let s = shared();
    let prompt = fixture_prompts()[2].clone(); // 55 tokens: 3 full blocks + 1 partial
    let params = SamplingParams { temperature: 0.8, seed: Some(7), max_tokens: 8, ..SamplingParams::default() };
    // No prefix cache, so the only sharing is the forks'.
    let e = start(EngineConfig { enable_prefix_caching: false, ..EngineConfig::default() });
    let req = GenerateRequest { prompt_ids: prompt.clone(), params: params.clone(), n: 3, beam: None };
    let mut h = e.submit(req.clone()).unwrap();
    let mut out = Out::default();
    let mut peak_blocks = 0;
    while let Some(ev) = h.blocking_recv() {
        peak_blocks = peak_blocks.max(e.stats().kv_blocks_used);
        match ev {
            EngineEvent::Token { index, token, .. } => {
                if out.choices.len() <= index {
                    out.choices.resize(index + 1, Choice::default());
                }
                out.choices[index].tokens.push(token);
            }
            EngineEvent::Done { .. } => break,
            EngineEvent::Error { message } => panic!("{message}"),
            EngineEvent::Finished { .. } => {}
        }
    }
    // Unshared, 3 choices of up to 62 tokens would hold 12 blocks; shared: 3 + 3.
    assert!(peak_blocks > 0 && peak_blocks <= 6, "peak {peak_blocks} blocks: the prompt's blocks are not shared");
    assert_eq!(out.choices.len(), 3);
    let again = collect(e.submit(req).unwrap());
    for (i, c) in out.choices.iter().enumerate() {
        assert_eq!(c.tokens, again.choices[i].tokens, "choice {i} is not reproducible");
        // Choice i samples with seed + i: the same as a solo run with that seed.
        let solo_params = SamplingParams { seed: Some(7 + i as u64), ..params.clone() };
        let solo = generate(s.model.as_ref(), &s.tokenizer, &prompt, &solo_params, |_| {}).unwrap();
        assert_eq!(c.tokens, solo.token_ids, "choice {i} vs generate with seed {}", 7 + i);
    }
    assert!(out.choices[0].tokens != out.choices[1].tokens || out.choices[1].tokens != out.choices[2].tokens);
}
