//! `kiln synth-model --preset NAME [--dtype bf16] [--seed N] OUT_DIR`: a real model's shapes
//! with seeded random weights, written as an HF checkpoint (config.json + model.safetensors;
//! no tokenizer). The weights equal those of `--model synth:NAME` with the same seed, so the
//! file and the in-memory form benchmark the same model; peers can load the directory too.

use anyhow::{bail, Context, Result};
use kiln_runtime::DType;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SynthArgs {
    /// The shapes: one of kiln_models::synth::PRESETS (`llama3-8b`, `smollm2-135m`).
    #[arg(long)]
    preset: String,
    /// Storage dtype of the weights: f32, f16 or bf16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The directory to write (created if missing).
    out_dir: PathBuf,
}

pub fn run(a: SynthArgs) -> Result<()> {
    let cfg = kiln_models::synth::preset(&a.preset).with_context(|| {
        format!("unknown preset `{}` (presets: {})", a.preset, kiln_models::synth::PRESETS.join(", "))
    })?;
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("--dtype {other}: expected f32, f16 or bf16"),
    };
    let params = kiln_models::synth::param_count(&cfg);
    eprintln!("writing {} ({:.2}B parameters, {dtype}) to {}", a.preset, params as f64 / 1e9, a.out_dir.display());
    let t = std::time::Instant::now();
    let files = kiln_models::synth::write_hf_dir(&cfg, dtype, a.seed, &a.out_dir).map_err(anyhow::Error::msg)?;
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    eprintln!("done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}
