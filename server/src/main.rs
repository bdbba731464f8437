//! The `kiln` binary: one CLI over the engine (`generate`, `perplexity`, `convert`, `fetch`,
//! ...). The GPU kernel check is a separate binary, `kiln-check-kernels` (kiln-models).

mod bench_online;
mod cmd_bench;
mod cmd_build;
mod cmd_convert;
mod cmd_generate;
mod cmd_perplexity;
mod cmd_quantize;
mod cmd_serve;
mod cmd_synth;
mod device_arg;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kiln", version, about = "An LLM inference engine: one binary, no Python at run time.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(cmd_generate::GenerateArgs),
    /// Write an HF directory (model.safetensors, config.json, tokenizer files) from a GGUF file.
    Convert {
        /// The GGUF file to convert.
        gguf: std::path::PathBuf,
        /// The directory to write (created if missing).
        out_dir: std::path::PathBuf,
    },
    /// Fetch a model into the cache (if it is not there, verified by sha256) and print its path.
    Fetch {
        /// Which model: smollm2-135m (the default model), gemma3-270m, qwen2.5-coder-0.5b.
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
    },
    /// Serve the OpenAI-compatible HTTP API (completions, chat, models, tokenize, health, metrics).
    Serve(cmd_serve::ServeArgs),
    /// Perplexity over a text file in non-overlapping windows (llama.cpp's recipe); with
    /// --kl-base, the KL divergence from a base model.
    Perplexity(cmd_perplexity::PerplexityArgs),
    /// Rewrite a GGUF file with its weight matrices in another block format (q8_0, q4_0, q4_k_m, ...).
    Quantize(cmd_quantize::QuantizeArgs),
    /// Run synthetic requests through the engine; report throughput and latency percentiles.
    Bench(cmd_bench::BenchArgs),
    /// Compile every kernel for a GPU architecture into the kernel cache (a warm start).
    Build(cmd_build::BuildArgs),
    /// Write a real model's shapes with seeded random weights as an HF checkpoint.
    SynthModel(cmd_synth::SynthArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => cmd_generate::run(args),
        Command::Serve(args) => cmd_serve::run(args),
        Command::Convert { gguf, out_dir } => cmd_convert::run(&gguf, &out_dir),
        Command::Fetch { model } => {
            kiln_models::fetch::model_path(&model).map(|p| println!("{}", p.display())).map_err(Into::into)
        }
        Command::Bench(args) => cmd_bench::run(args),
        Command::Quantize(args) => cmd_quantize::run(args),
        Command::Perplexity(args) => cmd_perplexity::run(args),
        Command::Build(args) => cmd_build::run(args),
        Command::SynthModel(args) => cmd_synth::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
