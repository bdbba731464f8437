//! The weighted combine of a mixture-of-experts layer: `out[t] = Σ_j w[t, j] · y[pos[t, j]]`
//! for each token `t` and its `k` chosen experts, where `y` holds the experts' outputs with the
//! rows sorted by expert and `pos[t, j]` is the row of token `t`'s `j`-th choice.
//!
//! The sum runs in f32 in routing order (`j = 0`, the most probable expert, first) and is
//! stored once in `out`'s dtype, on the CPU and on the GPU alike (one block per token, a
//! thread per column); the GPU kernel makes the same f32 operations in the same order, so the
//! two agree to the last bit for the same `y` (it is compiled without FMA contraction).
//!
//! Invariants: every `pos` is a row of `y`; `y` and `out` have the same columns and dtype;
//! `pos` and `w` hold `out.rows() × k` entries, token-major.

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::tensor::Tensor;
use crate::{Device, TensorError};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::OnceLock;

const BODY: &str = r#"
__device__ __forceinline__ void kiln_combine_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void kiln_combine_store(kiln_f16* p, float v) { *p = kiln_f32_to_f16(v); }
__device__ __forceinline__ void kiln_combine_store(kiln_bf16* p, float v) { *p = kiln_f32_to_bf16(v); }

// One block per token: out[t, c] = sum over j < k of w[t * k + j] * y[pos[t * k + j], c], in f32
// in j order. `route` holds the k positions (i32) of every token, then the k weights (f32 bits).
template <typename T>
__device__ __forceinline__ void kiln_expert_combine(const T* __restrict__ y, long long ldy,
                                                    const int* __restrict__ route, int tokens, int k,
                                                    T* __restrict__ out, long long ldo, int cols) {
  const int t = blockIdx.x;
  const int* pos = route + (long long)t * k;
  const float* w = reinterpret_cast<const float*>(route + (long long)tokens * k) + (long long)t * k;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) acc = __fadd_rn(acc, __fmul_rn(w[j], kiln_to_f32(y[(long long)pos[j] * ldy + c])));
    kiln_combine_store(out + (long long)t * ldo + c, acc);
  }
}
#define KILN_EXPERT_COMBINE(SUFFIX, T)                                                                 \
  extern "C" __global__ void __launch_bounds__(256) kiln_expert_combine_##SUFFIX(                      \
      const T* y, long long ldy, const int* route, int tokens, int k, T* out, long long ldo, int cols) { \
    kiln_expert_combine<T>(y, ldy, route, tokens, k, out, ldo, cols);                                  \
  }
KILN_EXPERT_COMBINE(f32, float)
KILN_EXPERT_COMBINE(f16, kiln_f16)
KILN_EXPERT_COMBINE(bf16, kiln_bf16)
"#;

/// The CUDA source of [`combine`] (one module; for the NVRTC test).
pub fn source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        format!(
            "// kiln expert combine (runtime/src/device/expert_combine.rs)\n{}\n{BODY}",
            kiln_codegen::cuda::prelude::CORE
        )
    })
}

/// The entry points of [`source`].
pub fn entries() -> Vec<String> {
    ["f32", "f16", "bf16"].iter().map(|d| format!("kiln_expert_combine_{d}")).collect()
}

/// Each token's `k` choices, token-major in routing order: the row of `y` holding the chosen
/// expert's output for it, and the expert's weight.
#[derive(Clone, Copy)]
pub struct Choices<'a> {
    pub pos: &'a [u32],
    pub w: &'a [f32],
    pub k: usize,
}

/// `out[t] = Σ_j w[t·k + j] · y[pos[t·k + j]]` (see the module header).
pub fn combine(dev: &Device, y: &Tensor, c: Choices<'_>, out: &mut Tensor) -> Result<(), TensorError> {
    let Choices { pos, w, k } = c;
    let tokens = out.rows();
    if pos.len() != tokens * k || w.len() != tokens * k {
        return Err(TensorError::Shape(format!(
            "expert combine: {} positions and {} weights for {tokens} tokens of {k} experts",
            pos.len(),
            w.len()
        )));
    }
    if y.cols() != out.cols() || y.dtype() != out.dtype() {
        return Err(TensorError::Shape(format!(
            "expert combine: outputs of {} {} into {} {}",
            y.cols(),
            y.dtype(),
            out.cols(),
            out.dtype()
        )));
    }
    if let Some(&p) = pos.iter().find(|&&p| p as usize >= y.rows()) {
        return Err(TensorError::Shape(format!("expert combine: row {p} of {} expert outputs", y.rows())));
    }
    if tokens == 0 {
        return Ok(());
    }
    match dev {
        Device::Cpu => combine_cpu(y, c, out),
        Device::Cuda(b) => combine_cuda(b, dev, y, c, out),
    }
}

