//! `kiln-gpu-check-samples`: the GPU check over kiln-runtime's built-in sample kernels (see
//! `kiln_runtime::gpu_check`), for checking the runtime's launch path on its own. The models'
//! kernels are checked by `kiln-check-kernels` (models crate). Runs on a machine with an NVIDIA
//! driver and libnvrtc / libcublas (CUDA 13), no Rust toolchain needed. `--help` for options.

use std::process::ExitCode;

fn main() -> ExitCode {
    match kiln_runtime::gpu_check::samples::all() {
        Ok(defs) => kiln_runtime::gpu_check::cli::main(defs),
        Err(e) => {
            eprintln!("kiln-gpu-check-samples: building the sample kernels failed: {e}");
            ExitCode::from(2)
        }
    }
}
