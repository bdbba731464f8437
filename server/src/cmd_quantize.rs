//! `kiln quantize IN OUT --type T`: a GGUF file with its weight matrices in another block
//! format (see `kiln_models::quantize_gguf` for which tensors change and why).

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use kiln_models::quantize_gguf::Recipe;
use kiln_runtime::device::quant::QuantFormat;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The GGUF file to read (any type kiln reads: f32, f16, bf16, q4_0 … q8_0, q2_K … q6_K).
    input: PathBuf,
    /// The GGUF file to write (never the input; written whole, then renamed into place).
    output: PathBuf,
    /// The file type: the block formats of the weight matrices (llama.cpp's recipe of that name).
    #[arg(long = "type", value_enum)]
    ty: QuantType,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    force: bool,
}

/// llama.cpp's file types of the same names (see `kiln_models::quantize_gguf` for each one's
/// rules); every one writes the output projection in Q6_K (Q8_0 for `q8_0`).
#[derive(Clone, Copy, ValueEnum)]
enum QuantType {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q6_k")]
    Q6K,
    /// Q2_K, with Q3_K for `ffn_down` / `attn_output` and Q3_K or Q4_K (GQA) for `attn_v`.
    #[value(name = "q2_k")]
    Q2K,
    /// Q3_K throughout.
    #[value(name = "q3_k_s", alias = "q3_k")]
    Q3KS,
    /// Q3_K, with Q4_K / Q5_K for `attn_v`, `ffn_down` and `attn_output`.
    #[value(name = "q3_k_m")]
    Q3KM,
    /// Q4_K with Q6_K for `attn_v` / `ffn_down` on a third of the layers.
    #[value(name = "q4_k_m")]
    Q4KM,
    /// Q5_K throughout.
    #[value(name = "q5_k_s", alias = "q5_k")]
    Q5KS,
    /// Q5_K with Q6_K for `attn_v` / `ffn_down` on a third of the layers.
    #[value(name = "q5_k_m")]
    Q5KM,
}

impl QuantType {
    fn recipe(self) -> Recipe {
        match self {
            QuantType::Q8_0 => Recipe::Uniform(QuantFormat::Q8_0),
            QuantType::Q4_0 => Recipe::Uniform(QuantFormat::Q4_0),
            QuantType::Q4_1 => Recipe::Uniform(QuantFormat::Q4_1),
            QuantType::Q5_0 => Recipe::Uniform(QuantFormat::Q5_0),
            QuantType::Q5_1 => Recipe::Uniform(QuantFormat::Q5_1),
            QuantType::Q6K => Recipe::Uniform(QuantFormat::Q6_K),
            QuantType::Q2K => Recipe::Q2K,
            QuantType::Q3KS => Recipe::Uniform(QuantFormat::Q3_K),
            QuantType::Q3KM => Recipe::Q3KM,
            QuantType::Q4KM => Recipe::Q4KM,
            QuantType::Q5KS => Recipe::Uniform(QuantFormat::Q5_K),
            QuantType::Q5KM => Recipe::Q5KM,
        }
    }
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    if args.input.is_dir() {
        bail!("{}: kiln quantize reads GGUF files; a safetensors directory is not supported yet", args.input.display());
    }
    let t0 = std::time::Instant::now();
    let s = kiln_models::quantize_gguf::quantize_gguf(&args.input, &args.output, args.ty.recipe(), args.force)
        .with_context(|| format!("quantizing {}", args.input.display()))?;
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for c in &s.tensors {
        *by_type.entry(format!("{} -> {}", c.from.name(), c.to.name())).or_default() += 1;
    }
    println!(
        "wrote {} ({:.1} MB from {:.1} MB) in {:.1} s",
        args.output.display(),
        s.output_bytes as f64 / 1e6,
        s.input_bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    for (change, n) in by_type {
        println!("  {n:>4} tensors {change}");
    }
    Ok(())
}
