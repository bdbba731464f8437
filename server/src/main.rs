//! The `kiln` binary: one CLI over the engine (`generate`, `convert`, `fetch`, `gpu-check`).

mod cmd_convert;
mod cmd_generate;
mod cmd_gpu_check;
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
    /// Fetch the default model into the cache (if it is not there) and print its path.
    Fetch,
    /// Compile every generated kernel for the local GPU, check it against the CPU and time it.
    GpuCheck(cmd_gpu_check::GpuCheckArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => cmd_generate::run(args),
        Command::Convert { gguf, out_dir } => cmd_convert::run(&gguf, &out_dir),
        Command::Fetch => kiln_models::fetch::default_model_path().map(|p| println!("{}", p.display())).map_err(Into::into),
        Command::GpuCheck(args) => cmd_gpu_check::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
