//! `kiln bench --offline`: runs synthetic requests (random prompt tokens, fixed output lengths
//! with `ignore_eos`) through an in-process engine and prints throughput, time to first token,
//! inter-token latency, preemptions and KV waste.
//!
//! Timing is what a client of the engine sees: a request's clock starts when it is submitted,
//! its first token when the first `Token` event arrives, and inter-token latencies are the gaps
//! between its consecutive `Token` events. The defaults (48 requests, prompts of 16–256 tokens,
//! 32–96 output tokens, all submitted at once, so the default KV pool preempts a few) finish in
//! about a minute on the default model on a 2-core CPU; flags set larger workloads.

use crate::device_arg::{apply_kv_cache, pick_ranks, DeviceArg, KvCacheArg, SamplingArg, WeightsArg};
use anyhow::{bail, Context, Result};
use kiln_models::detok_adapter::TokenizerDetokenizer;
use kiln_runtime::device::quant::w8::W8Elem;
use kiln_runtime::engine::{Detokenizer, Engine, EngineConfig, EngineEvent, EngineHandle, GenerateRequest};
use kiln_runtime::model::CausalLm;
use kiln_runtime::sample::SamplingParams;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Drive an in-process engine directly (no HTTP server).
    #[arg(long, conflicts_with = "url")]
    offline: bool,
    /// Online mode: send the requests as streaming completions to a running `kiln serve` (or
    /// any OpenAI-compatible server that takes token-id prompts) at this base URL, e.g.
    /// `http://127.0.0.1:8000`; `--vocab` then bounds the random prompt ids.
    #[arg(long)]
    url: Option<String>,
    /// Online mode: prompt ids are drawn below this (the server's vocabulary size).
    #[arg(long, default_value_t = 32_000)]
    vocab: u64,
    /// A GGUF file, an HF directory, or `synth:PRESET` (random weights of a real model's
    /// shapes made on the device: `synth:llama3-8b`, `synth:smollm2-135m`; `synth:llama3-8b+int4`
    /// for 4-bit projections in groups of 128, `+fp8` or `+int8` for FP8 or INT8 W8A8
    /// projections); default: the default model.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 48)]
    num_requests: usize,
    /// Prompt lengths in tokens: `N` or `MIN-MAX` (spread evenly over the requests).
    #[arg(long, default_value = "16-256")]
    prompt_len: String,
    /// Output lengths in tokens (generated exactly, EOS ignored): `N` or `MIN-MAX`.
    #[arg(long, default_value = "32-96")]
    output_len: String,
    /// Requests per second (Poisson arrivals); all at once when absent.
    #[arg(long)]
    request_rate: Option<f64>,
    /// Seed of the random prompts and arrival times.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    #[arg(long, default_value_t = 64)]
    max_num_seqs: usize,
    #[arg(long, default_value_t = 2048)]
    max_batched_tokens: usize,
    /// KV cache size, e.g. `256MiB`, `2G` (default: the engine's default for the device).
    #[arg(long)]
    kv_cache_memory: Option<String>,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    #[arg(long)]
    no_prefix_caching: bool,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Tensor-parallel ranks: the model split over this many GPUs (GPU 0 … n-1), or CPU ranks
    /// (threads) on the CPU. It must divide the attention heads.
    #[arg(long, default_value_t = 1)]
    tp_size: usize,
    /// Keep quantized weights as stored (GGUF block formats, Q4_0 … Q6_K, on the CPU) or dequantize them.
    #[arg(long, value_enum, default_value_t = WeightsArg::Stored)]
    weights: WeightsArg,
    /// The KV cache's element type: `fp8` (e4m3, per-layer scales calibrated at start).
    #[arg(long, value_enum, default_value_t = KvCacheArg::Auto)]
    kv_cache_dtype: KvCacheArg,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Untimed requests run first, one after another (the first request of a process loads
    /// kernels and captures graphs; a server has done that before its users arrive).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Sampling temperature of every request (0: greedy). Request `i` is seeded with `seed + i`.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass of every request (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Top-k of every request (off when absent).
    #[arg(long)]
    top_k: Option<usize>,
    /// Offline mode: where the engine samples (`auto`: on the model's device).
    #[arg(long, value_enum, default_value_t = SamplingArg::Auto)]
    sampling: SamplingArg,
}

