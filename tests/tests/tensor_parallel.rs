//! Tensor parallelism on CPU ranks (the in-process CPU group): a model split over `tp` ranks
//! equals the unsplit model — every position's logits within 1e-5 of the largest logit, 16
//! greedy tokens equal — for every architecture's tiny fixture (safetensors and GGUF; 4 query
//! and 2 KV heads: tp = 2 splits the KV heads, tp = 4 replicates them), synthetic Llamas of
//! 8/8 and 16/4 heads (tp = 2, 4, 8), and the real default model (9/3 heads: tp = 3) with its
//! weights kept quantized. On top: the engine with continuous batching, preemption and beam
//! search over tp = 3 gives the plain model's tokens; bad sizes and a failing rank are clear
//! errors, never a hang.

use kiln_models::config::LlamaConfig;
use kiln_models::detok_adapter::TokenizerDetokenizer;
use kiln_models::loader::{build_parallel, load_weights_only_with, load_with, LoadedModel, WeightMode};
use kiln_models::model_check::{compare_logits, greedy, prefill_logits};
use kiln_models::tp::TpModel;
use kiln_runtime::engine::{BeamParams, Engine, EngineConfig, EngineEvent, GenerateRequest, RequestHandle};
use kiln_runtime::model::{CausalLm, ForwardBatch};
use kiln_runtime::sample::SamplingParams;
use kiln_runtime::{DType, Device};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ranks(n: usize) -> Vec<Device> {
    vec![Device::Cpu; n]
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The sharded model against the whole one on `prompts`: every position's logits, 16 greedy
/// tokens.
fn assert_same(what: &str, whole: &dyn CausalLm, split: &TpModel, prompts: &[Vec<u32>], tol: f64) {
    for (i, prompt) in prompts.iter().enumerate() {
        let (want, got) = (prefill_logits(whole, prompt).unwrap(), prefill_logits(split, prompt).unwrap());
        for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
            let (err, same_argmax) = compare_logits(g, w);
            assert!(err <= tol && same_argmax, "{what}: prompt {i} position {pos}: relative error {err}");
        }
        let (_, want) = greedy(whole, prompt, 16).unwrap();
        let (_, got) = greedy(split, prompt, 16).unwrap();
        assert_eq!(got, want, "{what}: prompt {i}: greedy tokens");
    }
}

/// Dense f32 weights: the sums only change order (1e-5). Quantized weights: the CPU kernels
/// round each 32-value activation block to 16-bit integers, so a value that moved by an ulp
/// (sums in another order upstream) can land on the next integer, 2⁻¹⁶ of its block's largest
/// value away (5e-4; measured up to 1.1e-4).
fn check_checkpoint(what: &str, path: &Path, tps: &[usize], mode: WeightMode, prompts: &[Vec<u32>], tol: f64) {
    let whole = load_weights_only_with(path, &Device::Cpu, DType::F32, mode).unwrap();
    for &tp in tps {
        let split =
            build_parallel(path, &ranks(tp), DType::F32, mode).unwrap_or_else(|e| panic!("{what} tp {tp}: {e}"));
        assert_eq!(split.world(), tp);
        assert_same(&format!("{what} tp={tp}"), whole.as_ref(), &split, prompts, tol);
    }
}

#[test]
fn every_architecture_split_over_2_and_4_ranks_equals_the_whole() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/arch-tiny");
    let mut archs: Vec<_> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    archs.sort();
    assert!(archs.len() >= 8, "{archs:?}");
    for dir in archs {
        let arch = dir.file_name().unwrap().to_string_lossy().into_owned();
        let refj: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let prompts: Vec<Vec<u32>> =
            refj["prompts"].as_array().unwrap().iter().take(2).map(|p| ids(&p["ids"])).collect();
        check_checkpoint(&arch, &dir, &[1, 2, 4], WeightMode::Stored, &prompts, 1e-5);
        let gguf = dir.join(format!("{arch}-tiny.gguf"));
        check_checkpoint(&format!("{arch} gguf"), &gguf, &[2, 4], WeightMode::Stored, &prompts, 1e-5);
    }
}

