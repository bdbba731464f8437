//! Reference points measured next to the kernels: the device-to-device copy bandwidth (the
//! ceiling a memory-bound kernel is judged against), cuBLAS bf16 throughput at 4096³, and
//! cuBLAS correctness against the CPU GEMM (the CUDA GEMM path cannot run in CI).

use super::compare::{compare, Diff};
use super::timing::{median_us, rotation_sets};
use super::{CheckConfig, CheckError, CopyResult, GemmCheck, GemmSpeed};
use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::gemm::matmul;
use crate::device::tensor::Tensor;
use crate::device::Device;
use crate::DType;
use rand::rngs::StdRng;
use rand::Rng;

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Device-to-device copy of a `rows × cols` bf16 tensor; bytes counted read + written.
pub(crate) fn copy(
    gpu: &Device,
    b: &CudaBackend,
    cfg: &CheckConfig,
    rows: usize,
    cols: usize,
) -> Result<CopyResult, CheckError> {
    let bytes = rows * cols * 2;
    let sets = rotation_sets(2 * bytes, b.l2_bytes());
    let mut pairs = vec![];
    for _ in 0..sets {
        let src = Tensor::from_f32_as(gpu, DType::BF16, &vec![1.5f32; rows * cols], rows, cols)?;
        let dst = Tensor::uninit(gpu, DType::BF16, rows, cols)?;
        pairs.push((src.cuda_ptr().unwrap_or(0), dst.cuda_ptr().unwrap_or(0), src, dst));
    }
    let us = median_us(b, cfg.warmup, cfg.reps, |i| {
        let (s, d, _, _) = &pairs[i % sets];
        // SAFETY: both ranges are live allocations of `bytes` bytes (held in `pairs`).
        drv("copying device to device", unsafe {
            cudarc::driver::result::memcpy_dtod_async(*d, *s, bytes, b.stream().cu_stream())
        })?;
        Ok(())
    })?;
    Ok(CopyResult { rows, cols, bytes: 2 * bytes, median_us: us })
}

/// cuBLAS bf16 GEMM `n × n × n`: median time and TFLOP/s (2n³ flops).
pub(crate) fn gemm_speed(
    gpu: &Device,
    b: &CudaBackend,
    cfg: &CheckConfig,
    n: usize,
    rng: &mut StdRng,
) -> Result<GemmSpeed, CheckError> {
    let a = Tensor::from_f32_as(gpu, DType::BF16, &random(rng, n * n), n, n)?;
    let w = Tensor::from_f32_as(gpu, DType::BF16, &random(rng, n * n), n, n)?;
    let mut out = Tensor::uninit(gpu, DType::BF16, n, n)?;
    let us = median_us(b, cfg.warmup, cfg.reps, |_| Ok(matmul(gpu, &a, &w, &mut out)?))?;
    let tflops = 2.0 * (n as f64).powi(3) / (us * 1e-6) / 1e12;
    Ok(GemmSpeed { n, dtype: DType::BF16, median_us: us, tflops })
}

/// cuBLAS vs the CPU GEMM on the same (dtype-rounded) inputs. `offset` runs on column views
/// (odd leading dimensions, unaligned pointers) instead of dense tensors.
pub(crate) fn gemm_check(
    gpu: &Device,
    dtype: DType,
    (m, k, n): (usize, usize, usize),
    offset: bool,
    rng: &mut StdRng,
) -> GemmCheck {
    let mut run = || -> Result<Diff, CheckError> {
        let pad = usize::from(offset) * 3;
        let make = |rng: &mut StdRng, r: usize, c: usize| -> Result<(Tensor, Tensor), CheckError> {
            let host = Tensor::from_f32_as(&Device::Cpu, dtype, &random(rng, r * (c + pad)), r, c + pad)?;
            let cpu = Tensor::from_f32(&Device::Cpu, &host.to_host_f32()?, r, c + pad)?.view_cols(pad, c)?;
            let gpu_t = host.to_device(gpu)?.view_cols(pad, c)?;
            Ok((cpu, gpu_t))
        };
        let (a_cpu, a_gpu) = make(rng, m, k)?;
        let (w_cpu, w_gpu) = make(rng, n, k)?;
        let mut ref_out = Tensor::zeros(&Device::Cpu, DType::F32, m, n)?;
        matmul(&Device::Cpu, &a_cpu, &w_cpu, &mut ref_out)?;
        let parent = Tensor::from_f32_as(gpu, dtype, &vec![f32::NAN; m * (n + pad)], m, n + pad)?;
        let mut out = parent.view_cols(pad, n)?;
        matmul(gpu, &a_gpu, &w_gpu, &mut out)?;
        gpu.synchronize()?;
        Ok(compare(&out.to_host_f32()?, &ref_out.to_host_f32()?, false))
    };
    match run() {
        Ok(diff) => GemmCheck { dtype, m, k, n, offset, diff, error: None },
        Err(e) => GemmCheck { dtype, m, k, n, offset, diff: Diff::default(), error: Some(e.to_string()) },
    }
}