/// `N` or `MIN-MAX`.
fn parse_range(s: &str, what: &str) -> Result<(usize, usize)> {
    let parse = |x: &str| x.trim().parse::<usize>().with_context(|| format!("--{what}: `{x}` is not a number"));
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(s)?, parse(s)?),
    };
    if lo == 0 || lo > hi {
        bail!("--{what}: `{s}` must be N or MIN-MAX with 1 <= MIN <= MAX");
    }
    Ok((lo, hi))
}

/// `1234`, `256MiB`, `2G`, `512k` (binary multiples).
pub fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("`{s}` is not a size"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        u => bail!("`{s}`: unknown unit `{u}` (use K, M or G)"),
    };
    Ok((n * mult) as usize)
}

/// SplitMix64: reproducible prompts without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn spread((lo, hi): (usize, usize), i: usize, n: usize) -> usize {
    if n <= 1 {
        lo
    } else {
        lo + (hi - lo) * i / (n - 1)
    }
}

/// The model and its detokenizer: loaded from `path`, or made from a preset (`synth:NAME`)
/// with random weights made on the device(s) (no tokenizer: the bench needs no text).
fn load_model(
    path: &std::path::Path,
    devs: &[kiln_runtime::Device],
    dtype: kiln_runtime::DType,
    mode: kiln_models::loader::WeightMode,
    kv_cache: KvCacheArg,
) -> Result<(Arc<dyn CausalLm>, Arc<dyn Detokenizer>)> {
    if let Some(name) = path.to_str().and_then(|p| p.strip_prefix("synth:")) {
        // `NAME+int4`: the projections as random 4-bit weights in groups of 128 (W4A16);
        // `NAME+fp8` / `NAME+int8`: as random FP8 E4M3 / INT8 weights with a scale per output
        // channel (W8A8).
        let (name, quant) = match name.rsplit_once('+') {
            Some((n, q @ ("int4" | "fp8" | "int8"))) => (n, Some(q)),
            _ => (name, None),
        };
        let cfg = kiln_models::synth::preset(name).with_context(|| {
            format!(
                "unknown preset `{name}` (presets: {}; add +int4 for W4A16, +fp8 or +int8 for W8A8)",
                kiln_models::synth::PRESETS.join(", ")
            )
        })?;
        let mut model: Box<dyn CausalLm> = match (devs, quant) {
            ([dev], Some("int4")) => Box::new(kiln_models::llama::random_int4(cfg, dev, dtype, 0, 128)?),
            ([dev], Some(q)) => {
                let elem = if q == "int8" { W8Elem::Int8 } else { W8Elem::Fp8E4M3 };
                Box::new(kiln_models::llama::random_w8(cfg, dev, dtype, elem, 0)?)
            }
            ([dev], None) => Box::new(kiln_models::llama::random(cfg, dev, dtype, 0)?),
            (_, Some(q)) => bail!("synth:{name}+{q} runs on one device"),
            (_, None) => Box::new(kiln_models::tp::random_parallel(cfg, devs, dtype, 0)?),
        };
        apply_kv_cache(model.as_mut(), None, kv_cache)?;
        for d in devs {
            d.synchronize()?;
        }
        return Ok((Arc::from(model), Arc::new(kiln_models::detok_adapter::NoText)));
    }
    if path.is_dir() && !path.join("tokenizer.json").exists() {
        // A checkpoint without a tokenizer (`kiln synth-model`): the bench needs no text.
        let mut model: Box<dyn CausalLm> = match devs {
            [dev] => kiln_models::loader::load_weights_only_with(path, dev, dtype, mode)?,
            _ => Box::new(kiln_models::loader::build_parallel(path, devs, dtype, mode)?),
        };
        apply_kv_cache(model.as_mut(), None, kv_cache)?;
        return Ok((Arc::from(model), Arc::new(kiln_models::detok_adapter::NoText)));
    }
    let mut loaded = kiln_models::loader::load_parallel(path, devs, dtype, mode)?;
    apply_kv_cache(loaded.model.as_mut(), Some(&loaded.tokenizer), kv_cache)?;
    Ok((Arc::from(loaded.model), Arc::new(TokenizerDetokenizer::new(loaded.tokenizer))))
}

