//! `kiln gpu-check`: the proof on the GPU for every generated kernel (see
//! `kiln_runtime::gpu_check`): compile with NVRTC for the local GPU, compare with the CPU
//! backend on random inputs, time, print a table.

use anyhow::Result;

#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// Only the smallest and the largest shape (a fast smoke run).
    #[arg(long)]
    quick: bool,
}

pub fn run(a: GpuCheckArgs) -> Result<()> {
    let _ = a.quick;
    anyhow::bail!("gpu-check is not wired yet")
}
