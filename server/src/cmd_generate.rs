//! `kiln generate`: load a model, run one prompt, stream the text to stdout.

use crate::device_arg::{pick, DeviceArg};
use anyhow::{bail, Context, Result};
use kiln_models::generate::generate;
use kiln_models::tokenizer::ChatMessage;
use kiln_runtime::sample::SamplingParams;
use std::io::Write;
use std::path::PathBuf;

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
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
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
    let (dev, dtype) = pick(a.device)?;
    let loaded = kiln_models::loader::load(&path, &dev, dtype)?;
    let prompt = if a.chat {
        loaded.chat_template.render_for(&loaded.tokenizer, &[ChatMessage::new("user", text)], true)?
    } else {
        text
    };
    let add_bos = loaded.tokenizer.add_bos_by_default();
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
    let mut stdout = std::io::stdout().lock();
    let json = a.json;
    let out = generate(loaded.model.as_ref(), &loaded.tokenizer, &prompt_ids, &params, |delta| {
        if !json {
            // A closed stdout (a pipe into `head`) must not abort generation with a panic.
            let _ = stdout.write_all(delta.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if json {
        let v = serde_json::json!({
            "prompt_ids": prompt_ids,
            "token_ids": out.token_ids,
            "text": out.text,
            "finish_reason": out.finish_reason.as_str(),
            "timings": out.timings,
        });
        writeln!(stdout, "{v}")?;
    } else {
        writeln!(stdout)?;
        let t = &out.timings;
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s decode; finish: {}]",
            t.prompt_tokens,
            t.prefill_tokens_per_s,
            t.generated_tokens,
            t.decode_tokens_per_s,
            out.finish_reason.as_str()
        );
    }
    Ok(())
}