fn synthetic(nh: usize, nkv: usize) -> LlamaConfig {
    LlamaConfig {
        hidden_size: 8 * nh,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: nh,
        num_key_value_heads: nkv,
        head_dim: 8,
        vocab_size: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_ids: vec![],
        architecture: "llama".into(),
    }
}

#[test]
fn synthetic_llamas_of_8_8_and_16_4_heads_split_over_2_4_and_8_ranks() {
    let prompts = vec![(0..37).map(|i| (i * 7 + 3) % 128).collect::<Vec<u32>>(), vec![5, 9, 1]];
    for (nh, nkv, tps) in [(8, 8, vec![2, 4, 8]), (16, 4, vec![2, 4, 8])] {
        let dir = tempfile::tempdir().unwrap();
        kiln_models::synth::write_hf_dir(&synthetic(nh, nkv), DType::F32, 11, dir.path()).unwrap();
        check_checkpoint(&format!("{nh}/{nkv} heads"), dir.path(), &tps, WeightMode::Stored, &prompts, 1e-5);
    }
}

#[test]
fn a_synthetic_model_made_by_each_rank_equals_the_whole_one() {
    // Each rank fills only its parts of the seeded weights (what `kiln bench --tp-size` runs).
    let prompts = vec![(0..21).map(|i| (i * 5 + 1) % 128).collect::<Vec<u32>>()];
    for tied in [false, true] {
        let cfg = LlamaConfig { tie_word_embeddings: tied, ..synthetic(16, 4) };
        let whole = kiln_models::llama::random(cfg.clone(), &Device::Cpu, DType::F32, 3).unwrap();
        for tp in [2, 4, 8] {
            let split = kiln_models::tp::random_parallel(cfg.clone(), &ranks(tp), DType::F32, 3).unwrap();
            assert_same(&format!("synthetic tied={tied} tp={tp}"), &whole, &split, &prompts, 1e-5);
        }
    }
}

fn default_model() -> PathBuf {
    kiln_models::fetch::default_model_path().expect("the default model (run `kiln fetch`)")
}

fn reference() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn fixture_prompts() -> Vec<Vec<u32>> {
    reference()["prompts"].as_array().unwrap().iter().map(|p| ids(&p["ids"])).collect()
}

#[test]
fn the_default_model_split_over_3_ranks_with_quantized_weights_equals_the_whole() {
    let prompts: Vec<_> = fixture_prompts().into_iter().take(2).collect();
    let path = default_model();
    check_checkpoint("default model (Q4_1 kept quantized)", &path, &[3], WeightMode::Stored, &prompts, 5e-4);
}

#[test]
fn sizes_that_do_not_split_are_refused_naming_the_numbers() {
    for tp in [2, 4] {
        let e = build_parallel(&default_model(), &ranks(tp), DType::F32, WeightMode::Stored).err().unwrap().to_string();
        assert!(e.contains("9 attention heads do not divide"), "tp {tp}: {e}");
    }
    let e = build_parallel(&default_model(), &[], DType::F32, WeightMode::Stored).err().unwrap().to_string();
    assert!(e.contains("no devices"), "{e}");
}

fn collect(mut h: RequestHandle) -> Result<Vec<u32>, String> {
    let mut tokens = Vec::new();
    while let Some(ev) = h.blocking_recv() {
        match ev {
            EngineEvent::Token { token, .. } => tokens.push(token),
            EngineEvent::Finished { token_ids, .. } => tokens = token_ids,
            EngineEvent::Done { .. } => return Ok(tokens),
            EngineEvent::Error { message } => return Err(message),
        }
    }
    Err("stream ended without Done".into())
}

fn greedy_req(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        params: SamplingParams { max_tokens, ..SamplingParams::greedy() },
        n: 1,
        beam: None,
    }
}