/// The synthetic requests: lengths spread over the ranges (shuffled pairings), random
/// non-special token ids below `vocab`, arrival offsets (Poisson at `--request-rate`, else 0).
pub(crate) fn synthetic_requests(
    a: &BenchArgs,
    prompt_range: (usize, usize),
    output_range: (usize, usize),
    vocab: u64,
) -> Vec<(Duration, GenerateRequest)> {
    let mut rng = Rng(a.seed ^ 0x6b696c6e);
    let low = 1000.min(vocab / 2);
    let mut at = Duration::ZERO;
    let mut reqs = Vec::with_capacity(a.num_requests);
    for i in 0..a.num_requests {
        let plen = spread(prompt_range, i, a.num_requests);
        let olen = spread(output_range, (i * 7 + 3) % a.num_requests, a.num_requests);
        let prompt_ids: Vec<u32> = (0..plen).map(|_| (low + rng.below(vocab - low)) as u32).collect();
        let params = SamplingParams {
            max_tokens: olen,
            ignore_eos: true,
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            seed: Some(a.seed.wrapping_add(i as u64)),
            ..SamplingParams::default()
        };
        if let Some(rate) = a.request_rate {
            // Exponential inter-arrival times.
            at += Duration::from_secs_f64(-(1.0 - rng.unit()).ln() / rate.max(1e-9));
        }
        reqs.push((at, GenerateRequest { prompt_ids, params, n: 1, beam: None }));
    }
    reqs
}

/// Throughput and latency percentiles over a run's traces (both modes report these).
pub(crate) struct Summary {
    requests: usize,
    in_tokens: usize,
    out_tokens: usize,
    secs: f64,
    ttft: [f64; 3],
    itl: [f64; 3],
}

impl Summary {
    /// The summary of `traces` over `total`; an error if a request failed.
    pub(crate) fn of(traces: &[Trace], total: Duration) -> Result<Summary> {
        if let Some(e) = traces.iter().find_map(|t| t.error.as_ref()) {
            bail!("a request failed: {e}");
        }
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let mut ttft: Vec<f64> = traces.iter().filter_map(|t| t.ttft.as_ref().map(ms)).collect();
        let mut itl: Vec<f64> = traces.iter().flat_map(|t| t.gaps.iter().map(ms)).collect();
        ttft.sort_by(f64::total_cmp);
        itl.sort_by(f64::total_cmp);
        let pct = |v: &[f64]| [50.0, 90.0, 99.0].map(|p| percentile(v, p));
        Ok(Summary {
            requests: traces.len(),
            in_tokens: traces.iter().map(|t| t.prompt_tokens).sum(),
            out_tokens: traces.iter().map(|t| t.output_tokens).sum(),
            secs: total.as_secs_f64().max(1e-9),
            ttft: pct(&ttft),
            itl: pct(&itl),
        })
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let (tt, it) = (self.ttft, self.itl);
        serde_json::json!({
            "requests": self.requests,
            "prompt_tokens": self.in_tokens,
            "output_tokens": self.out_tokens,
            "total_s": self.secs,
            "output_tokens_per_s": self.out_tokens as f64 / self.secs,
            "total_tokens_per_s": (self.in_tokens + self.out_tokens) as f64 / self.secs,
            "ttft_ms": {"p50": tt[0], "p90": tt[1], "p99": tt[2]},
            "itl_ms": {"p50": it[0], "p90": it[1], "p99": it[2]},
        })
    }

