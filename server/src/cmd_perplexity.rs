//! `kiln perplexity`: perplexity of a model over a text file in non-overlapping windows,
//! llama.cpp's `llama-perplexity` recipe (see `kiln_models::perplexity`), optionally with the
//! KL divergence from a base model over the same positions.
//!
//! The model loads exactly as for `kiln generate` (`--model`, `--device`, `--weights`); the
//! text is tokenized once, with BOS when the model's tokenizer adds one. Special-token strings
//! written in the text are matched as special tokens, as everywhere in kiln (llama.cpp's
//! perplexity does not parse them, so such a text would be split differently there). Running
//! values go to stderr after each window (`[1]12.3456,[2]...`, as llama.cpp prints them); the
//! result goes to stdout, as text or (`--json`) one JSON object.

use crate::device_arg::{apply_kv_cache, pick, DeviceArg, KvCacheArg, WeightsArg};
use anyhow::{Context, Result};
use kiln_models::loader::{load_with, LoadedModel};
use kiln_models::perplexity::{evaluate, same_vocabulary, LogitSource, ModelSource, Report, Windows};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PerplexityArgs {
    /// A GGUF file or an HF directory; default: the default model (fetched on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The text to score (UTF-8, tokenized whole, as-is).
    #[arg(long)]
    file: PathBuf,
    /// Window length in tokens (even, at least 4); the second half of each window is scored.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most this many windows (default: every whole window of the text).
    #[arg(long)]
    max_chunks: Option<usize>,
    /// A base model (same vocabulary) to compare with: its perplexity and the mean
    /// KL(P_base || P_model) over the scored positions.
    #[arg(long)]
    kl_base: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Keep quantized weights as stored (GGUF block formats, Q4_0 … Q6_K, on the CPU) or dequantize them.
    #[arg(long, value_enum, default_value_t = WeightsArg::Stored)]
    weights: WeightsArg,
    /// The model's KV cache type: `fp8` (e4m3, per-layer scales calibrated at start); the
    /// --kl-base model keeps the compute dtype's, so the KL measures what FP8 KV costs.
    #[arg(long, value_enum, default_value_t = KvCacheArg::Auto)]
    kv_cache_dtype: KvCacheArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    // What can be refused without the model is refused before it loads.
    Windows::check_args(a.ctx, a.max_chunks)?;
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let path = match &a.model {
        Some(p) => p.clone(),
        None => kiln_models::fetch::default_model_path()?,
    };
    let (dev, dtype) = pick(a.device)?;
    let mut loaded = load_with(&path, &dev, dtype, a.weights.into())?;
    apply_kv_cache(loaded.model.as_mut(), Some(&loaded.tokenizer), a.kv_cache_dtype)?;
    let tok = &loaded.tokenizer;
    let add_bos = tok.add_bos_by_default() && tok.bos_id().is_some();
    let tokens = tok.encode(&text, add_bos)?;
    let windows = Windows::new(
        tokens.len(),
        a.ctx,
        a.max_chunks,
        loaded.model.info().max_model_len,
        tok.bos_id().filter(|_| add_bos),
    )
    .with_context(|| a.file.display().to_string())?;
    let base = match &a.kl_base {
        Some(p) => Some(load_base(p, &loaded, &text, &tokens, &dev, dtype, a.weights)?),
        None => None,
    };
    eprintln!(
        "perplexity: {} tokens, {} windows of {} (BOS {}), scoring {} positions each",
        tokens.len(),
        windows.count(),
        windows.ctx(),
        if add_bos { "first" } else { "not added" },
        windows.scored_per_window()
    );
    let mut model_src = ModelSource::new(loaded.model.as_ref());
    let mut base_src = base.as_ref().map(|b| ModelSource::new(b.model.as_ref()));
    let report =
        evaluate(&mut model_src, base_src.as_mut().map(|s| s as &mut dyn LogitSource), &tokens, &windows, |c| {
            eprint!("[{}]{:.4},", c.chunk, c.ppl);
            let _ = std::io::stderr().flush();
        })?;
    eprintln!();
    print(&a, &path, tokens.len(), add_bos, &report)
}

/// The base model, on the same device and dtype, after checking that its vocabulary is the
/// model's and that it tokenizes the text to the same ids.
fn load_base(
    path: &std::path::Path,
    model: &LoadedModel,
    text: &str,
    tokens: &[u32],
    dev: &kiln_runtime::Device,
    dtype: kiln_runtime::DType,
    weights: WeightsArg,
) -> Result<LoadedModel> {
    let base = load_with(path, dev, dtype, weights.into()).context("loading the --kl-base model")?;
    same_vocabulary(&model.tokenizer, &base.tokenizer).context("--kl-base")?;
    let (vm, vb) = (model.model.info().vocab_size, base.model.info().vocab_size);
    anyhow::ensure!(vm == vb, "--kl-base: the base model has {vb} logits per token, the model {vm}");
    let add_bos = base.tokenizer.add_bos_by_default() && base.tokenizer.bos_id().is_some();
    anyhow::ensure!(
        base.tokenizer.encode(text, add_bos)? == tokens,
        "--kl-base: the base model's tokenizer splits the text differently (BOS or pre-tokenizer)"
    );
    Ok(base)
}

fn print(a: &PerplexityArgs, model: &std::path::Path, text_tokens: usize, add_bos: bool, r: &Report) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if a.json {
        let mut v = serde_json::to_value(r)?;
        v["file"] = a.file.display().to_string().into();
        v["model_path"] = model.display().to_string().into();
        v["base_path"] = a.kl_base.as_ref().map(|p| p.display().to_string()).into();
        v["text_tokens"] = text_tokens.into();
        v["add_bos"] = add_bos.into();
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let m = &r.model;
    writeln!(out, "PPL = {:.4} +/- {:.5}", m.ppl, m.ppl_stderr)?;
    writeln!(
        out,
        "{} windows of {} tokens ({} scored positions; the text is {text_tokens} tokens): {:.2} s, {:.1} tok/s",
        r.chunks, r.ctx, r.scored, m.seconds, m.tokens_per_s
    )?;
    if let (Some(b), Some(kl)) = (&r.base, &r.kl) {
        writeln!(
            out,
            "base PPL = {:.4} +/- {:.5} ({:.2} s, {:.1} tok/s)",
            b.ppl, b.ppl_stderr, b.seconds, b.tokens_per_s
        )?;
        writeln!(
            out,
            "KL(base || model) = {:.6} +/- {:.6} nats (max {:.4}); same top token at {:.2}% of positions",
            kl.mean,
            kl.stderr,
            kl.max,
            100.0 * kl.same_top
        )?;
    }
    Ok(())
}