#[test]
fn the_engine_over_3_ranks_batches_preempts_and_beam_searches_like_the_plain_model() {
    let path = default_model();
    let LoadedModel { model: whole, tokenizer, .. } =
        load_with(&path, &Device::Cpu, DType::F32, WeightMode::Dense).unwrap();
    let split: Arc<dyn CausalLm> = Arc::new(build_parallel(&path, &ranks(3), DType::F32, WeightMode::Dense).unwrap());
    let detok = Arc::new(TokenizerDetokenizer::new(tokenizer));
    let f = fixture_prompts();
    let mut prompts = f.clone();
    prompts.extend(f.iter().map(|p| p[..p.len().div_ceil(2)].to_vec()));
    // The plain model, one request at a time.
    let solo: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(whole.as_ref(), p, 8).unwrap().1).collect();
    // A pool of 12 blocks of 16 tokens for all the requests at once: preemption.
    let bytes = split.info().kv_bytes_per_token() * 16 * 12;
    for cfg in [EngineConfig::default(), EngineConfig { kv_cache_bytes: Some(bytes), ..EngineConfig::default() }] {
        let e = Engine::start(split.clone(), detok.clone(), cfg).unwrap();
        let handles: Vec<_> = prompts.iter().map(|p| e.submit(greedy_req(p.clone(), 8)).unwrap()).collect();
        for (i, (h, want)) in handles.into_iter().zip(&solo).enumerate() {
            assert_eq!(&collect(h).unwrap(), want, "request {i}");
        }
        assert!(e.wait_idle(Duration::from_secs(120)));
        let stats = e.stats();
        assert_eq!((stats.kv_blocks_used, stats.running, stats.waiting), (0, 0, 0), "{stats:?}");
    }
    // Beam search against HF transformers' beams (tests/fixtures/reference.json).
    let beam = &reference()["beam"];
    let max_tokens = beam["params"]["max_new_tokens"].as_u64().unwrap() as usize;
    let e = Engine::start(split.clone(), detok, EngineConfig::default()).unwrap();
    for r in beam["results"].as_array().unwrap() {
        let prompt = f[r["prompt_index"].as_u64().unwrap() as usize].clone();
        let req = GenerateRequest { beam: Some(BeamParams::default()), ..greedy_req(prompt, max_tokens) };
        assert_eq!(collect(e.submit(req).unwrap()).unwrap(), ids(&r["ids"]), "beam of prompt {}", r["prompt_index"]);
    }
}

#[test]
fn a_rank_that_fails_mid_step_ends_the_step_with_its_error_and_no_hang() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/arch-tiny/mistral");
    let split = build_parallel(&path, &ranks(2), DType::F32, WeightMode::Stored).unwrap();
    let mut kv = split.new_kv_cache(4, 16).unwrap();
    // Rank 1's pools too narrow for its heads: its step fails while rank 0 waits in a collective.
    let layers = kv.k.len() / 2;
    for l in layers..2 * layers {
        kv.k[l] = kiln_runtime::Tensor::zeros(&Device::Cpu, DType::F32, 64, 3).unwrap();
    }
    let seqs = [kiln_runtime::attention::SeqAttn { q_start: 0, q_len: 3, ctx_len: 3, block_table: &[0] }];
    let batch =
        ForwardBatch { tokens: &[1, 2, 3], positions: &[0, 1, 2], slots: &[0, 1, 2], seqs: &seqs, logits_rows: &[2] };
    let t0 = Instant::now();
    let Err(e) = split.forward(&batch, &mut kv) else { panic!("the step should fail") };
    let e = e.to_string();
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(e.contains("tensor-parallel step failed") && !e.contains("aborted"), "the root cause, not an abort: {e}");
    let Err(again) = split.forward(&batch, &mut kv) else { panic!("a failed group should refuse") };
    let again = again.to_string();
    assert!(again.contains("failed in an earlier step"), "{again}");
}
