//! The proof on the GPU for every `#[fused]` kernel the models use: compile with NVRTC for the
//! local GPU, compare with the CPU backend on random inputs, time, print a table.
//! `kiln-check-kernels --help` for options.

fn main() -> std::process::ExitCode {
    kiln_runtime::gpu_check::cli::main(kiln_models::kernels::ALL)
}
