//! `kiln quantize IN OUT --type T`: a GGUF file with its weight matrices in another block
//! format (see `kiln_models::quantize_gguf` for which tensors change and why).
//! `kiln quantize IN_DIR OUT_DIR --method M`: a full-precision Hugging Face checkpoint to a
//! compressed-tensors one (FP8 dynamic or static, W4A16, INT8, INT8 with SmoothQuant; see
//! `kiln_models::quantize_ct`).

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use kiln_models::quantize_ct::{quantize_ct, CtMethod};
use kiln_models::quantize_gguf::Recipe;
use kiln_runtime::device::quant::QuantFormat;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The GGUF file to read (any type kiln reads: f32, f16, bf16, q4_0 … q8_0, q2_K … q6_K), or
    /// with --method a Hugging Face safetensors directory (f32, f16 or bf16).
    input: PathBuf,
    /// The GGUF file (or with --method the directory) to write: never the input; written whole,
    /// then renamed into place.
    output: PathBuf,
    /// The file type: the block formats of the weight matrices (llama.cpp's recipe of that name).
    #[arg(long = "type", value_enum, required_unless_present = "method", conflicts_with = "method")]
    ty: Option<QuantType>,
    /// Write a compressed-tensors checkpoint (round-to-nearest): fp8-dynamic (e4m3 per
    /// channel), fp8 (e4m3 per tensor, static activation scales calibrated on the CPU), w4a16 (int4 in groups of --group-size), int8 (per channel), int8-sq (int8
    /// after SmoothQuant's smoothing, calibrated on kiln's calibration text on the CPU).
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Inputs per scale for --method w4a16 (a projection whose inputs it does not divide stays
    /// unquantized and is listed in the config's `ignore`).
    #[arg(long, default_value_t = 128)]
    group_size: usize,
    /// SmoothQuant's migration strength for --method int8-sq (0: none, 1: all into the weights).
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
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

/// compressed-tensors schemes (`kiln_models::quantize_ct`).
#[derive(Clone, Copy, ValueEnum)]
enum Method {
    #[value(name = "fp8-dynamic")]
    Fp8Dynamic,
    #[value(name = "fp8")]
    Fp8,
    #[value(name = "w4a16")]
    W4A16,
    #[value(name = "int8")]
    Int8,
    #[value(name = "int8-sq")]
    Int8Sq,
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
    let t0 = std::time::Instant::now();
    if let Some(m) = args.method {
        if !args.input.is_dir() {
            bail!("{}: --method reads a Hugging Face safetensors directory", args.input.display());
        }
        let method = match m {
            Method::Fp8Dynamic => CtMethod::Fp8Dynamic,
            Method::Fp8 => CtMethod::Fp8Static,
            Method::W4A16 => CtMethod::W4A16 { group: args.group_size },
            Method::Int8 => CtMethod::Int8,
            Method::Int8Sq => CtMethod::Int8Sq { alpha: args.alpha },
        };
        let s = quantize_ct(&args.input, &args.output, method, args.force)
            .with_context(|| format!("quantizing {}", args.input.display()))?;
        println!(
            "wrote {} ({:.1} MB from {:.1} MB) in {:.1} s: {} projections quantized",
            args.output.display(),
            s.output_bytes as f64 / 1e6,
            s.input_bytes as f64 / 1e6,
            t0.elapsed().as_secs_f64(),
            s.quantized
        );
        if !s.kept.is_empty() {
            println!("  kept as they are (inputs not whole groups): {}", s.kept.join(", "));
        }
        return Ok(());
    }
    let Some(ty) = args.ty else { bail!("give --type (a GGUF file type) or --method (a compressed-tensors scheme)") };
    if args.input.is_dir() {
        bail!("{}: --type reads GGUF files; for a safetensors directory give --method", args.input.display());
    }
    let s = kiln_models::quantize_gguf::quantize_gguf(&args.input, &args.output, ty.recipe(), args.force)
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
