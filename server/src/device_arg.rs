//! `--device cpu|cuda|auto` and the dtype that goes with the device; `--tp-size`; `--sampling`.

use anyhow::{bail, Result};
use kiln_runtime::engine::SamplingPlacement;
use kiln_runtime::DType;
use kiln_runtime::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
}

/// `--weights`: how quantized projection weights are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    /// As stored in the file where the device has kernels for the format (every GGUF block
    /// format, Q4_0 … Q6_K, on the CPU), dense otherwise.
    Stored,
    /// Dequantized to the compute dtype at load (the reference for comparisons).
    Dense,
}

impl From<WeightsArg> for kiln_models::loader::WeightMode {
    fn from(a: WeightsArg) -> Self {
        match a {
            WeightsArg::Stored => kiln_models::loader::WeightMode::Stored,
            WeightsArg::Dense => kiln_models::loader::WeightMode::Dense,
        }
    }
}

/// `--kv-cache-dtype`: the KV cache's element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCacheArg {
    /// The compute dtype (f32 on the CPU, bf16 on a GPU).
    Auto,
    /// FP8 e4m3 with per-layer scales calibrated at start: twice the tokens of a bf16 cache.
    Fp8,
}

impl From<KvCacheArg> for kiln_models::kv_fp8::KvCacheDtype {
    fn from(a: KvCacheArg) -> Self {
        match a {
            KvCacheArg::Auto => Self::Auto,
            KvCacheArg::Fp8 => Self::Fp8,
        }
    }
}

/// Make `model`'s KV caches the `--kv-cache-dtype` type, saying so on stderr.
pub fn apply_kv_cache(
    model: &mut dyn kiln_runtime::model::CausalLm,
    tokenizer: Option<&kiln_models::tokenizer::Tokenizer>,
    arg: KvCacheArg,
) -> Result<()> {
    if let Some(s) = kiln_models::kv_fp8::apply(model, tokenizer, arg.into())? {
        eprintln!("kiln: {}", kiln_models::kv_fp8::describe(&s));
    }
    Ok(())
}

/// `--sampling`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplingArg {
    Auto,
    Host,
    Device,
}

impl From<SamplingArg> for SamplingPlacement {
    fn from(a: SamplingArg) -> Self {
        match a {
            SamplingArg::Auto => SamplingPlacement::Auto,
            SamplingArg::Host => SamplingPlacement::Host,
            SamplingArg::Device => SamplingPlacement::Device,
        }
    }
}

/// The device a whole model runs on, and its compute dtype: f32 on the CPU, bf16 on a GPU
/// (`KILN_DTYPE=f32|f16|bf16` overrides, e.g. to compare a GPU run with the CPU bit for bit).
/// `auto` takes the first GPU when the driver, NVRTC and cuBLAS are all there, and says which
/// it took and why.
pub fn pick(arg: DeviceArg) -> Result<(Device, DType)> {
    let dev = match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => match Device::cuda(0) {
            Ok(d) => {
                eprintln!("device: {}", d.describe());
                d
            }
            Err(e) => bail!("--device cuda: {e}"),
        },
        DeviceArg::Auto => {
            let (d, why) = Device::auto();
            eprintln!("device: {why}");
            d
        }
    };
    let dtype = match std::env::var("KILN_DTYPE").ok().as_deref() {
        None | Some("") => {
            if dev.is_cpu() {
                DType::F32
            } else {
                DType::BF16
            }
        }
        Some("f32") => DType::F32,
        Some("f16") if !dev.is_cpu() => DType::F16,
        Some("bf16") if !dev.is_cpu() => DType::BF16,
        Some(other) => bail!("KILN_DTYPE={other}: expected f32 (any device), or f16 / bf16 on a GPU"),
    };
    Ok((dev, dtype))
}

/// The devices of `--tp-size n` ranks and their dtype: rank `r` on GPU `r` when `--device`
/// picks a GPU (each must exist), else `n` CPU ranks (threads of this process).
pub fn pick_ranks(arg: DeviceArg, tp_size: usize) -> Result<(Vec<Device>, DType)> {
    if tp_size == 0 {
        bail!("--tp-size 0: a model needs at least one rank");
    }
    let (first, dtype) = pick(arg)?;
    let mut devices = vec![first];
    for r in 1..tp_size {
        devices.push(match &devices[0] {
            Device::Cpu => Device::Cpu,
            Device::Cuda(_) => match Device::cuda(r) {
                Ok(d) => d,
                Err(e) => bail!("--tp-size {tp_size} puts rank {r} on GPU {r}: {e}"),
            },
        });
    }
    Ok((devices, dtype))
}