    /// The table's common lines; `steps` says what the time was spent on.
    pub(crate) fn print(&self, steps: &str) {
        let (tt, it, secs) = (self.ttft, self.itl, self.secs);
        println!("{:<28} {}", "requests", self.requests);
        println!("{:<28} {} prompt + {} output", "tokens", self.in_tokens, self.out_tokens);
        println!("{:<28} {secs:.2} s ({steps})", "total time");
        println!("{:<28} {:.1}", "output tok/s", self.out_tokens as f64 / secs);
        println!("{:<28} {:.1}", "total tok/s", (self.in_tokens + self.out_tokens) as f64 / secs);
        println!("{:<28} {:>9} {:>9} {:>9}", "latency (ms)", "p50", "p90", "p99");
        println!("{:<28} {:>9.1} {:>9.1} {:>9.1}", "  time to first token", tt[0], tt[1], tt[2]);
        println!("{:<28} {:>9.1} {:>9.1} {:>9.1}", "  inter-token latency", it[0], it[1], it[2]);
    }
}

/// One request's timeline.
pub(crate) struct Trace {
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub ttft: Option<Duration>,
    pub gaps: Vec<Duration>,
    pub end: Instant,
    pub error: Option<String>,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn drive(engine: EngineHandle, reqs: Vec<(Duration, GenerateRequest)>, t0: Instant) -> Result<Vec<Trace>> {
    let mut tasks = Vec::with_capacity(reqs.len());
    for (at, req) in reqs {
        let wait = (t0 + at).saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let prompt_tokens = req.prompt_ids.len();
        let submitted = Instant::now();
        let mut h = engine.submit(req).map_err(|e| anyhow::anyhow!("submit: {e}"))?;
        tasks.push(tokio::spawn(async move {
            let mut t =
                Trace { prompt_tokens, output_tokens: 0, ttft: None, gaps: Vec::new(), end: submitted, error: None };
            let mut last = submitted;
            while let Some(ev) = h.recv().await {
                let now = Instant::now();
                match ev {
                    EngineEvent::Token { .. } => {
                        if t.ttft.is_none() {
                            t.ttft = Some(now - submitted);
                        } else {
                            t.gaps.push(now - last);
                        }
                        last = now;
                        t.output_tokens += 1;
                    }
                    EngineEvent::Finished { .. } => {}
                    EngineEvent::Done { .. } => {
                        t.end = now;
                        break;
                    }
                    EngineEvent::Error { message } => {
                        t.end = now;
                        t.error = Some(message);
                        break;
                    }
                }
            }
            t
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await?);
    }
    Ok(out)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if !a.offline && a.url.is_none() {
        bail!("choose a mode: `--offline` (an in-process engine) or `--url URL` (a running server)");
    }
    let prompt_range = parse_range(&a.prompt_len, "prompt-len")?;
    let output_range = parse_range(&a.output_len, "output-len")?;
    if a.num_requests == 0 {
        bail!("--num-requests must be at least 1");
    }
    if let Some(url) = &a.url {
        return crate::bench_online::run(url, &a, synthetic_requests(&a, prompt_range, output_range, a.vocab));
    }
    let path = match &a.model {
        Some(p) => p.clone(),
        None => kiln_models::fetch::default_model_path()?,
    };
    let (devs, dtype) = pick_ranks(a.device, a.tp_size)?;
    let t_load = Instant::now();
    let (model, detok) = load_model(&path, &devs, dtype, a.weights.into(), a.kv_cache_dtype)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let vocab = model.info().vocab_size as u64;
    let cfg = EngineConfig {
        max_num_seqs: a.max_num_seqs,
        max_batched_tokens: a.max_batched_tokens,
        max_queue: a.num_requests.max(1),
        block_size: a.block_size,
        kv_cache_bytes: a.kv_cache_memory.as_deref().map(parse_bytes).transpose()?,
        max_model_len: None,
        enable_prefix_caching: !a.no_prefix_caching,
        sampling: a.sampling.into(),
    };
    let engine = Engine::start(model, detok, cfg)?;
    eprintln!("{}", engine.sampling_note());

    let reqs = synthetic_requests(&a, prompt_range, output_range, vocab);
    let max_len = engine.max_model_len();
    if let Some((_, r)) = reqs.iter().find(|(_, r)| r.prompt_ids.len() + r.params.max_tokens > max_len) {
        bail!(
            "a request of {} + {} tokens exceeds the engine's context length {max_len}",
            r.prompt_ids.len(),
            r.params.max_tokens
        );
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let low = 1000.min(vocab / 2);
    // Warm-up: copies of the first request (same prompt length; 16 output tokens so decode
    // graphs are captured too), run one at a time and not timed; the counters below are taken
    // relative to the state after them.
    for _ in 0..a.warmup {
        if let Some((_, first)) = reqs.first() {
            let mut w = first.clone();
            w.params.max_tokens = w.params.max_tokens.min(16);
            // Other tokens than the timed requests', so the prefix cache gives them nothing.
            w.prompt_ids.iter_mut().for_each(|t| *t = low as u32 + (*t + 1 - low as u32) % (vocab - low) as u32);
            rt.block_on(drive(engine.clone(), vec![(Duration::ZERO, w)], Instant::now()))?;
        }
    }
    engine.wait_idle(Duration::from_secs(60));
    let base = engine.stats();
    let t0 = Instant::now();
    let traces = rt.block_on(drive(engine.clone(), reqs, t0))?;
    let total = traces.iter().map(|t| t.end).max().unwrap_or(t0) - t0;
    engine.wait_idle(Duration::from_secs(60));
    let mut stats = engine.stats();
    stats.steps -= base.steps;
    stats.step_seconds -= base.step_seconds;
    stats.model_seconds -= base.model_seconds;
    stats.preemptions -= base.preemptions;
    stats.prefix_cache_hit_tokens -= base.prefix_cache_hit_tokens;
    let waste = engine.kv_waste();
    engine.shutdown_and_join(Duration::from_secs(30));

    let sum = Summary::of(&traces, total)?;
    if a.json {
        let mut v = sum.json();
        v["model"] = serde_json::json!(path.display().to_string());
        v["load_s"] = serde_json::json!(load_s);
        v["preemptions"] = serde_json::json!(stats.preemptions);
        v["kv_waste"] = serde_json::json!(waste);
        v["kv_blocks_total"] = serde_json::json!(stats.kv_blocks_total);
        v["steps"] = serde_json::json!(stats.steps);
        v["mean_step_ms"] = serde_json::json!(1e3 * stats.step_seconds / stats.steps.max(1) as f64);
        v["mean_model_ms"] = serde_json::json!(1e3 * stats.model_seconds / stats.steps.max(1) as f64);
        v["prefix_cache_hit_tokens"] = serde_json::json!(stats.prefix_cache_hit_tokens);
        println!("{v}");
        return Ok(());
    }
    let place = match devs.len() {
        1 => devs[0].label(),
        n => format!("{n} tensor-parallel ranks on {}", devs[0].label()),
    };
    println!("kiln bench --offline: {} ({place}; loaded in {load_s:.1} s)", path.display());
    sum.print(&format!("{} engine steps", stats.steps));
    let per = |x: f64| 1e3 * x / stats.steps.max(1) as f64;
    println!(
        "{:<28} {:.3} ms, of which the model {:.3} ms",
        "mean engine step",
        per(stats.step_seconds),
        per(stats.model_seconds)
    );
    println!("{:<28} {}", "preemptions", stats.preemptions);
    println!(
        "{:<28} {:.2}% of the pool on average (max {:.2}%), {:.2}% of allocated slots; pool {} blocks of {}",
        "KV waste",
        waste.mean_of_pool * 100.0,
        waste.max_of_pool * 100.0,
        waste.mean_of_used * 100.0,
        stats.kv_blocks_total,
        a.block_size
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_sizes_and_percentiles() {
        assert_eq!(parse_range("16-128", "x").unwrap(), (16, 128));
        assert_eq!(parse_range("48", "x").unwrap(), (48, 48));
        assert!(parse_range("0", "x").is_err() && parse_range("9-3", "x").is_err());
        assert_eq!(parse_bytes("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("3 parsecs").is_err());
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!([50.0, 90.0, 99.0].map(|p| percentile(&v, p)), [50.0, 90.0, 99.0]);
        assert_eq!(spread((10, 20), 0, 3), 10);
        assert_eq!(spread((10, 20), 2, 3), 20);
    }
}
