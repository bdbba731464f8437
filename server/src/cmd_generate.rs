//! `kiln generate`: load a model, run one prompt, stream the text to stdout.

use crate::device_arg::{apply_kv_cache, pick_ranks, DeviceArg, KvCacheArg, WeightsArg};
use anyhow::{bail, Context, Result};
use kiln_models::loader::LoadedModel;
use kiln_models::tokenizer::ChatMessage;
use kiln_runtime::engine::{BeamParams, Engine, EngineConfig, EngineEvent, GenerateRequest};
use kiln_runtime::sample::SamplingParams;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A GGUF file or an HF directory; default: the default model (fetched on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt text, tokenized as-is (special tokens recognised, no BOS unless the model asks).
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// A stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long)]
    ignore_eos: bool,
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
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Independent samples of the prompt, each printed in full (they share the prompt's KV);
    /// with --beam-width, how many of the best beams to print.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Beam search with this many beams instead of sampling (HF semantics, deterministic:
    /// temperature/top-k/top-p/min-p are ignored; penalties and --stop are refused).
    #[arg(long)]
    beam_width: Option<usize>,
    /// Beam scores are `sum logprob / length^length_penalty`.
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f32,
    /// Beam search goes on until no live beam can beat the kept ones (HF early_stopping=False).
    #[arg(long)]
    no_early_stopping: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => bail!("give --prompt TEXT or --prompt-file FILE"),
    };
    let path = match &a.model {
        Some(p) => p.clone(),
        None => kiln_models::fetch::default_model_path()?,
    };
    let (devs, dtype) = pick_ranks(a.device, a.tp_size)?;
    let mut loaded = kiln_models::loader::load_parallel(&path, &devs, dtype, a.weights.into())?;
    apply_kv_cache(loaded.model.as_mut(), Some(&loaded.tokenizer), a.kv_cache_dtype)?;
    let prompt = if a.chat {
        loaded.chat_template.render_for(&loaded.tokenizer, &[ChatMessage::new("user", text)], true)?
    } else {
        text
    };
    // A chat template writes its own BOS (as the server and HF's apply_chat_template take it).
    let add_bos = !a.chat && loaded.tokenizer.add_bos_by_default();
    let prompt_ids = loaded.tokenizer.encode(&prompt, add_bos)?;
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        seed: a.seed,
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        stop_token_ids: vec![],
        ignore_eos: a.ignore_eos,
        logprobs: None,
    };
    let beam = a.beam_width.map(|width| BeamParams {
        width,
        length_penalty: a.length_penalty,
        early_stopping: !a.no_early_stopping,
    });
    run_engine(loaded, prompt_ids, params, a.n, beam, a.json)
}

/// The request goes through the engine (one generation loop for every mode). One plain choice
/// streams its text as it comes; `--n` choices and beams are printed in full at the end.
fn run_engine(
    loaded: LoadedModel,
    prompt_ids: Vec<u32>,
    params: SamplingParams,
    n: usize,
    beam: Option<BeamParams>,
    json: bool,
) -> Result<()> {
    let width = beam.as_ref().map_or(1, |b| b.width);
    let what = if beam.is_some() { "beam" } else { "choice" };
    let beam_search = beam.is_some();
    let cfg = EngineConfig {
        max_num_seqs: EngineConfig::default().max_num_seqs.max(n).max(width),
        ..EngineConfig::default()
    };
    let LoadedModel { model, tokenizer, .. } = loaded;
    let detok = Arc::new(kiln_models::detok_adapter::TokenizerDetokenizer::new(tokenizer));
    let engine = Engine::start(Arc::from(model), detok, cfg)?;
    let stream = n == 1 && beam.is_none() && !json;
    let t0 = std::time::Instant::now();
    let mut first_token: Option<std::time::Duration> = None;
    let mut h = engine.submit(GenerateRequest { prompt_ids: prompt_ids.clone(), params, n, beam })?;
    let mut out = std::io::stdout().lock();
    // (text, token ids, finish reason) per choice.
    let mut choices: Vec<(String, Vec<u32>, Option<&'static str>)> = vec![Default::default(); n];
    let usage = loop {
        match h.blocking_recv() {
            Some(EngineEvent::Token { index, token, text, .. }) => {
                first_token.get_or_insert_with(|| t0.elapsed());
                if stream {
                    // A closed stdout (a pipe into `head`) must not abort generation.
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                }
                if let Some(c) = choices.get_mut(index) {
                    c.0.push_str(&text);
                    c.1.push(token);
                }
            }
            Some(EngineEvent::Finished { index, reason, text, token_ids }) => {
                if stream {
                    let _ = out.write_all(text.as_bytes());
                }
                if let Some(c) = choices.get_mut(index) {
                    c.0.push_str(&text);
                    c.1 = token_ids;
                    c.2 = Some(reason.as_str());
                }
            }
            Some(EngineEvent::Done { usage }) => break usage,
            Some(EngineEvent::Error { message }) => bail!("generation failed: {message}"),
            None => bail!("the engine stopped"),
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    engine.shutdown_and_join(std::time::Duration::from_secs(30));
    let mut stdout = out;
    // Prefill: until the first token; decode: the tokens after it.
    let prefill_s = first_token.map_or(secs, |d| d.as_secs_f64());
    let decode_tokens = usage.completion_tokens.saturating_sub(n);
    let decode_s = (secs - prefill_s).max(1e-9);
    let timings = serde_json::json!({
        "prompt_tokens": usage.prompt_tokens,
        "generated_tokens": usage.completion_tokens,
        "prefill_ms": prefill_s * 1e3,
        "decode_ms": decode_s * 1e3,
        "prefill_tokens_per_s": usage.prompt_tokens as f64 / prefill_s.max(1e-9),
        "decode_tokens_per_s": decode_tokens as f64 / decode_s,
    });
    if stream {
        writeln!(stdout)?;
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s decode; finish: {}]",
            usage.prompt_tokens,
            timings["prefill_tokens_per_s"].as_f64().unwrap_or(0.0),
            usage.completion_tokens,
            timings["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
            choices[0].2.unwrap_or("?")
        );
        return Ok(());
    }
    if json && n == 1 && !beam_search {
        let c = &choices[0];
        let v = serde_json::json!({
            "prompt_ids": prompt_ids,
            "token_ids": c.1,
            "text": c.0,
            "finish_reason": c.2,
            "timings": timings,
        });
        writeln!(stdout, "{v}")?;
        return Ok(());
    }
    if json {
        let v = serde_json::json!({
            "prompt_ids": prompt_ids,
            "choices": choices.iter().enumerate().map(|(i, c)| serde_json::json!({
                "index": i, "text": c.0, "token_ids": c.1, "finish_reason": c.2,
            })).collect::<Vec<_>>(),
            "usage": usage,
        });
        writeln!(stdout, "{v}")?;
        return Ok(());
    }
    for (i, c) in choices.iter().enumerate() {
        writeln!(stdout, "--- {what} {i} ({} tokens, finish: {}) ---", c.1.len(), c.2.unwrap_or("?"))?;
        writeln!(stdout, "{}", c.0)?;
    }
    eprintln!(
        "[{} prompt tokens; {} generated over {n} {what}s in {secs:.2} s]",
        usage.prompt_tokens, usage.completion_tokens
    );
    Ok(())
}