fn combine_cpu(y: &Tensor, Choices { pos, w, k }: Choices<'_>, out: &mut Tensor) -> Result<(), TensorError> {
    let cols = y.cols();
    let ys = y.to_host_f32()?;
    let mut acc = vec![0f32; out.rows() * cols];
    for ((o, pos), w) in acc.chunks_mut(cols).zip(pos.chunks(k)).zip(w.chunks(k)) {
        for (&p, &wj) in pos.iter().zip(w) {
            let row = &ys[p as usize * cols..][..cols];
            o.iter_mut().zip(row).for_each(|(a, v)| *a += wj * v);
        }
    }
    out.copy_from(&Tensor::from_f32_as(&Device::Cpu, out.dtype(), &acc, out.rows(), cols)?)
}

fn combine_cuda(
    b: &CudaBackend,
    dev: &Device,
    y: &Tensor,
    Choices { pos, w, k }: Choices<'_>,
    out: &mut Tensor,
) -> Result<(), TensorError> {
    let route: Vec<i32> = pos.iter().map(|&p| p as i32).chain(w.iter().map(|v| v.to_bits() as i32)).collect();
    let route = Tensor::from_host(dev, &route, 1, route.len())?;
    let err = |e: crate::device::cuda_error::CudaError| TensorError::Shape(format!("expert combine: {e}"));
    let module = b.module_with(source(), "kiln_expert_combine", &entries()).map_err(err)?;
    let f = module.func(&format!("kiln_expert_combine_{}", out.dtype().name())).map_err(err)?;
    let (yp, ldy, rp) = (y.cuda_ptr().unwrap_or(0), y.row_stride() as i64, route.cuda_ptr().unwrap_or(0));
    let (op, ldo) = (out.cuda_ptr().unwrap_or(0), out.row_stride() as i64);
    let (tokens, k32, cols) = (out.rows() as i32, k as i32, out.cols() as i32);
    let mut l = b.stream().launch_builder(f);
    l.arg(&yp).arg(&ldy).arg(&rp).arg(&tokens).arg(&k32).arg(&op).arg(&ldo).arg(&cols);
    let cfg = LaunchConfig { grid_dim: (tokens as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: y covers its rows × cols at ldy and every position is one of its rows (checked
    // above); route holds tokens × k positions then tokens × k weights; out covers tokens ×
    // cols at ldo. route is freed in stream order after the launch.
    drv("launching kiln_expert_combine", unsafe { l.launch(cfg) }).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_sums_its_experts_rows_by_weight() {
        let dev = Device::Cpu;
        // Four expert-output rows of 3 columns; two tokens of two experts each.
        let y = Tensor::from_f32(&dev, &[1., 2., 3., 10., 20., 30., 100., 200., 300., -1., -2., -3.], 4, 3).unwrap();
        let mut out = Tensor::zeros(&dev, crate::DType::F32, 2, 3).unwrap();
        let c = Choices { pos: &[2, 0, 1, 3], w: &[0.5, 0.25, 1.0, 2.0], k: 2 };
        combine(&dev, &y, c, &mut out).unwrap();
        assert_eq!(out.to_host_f32().unwrap(), vec![50.25, 100.5, 150.75, 8.0, 16.0, 24.0]);
    }

    #[test]
    fn positions_outside_the_outputs_are_refused() {
        let dev = Device::Cpu;
        let y = Tensor::zeros(&dev, crate::DType::F32, 2, 3).unwrap();
        let mut out = Tensor::zeros(&dev, crate::DType::F32, 1, 3).unwrap();
        assert!(combine(&dev, &y, Choices { pos: &[0, 2], w: &[1.0, 1.0], k: 2 }, &mut out).is_err());
        assert!(combine(&dev, &y, Choices { pos: &[0], w: &[1.0, 1.0], k: 2 }, &mut out).is_err());
    }
}
