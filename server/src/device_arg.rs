//! `--device cpu|cuda|auto` and the dtype that goes with the device.

use anyhow::{bail, Result};
use kiln_codegen::ir::DType;
use kiln_runtime::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
}

/// The device a whole model runs on. The CUDA model path (attention, sampling on the GPU) is
/// not complete yet, so `auto` stays on the CPU and says why; `cuda` is accepted for the parts
/// that run there and fails with a clear error where a part is missing.
pub fn pick(arg: DeviceArg) -> Result<(Device, DType)> {
    match arg {
        DeviceArg::Cpu => Ok((Device::Cpu, DType::F32)),
        DeviceArg::Cuda => match Device::cuda(0) {
            Ok(d) => {
                eprintln!("device: {}", d.describe());
                Ok((d, DType::F32))
            }
            Err(e) => bail!("--device cuda: {e}"),
        },
        DeviceArg::Auto => {
            let (d, why) = Device::auto();
            if d.is_cpu() {
                eprintln!("device: cpu ({why})");
            } else {
                eprintln!("device: cpu (a GPU is present: {why}; whole models on CUDA are not complete yet)");
            }
            Ok((Device::Cpu, DType::F32))
        }
    }
}
