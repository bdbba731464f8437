//! `kiln-check-model`: the whole model on the GPU against the CPU (see
//! `kiln_models::model_check`).
//!
//! - `kiln-check-model truncate IN.gguf OUT.gguf N`: keep the first N layers (to carry a model
//!   too large for the GPU machine's file transfer);
//! - `kiln-check-model [--model PATH] [--fixtures reference.json] [--tokens 16] [--dtypes bf16,f32]
//!   [--weights dense|stored]`:
//!   per fixture prompt, last-position logits (max_rel vs the CPU's f32) and greedy tokens,
//!   then batching invariance of the engine on the GPU (16 mixed requests alone vs together),
//!   then the device sampler inside the engine against the host sampler (16 requests with
//!   every sampling setting, all at once: identical tokens and log-probabilities).

use kiln_models::detok_adapter::TokenizerDetokenizer;
use kiln_models::loader::{load_with, WeightMode};
use kiln_models::model_check::{common_prefix, compare_logits, fixture_prompts, greedy, truncate_gguf};
use kiln_runtime::engine::{Engine, EngineConfig, EngineEvent, GenerateRequest, SamplingPlacement, TokenLogprob};
use kiln_runtime::model::CausalLm;
use kiln_runtime::sample::SamplingParams;
use kiln_runtime::DType;
use kiln_runtime::Device;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("truncate") {
        let (Some(i), Some(o), Some(n)) = (args.get(1), args.get(2), args.get(3).and_then(|n| n.parse().ok())) else {
            eprintln!("usage: kiln-check-model truncate IN.gguf OUT.gguf LAYERS");
            return ExitCode::FAILURE;
        };
        return match truncate_gguf(i.as_ref(), o.as_ref(), n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("truncate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kiln-check-model: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<bool, String> {
    let path = match arg(args, "--model") {
        Some(p) => PathBuf::from(p),
        None => kiln_models::fetch::default_model_path().map_err(|e| e.to_string())?,
    };
    let fixtures = PathBuf::from(arg(args, "--fixtures").unwrap_or_else(|| "tests/fixtures/reference.json".into()));
    let n_tokens: usize = arg(args, "--tokens").and_then(|n| n.parse().ok()).unwrap_or(16);
    let dtypes: Vec<DType> = arg(args, "--dtypes")
        .unwrap_or_else(|| "bf16,f32".into())
        .split(',')
        .map(|d| match d {
            "f32" => Ok(DType::F32),
            "f16" => Ok(DType::F16),
            "bf16" => Ok(DType::BF16),
            o => Err(format!("unknown dtype {o}")),
        })
        .collect::<Result<_, _>>()?;
    // `--weights stored`: the GPU model keeps the file's quantized weights where it has kernels
    // for them (GGUF 4-bit blocks through the int4 kernels); the CPU reference stays dense f32.
    let gpu_weights = match arg(args, "--weights").as_deref() {
        None | Some("dense") => WeightMode::Dense,
        Some("stored") => WeightMode::Stored,
        Some(o) => return Err(format!("--weights {o}: expected dense or stored")),
    };
    let gpu = Device::cuda(0).map_err(|e| e.to_string())?;
    println!("device: {}\nmodel: {}\nGPU weights: {gpu_weights:?}", gpu.describe(), path.display());
    let prompts = fixture_prompts(&fixtures)?;
    let t = Instant::now();
    let cpu = load_with(&path, &Device::Cpu, DType::F32, WeightMode::Dense).map_err(|e| e.to_string())?;
    println!(
        "layers: {} (CPU f32 reference loaded in {:.1} s)",
        cpu.model.info().num_layers(),
        t.elapsed().as_secs_f64()
    );
    let refs: Vec<(Vec<f32>, Vec<u32>)> = prompts
        .iter()
        .map(|p| greedy(cpu.model.as_ref(), p, n_tokens))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut ok = true;
    let free = || gpu.cuda_backend().and_then(|b| b.free_mem().ok()).unwrap_or(0);
    // Each dtype with decode steps from CUDA graphs (the default), bf16 also eagerly.
    let mut runs: Vec<(DType, bool)> = dtypes.iter().map(|&d| (d, true)).collect();
    if dtypes.contains(&DType::BF16) {
        runs.push((DType::BF16, false));
    }
    for (dtype, graphs) in runs {
        // The model reads the switch when it is built.
        std::env::set_var("KILN_CUDA_GRAPHS", if graphs { "1" } else { "0" });
        let before = free();
        let g = load_with(&path, &gpu, dtype, gpu_weights).map_err(|e| e.to_string())?;
        // What the load took on the device: shows whether quantized weights stayed quantized.
        println!("\n{dtype} model on the GPU: {:.0} MiB", before.saturating_sub(free()) as f64 / (1 << 20) as f64);
        println!("| dtype | prompt | tokens | logits max_rel | argmax same | greedy tokens same (of {n_tokens}) |\n|---|---|---|---|---|---|");
        let label = format!("{dtype}{}", if graphs { "" } else { " (eager)" });
        let tol = if dtype == DType::F32 { 1e-3 } else { 5e-2 };
        for (i, (p, (want_logits, want_tokens))) in prompts.iter().zip(&refs).enumerate() {
            let (logits, tokens) = greedy(g.model.as_ref(), p, n_tokens).map_err(|e| e.to_string())?;
            let (err, same) = compare_logits(&logits, want_logits);
            let prefix = common_prefix(&tokens, want_tokens);
            let pass = err <= tol && same && (dtype != DType::F32 || prefix == n_tokens);
            ok &= pass;
            println!(
                "| {label} | {i} | {} | {err:.2e} | {same} | {prefix}{} |",
                p.len(),
                if pass { "" } else { " FAIL" }
            );
        }
        if dtype == DType::BF16 && graphs {
            let model: Arc<dyn CausalLm> = Arc::from(g.model);
            // Kept-quantized weights pick their kernel by the step's row count (int4: GEMV up to
            // 4 rows, tensor cores to 64), so a request alone and in a batch may round apart:
            // reported, not required.
            let same = invariance(model.clone(), g.tokenizer.clone(), &prompts, n_tokens)?;
            ok &= same || gpu_weights == WeightMode::Stored;
            ok &= sampling_placements(model, g.tokenizer, &prompts, n_tokens)?;
        }
    }
    println!("\nresult: {}", if ok { "ALL PASSED" } else { "FAILED" });
    Ok(ok)
}

/// 16 requests (fixture prompts, their halves, pairs joined) through the engine on the GPU,
/// each alone, then all at once: the greedy tokens must be the same.
fn invariance(
    model: Arc<dyn CausalLm>,
    tok: kiln_models::tokenizer::Tokenizer,
    fixture: &[Vec<u32>],
    n: usize,
) -> Result<bool, String> {
    let mut reqs: Vec<Vec<u32>> = fixture.to_vec();
    for p in fixture {
        reqs.push(p[..p.len().div_ceil(2)].to_vec());
    }
    for i in 0..fixture.len() {
        if reqs.len() >= 16 {
            break;
        }
        reqs.push([fixture[i].as_slice(), &fixture[(i + 1) % fixture.len()]].concat());
    }
    reqs.truncate(16);
    let engine = Engine::start(model, Arc::new(TokenizerDetokenizer::new(tok)), EngineConfig::default())
        .map_err(|e| e.to_string())?;
    let one = |p: &Vec<u32>| -> Result<kiln_runtime::engine::RequestHandle, String> {
        engine
            .submit(GenerateRequest {
                prompt_ids: p.clone(),
                params: SamplingParams { max_tokens: n, ignore_eos: true, ..SamplingParams::greedy() },
                n: 1,
                beam: None,
            })
            .map_err(|e| e.to_string())
    };
    let collect = |mut h: kiln_runtime::engine::RequestHandle| -> Result<Vec<u32>, String> {
        let mut toks = vec![];
        while let Some(ev) = h.blocking_recv() {
            match ev {
                EngineEvent::Token { token, .. } => toks.push(token),
                EngineEvent::Done { .. } => return Ok(toks),
                EngineEvent::Error { message } => return Err(message),
                EngineEvent::Finished { .. } => {}
            }
        }
        Err("stream ended early".into())
    };
    let t = Instant::now();
    let alone: Vec<Vec<u32>> = reqs.iter().map(|p| one(p).and_then(collect)).collect::<Result<_, _>>()?;
    let t_alone = t.elapsed();
    let t = Instant::now();
    let handles: Vec<_> = reqs.iter().map(one).collect::<Result<_, _>>()?;
    let together: Vec<Vec<u32>> = handles.into_iter().map(collect).collect::<Result<_, _>>()?;
    let t_together = t.elapsed();
    // The next check starts its own engine, whose KV pool is sized from free GPU memory.
    engine.shutdown_and_join(std::time::Duration::from_secs(30));
    let same = alone.iter().zip(&together).filter(|(a, b)| a == b).count();
    let prefixes: Vec<usize> = alone.iter().zip(&together).map(|(a, b)| common_prefix(a, b)).collect();
    println!(
        "\nbatching invariance (engine, GPU bf16, {} requests × {n} greedy tokens): {same}/{} identical alone vs together (common prefixes {prefixes:?}); alone {:.2} s, together {:.2} s",
        reqs.len(),
        reqs.len(),
        t_alone.as_secs_f64(),
        t_together.as_secs_f64()
    );
    Ok(same == reqs.len())
}

/// One request's streamed tokens and log-probabilities, per choice.
type Streamed = Vec<(Vec<u32>, Vec<TokenLogprob>)>;

/// 16 requests covering temperature, top-k, top-p, min-p, penalties, log-probabilities and
/// `n = 2`, all at once through an engine that samples on the host, then through one that
/// samples on the GPU: tokens must be identical and log-probabilities within 1e-5 (the two
/// sides read the same bf16 logits; only CUDA's `log` against Rust's may differ).
fn sampling_placements(
    model: Arc<dyn CausalLm>,
    tok: kiln_models::tokenizer::Tokenizer,
    fixture: &[Vec<u32>],
    n: usize,
) -> Result<bool, String> {
    let reqs: Vec<GenerateRequest> = (0..16usize)
        .map(|i| {
            let p = SamplingParams {
                max_tokens: n,
                ignore_eos: true,
                seed: Some(100 + i as u64),
                temperature: [0.7, 1.0, 1.3, 0.0][i % 4],
                top_k: [None, Some(20)][i % 2],
                top_p: [1.0, 0.9, 0.5][i % 3],
                min_p: [0.0, 0.05][(i / 2) % 2],
                repetition_penalty: [1.0, 1.2][(i / 4) % 2],
                frequency_penalty: [0.0, 0.3][(i / 8) % 2],
                presence_penalty: [0.0, 0.4][(i / 3) % 2],
                logprobs: [None, Some(5), Some(0)][i % 3],
                ..SamplingParams::default()
            };
            GenerateRequest { prompt_ids: fixture[i % fixture.len()].clone(), params: p, n: 1 + i % 5 / 4, beam: None }
        })
        .collect();
    let run = |placement: SamplingPlacement| -> Result<(Vec<Streamed>, f64), String> {
        let cfg = EngineConfig { sampling: placement, ..EngineConfig::default() };
        let engine = Engine::start(model.clone(), Arc::new(TokenizerDetokenizer::new(tok.clone())), cfg)
            .map_err(|e| e.to_string())?;
        let handles: Vec<_> =
            reqs.iter().map(|r| engine.submit(r.clone()).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for mut h in handles {
            let mut choices: Streamed = Vec::new();
            loop {
                match h.blocking_recv() {
                    Some(EngineEvent::Token { index, token, logprob, .. }) => {
                        while choices.len() <= index {
                            choices.push((vec![], vec![]));
                        }
                        choices[index].0.push(token);
                        choices[index].1.extend(logprob);
                    }
                    Some(EngineEvent::Done { .. }) => break,
                    Some(EngineEvent::Error { message }) => return Err(message),
                    Some(EngineEvent::Finished { .. }) => {}
                    None => return Err("stream ended early".into()),
                }
            }
            out.push(choices);
        }
        let s = engine.stats();
        let step_ms = s.step_seconds / s.steps.max(1) as f64 * 1e3;
        engine.shutdown_and_join(std::time::Duration::from_secs(30));
        Ok((out, step_ms))
    };
    let (host, host_ms) = run(SamplingPlacement::Host)?;
    let (device, device_ms) = run(SamplingPlacement::Device)?;
    let close = |a: f32, b: f32| a == b || (a - b).abs() <= 1e-5 * b.abs().max(1.0);
    let mut same = 0;
    for (h, d) in host.iter().zip(&device) {
        let equal = h.len() == d.len()
            && h.iter().zip(d).all(|(a, b)| {
                a.0 == b.0
                    && a.1.len() == b.1.len()
                    && a.1.iter().zip(&b.1).all(|(x, y)| {
                        close(x.logprob, y.logprob)
                            && x.top.len() == y.top.len()
                            && x.top.iter().zip(&y.top).all(|(p, q)| p.0 == q.0 && close(p.1, q.1))
                    })
            });
        same += usize::from(equal);
    }
    println!(
        "\ndevice sampler in the engine (GPU bf16, {} requests × {n} sampled tokens, every setting): {same}/{} identical to the host sampler; mean step {device_ms:.2} ms on the device vs {host_ms:.2} ms on the host",
        reqs.len(),
        reqs.len()
    );
    Ok(same == reqs.len())
}
