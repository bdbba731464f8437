//! Hand-written utility kernels of the runtime (not model math, which is `#[fused]`): filling
//! a tensor with seeded uniform values (synthetic weights for benchmarks) and the row argmax
//! of greedy sampling. One self-contained source (the codegen prelude, no headers), compiled
//! by NVRTC and cached like the generated kernels; each has a CPU twin with the same result.
//!
//! Invariants: `fill_uniform` is a pure function of (seed, element index), so the CPU and the
//! GPU fill the same bits (up to the final rounding to the dtype, which both do to nearest
//! even); `argmax` returns the lowest index among equal maxima (as the CPU sampler does), and
//! -1 for a row the CPU sampler would refuse (a NaN or `+inf`, or nothing above `-inf`).

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::{drv, CudaError};
use crate::device::tensor::{Tensor, TensorError};
use crate::DType;
use crate::Device;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum DeviceKernelError {
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

const BODY: &str = r#"
__device__ __forceinline__ unsigned long long kiln_splitmix(unsigned long long x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// lo + (hi - lo) * u, u in [0, 1) from the top 24 bits of splitmix(seed ^ index).
__device__ __forceinline__ float kiln_uniform(unsigned long long seed, long long i, float lo, float hi) {
  const float u = (float)(kiln_splitmix(seed ^ (unsigned long long)i) >> 40) * (1.0f / 16777216.0f);
  return lo + (hi - lo) * u;
}
// Element i of the `cols`-wide part fills index `base + (i / cols) * full_cols + i % cols` of
// the whole tensor (a part of rows and columns of it; base = row0 * full_cols + col0).
#define KILN_FILL(NAME, T, NARROW)                                                              \
  extern "C" __global__ void NAME(T* __restrict__ out, long long n, unsigned long long seed, float lo, float hi, \
                                  long long base, long long cols, long long full_cols) {        \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) \
      out[i] = NARROW(kiln_uniform(seed, base + (i / cols) * full_cols + i % cols, lo, hi));    \
  }
__device__ __forceinline__ float kiln_id(float x) { return x; }
KILN_FILL(kiln_fill_uniform_f32, float, kiln_id)
KILN_FILL(kiln_fill_uniform_f16, kiln_f16, kiln_f32_to_f16)
KILN_FILL(kiln_fill_uniform_bf16, kiln_bf16, kiln_f32_to_bf16)

// One block per row: the index of the row's maximum, the lowest on ties; -1 when the row
// holds a NaN or +inf or nothing above -inf (the CPU sampler refuses such rows).
template <typename T>
__device__ __forceinline__ void kiln_argmax_row(const T* __restrict__ x, int stride, int n, int* __restrict__ out) {
  __shared__ float bv[32];
  __shared__ int bi[32];
  const T* row = x + (long long)blockIdx.x * stride;
  float v = -kiln_inf();
  int idx = 0x7fffffff;
  int bad = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float y = kiln_to_f32(row[i]);
    bad |= (y != y) | (y == kiln_inf());
    if (y > v) { v = y; idx = i; }  // strided, increasing i: the first maximum of this thread
  }
  const int any_bad = __syncthreads_or(bad);
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
    if (v2 > v || (v2 == v && i2 < idx)) { v = v2; idx = i2; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { bv[warp] = v; bi[warp] = idx; }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    v = lane < nw ? bv[lane] : -kiln_inf();
    idx = lane < nw ? bi[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
      const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
      const int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
      if (v2 > v || (v2 == v && i2 < idx)) { v = v2; idx = i2; }
    }
    if (lane == 0) out[blockIdx.x] = (any_bad || idx == 0x7fffffff) ? -1 : idx;
  }
}
extern "C" __global__ void kiln_argmax_f32(const float* x, int stride, int n, int* out) { kiln_argmax_row<float>(x, stride, n, out); }
extern "C" __global__ void kiln_argmax_f16(const kiln_f16* x, int stride, int n, int* out) { kiln_argmax_row<kiln_f16>(x, stride, n, out); }
extern "C" __global__ void kiln_argmax_bf16(const kiln_bf16* x, int stride, int n, int* out) { kiln_argmax_row<kiln_bf16>(x, stride, n, out); }
"#;

/// The CUDA source of the utility kernels (for `kiln build`).
pub fn source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        format!(
            "// kiln runtime utility kernels (runtime/src/device/device_kernels.rs)\n{}\n{BODY}",
            kiln_codegen::cuda::prelude::CORE
        )
    })
}

const ENTRIES: [&str; 6] = [
    "kiln_fill_uniform_f32",
    "kiln_fill_uniform_f16",
    "kiln_fill_uniform_bf16",
    "kiln_argmax_f32",
    "kiln_argmax_f16",
    "kiln_argmax_bf16",
];

fn module(b: &CudaBackend) -> Result<std::sync::Arc<crate::device::kernel_cache::LoadedModule>, CudaError> {
    let entries: Vec<String> = ENTRIES.iter().map(|s| s.to_string()).collect();
    b.module_with(source(), "kiln_device_kernels", &entries)
}

/// The CPU twin of the CUDA `kiln_splitmix`.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Element `i` of a [`fill_uniform`] with `seed`, `lo`, `hi` (before rounding to the dtype):
/// what the CPU fill computes and the GPU kernel computes the same way.
pub fn uniform_value(seed: u64, i: u64, lo: f32, hi: f32) -> f32 {
    let u = (splitmix(seed ^ i) >> 40) as f32 * (1.0 / 16_777_216.0);
    lo + (hi - lo) * u
}

/// Fill a contiguous float tensor with uniform values in `[lo, hi)`, element `i` a function of
/// `(seed, i)` only.
pub fn fill_uniform(t: &mut Tensor, seed: u64, lo: f32, hi: f32) -> Result<(), DeviceKernelError> {
    let cols = t.cols();
    fill_uniform_part(t, seed, lo, hi, FillPart { full_cols: cols, row0: 0, col0: 0 })
}

/// Where a tensor lies in a larger one a [`fill_uniform`] would fill whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillPart {
    pub full_cols: usize,
    pub row0: usize,
    pub col0: usize,
}

/// Fill `t` with its part of the whole tensor [`fill_uniform`] would fill with `seed`: element
/// `(r, c)` gets the whole tensor's `(part.row0 + r, part.col0 + c)` (a tensor-parallel rank's
/// rows or columns of a synthetic weight, made without the rest).
pub fn fill_uniform_part(t: &mut Tensor, seed: u64, lo: f32, hi: f32, part: FillPart) -> Result<(), DeviceKernelError> {
    if !t.is_contiguous() {
        return Err(DeviceKernelError::Shape("fill_uniform needs a contiguous tensor".into()));
    }
    if part.col0 + t.cols() > part.full_cols {
        let msg = format!("columns {}..{} of {}", part.col0, part.col0 + t.cols(), part.full_cols);
        return Err(DeviceKernelError::Shape(format!("fill_uniform_part: {msg}")));
    }
    let n = t.len();
    let (cols, full) = (t.cols().max(1) as u64, part.full_cols as u64);
    let base = (part.row0 * part.full_cols + part.col0) as u64;
    match t.device().clone() {
        Device::Cpu => {
            let vals: Vec<f32> =
                (0..n as u64).map(|i| uniform_value(seed, base + (i / cols) * full + i % cols, lo, hi)).collect();
            let filled = Tensor::from_f32_as(&Device::Cpu, t.dtype(), &vals, t.rows(), t.cols())?;
            t.copy_from(&filled)?;
            Ok(())
        }
        Device::Cuda(b) => {
            let entry = match t.dtype() {
                DType::F32 => "kiln_fill_uniform_f32",
                DType::F16 => "kiln_fill_uniform_f16",
                DType::BF16 => "kiln_fill_uniform_bf16",
                d => return Err(DeviceKernelError::Shape(format!("fill_uniform: {d} is not a float dtype"))),
            };
            let m = module(&b)?;
            let f = m.func(entry)?;
            let (ptr, n64) = (t.cuda_ptr().unwrap_or(0), n as i64);
            let (base, cols, full) = (base as i64, cols as i64, full as i64);
            let blocks = (n.div_ceil(256)).clamp(1, 65_535) as u32;
            let mut l = b.stream().launch_builder(f);
            l.arg(&ptr).arg(&n64).arg(&seed).arg(&lo).arg(&hi).arg(&base).arg(&cols).arg(&full);
            // SAFETY: `ptr` is a live allocation of `n` elements of the entry's type.
            let r = unsafe {
                l.launch(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
            };
            drv("launching kiln_fill_uniform", r)?;
            Ok(())
        }
    }
}

/// `out[r]` = the index of row `r`'s maximum (lowest on ties) of a `[rows, n]` float tensor,
/// into an i32 vector of `rows` elements on the same device; -1 for a row with a NaN or
/// `+inf`, or with every value `-inf`.
pub fn argmax_rows(x: &Tensor, out: &mut Tensor) -> Result<(), DeviceKernelError> {
    if out.dtype() != DType::I32 || out.vector_len() != Some(x.rows()) || !out.is_contiguous() {
        return Err(DeviceKernelError::Shape(format!("argmax_rows: out must be {} contiguous i32 values", x.rows())));
    }
    if x.rows() == 0 || x.cols() == 0 {
        return Ok(());
    }
    match x.device().clone() {
        Device::Cpu => {
            let v = x.to_host_f32()?;
            let ids: Vec<i32> = v
                .chunks(x.cols())
                .map(|row| {
                    let mut best: Option<(f32, usize)> = None;
                    for (i, &y) in row.iter().enumerate() {
                        if y.is_nan() || y == f32::INFINITY {
                            return -1;
                        }
                        if y > best.map_or(f32::NEG_INFINITY, |b| b.0) {
                            best = Some((y, i));
                        }
                    }
                    best.map_or(-1, |b| b.1 as i32)
                })
                .collect();
            out.copy_from_host(&ids)?;
            Ok(())
        }
        Device::Cuda(b) => {
            let entry = match x.dtype() {
                DType::F32 => "kiln_argmax_f32",
                DType::F16 => "kiln_argmax_f16",
                DType::BF16 => "kiln_argmax_bf16",
                d => return Err(DeviceKernelError::Shape(format!("argmax_rows: {d} is not a float dtype"))),
            };
            let m = module(&b)?;
            let f = m.func(entry)?;
            let (xp, stride, n, op) =
                (x.cuda_ptr().unwrap_or(0), x.row_stride() as i32, x.cols() as i32, out.cuda_ptr().unwrap_or(0));
            let mut l = b.stream().launch_builder(f);
            l.arg(&xp).arg(&stride).arg(&n).arg(&op);
            // SAFETY: `x` covers rows × n elements at `stride`; `out` holds `rows` i32.
            let r = unsafe {
                l.launch(LaunchConfig {
                    grid_dim: (x.rows() as u32, 1, 1),
                    block_dim: (1024, 1, 1),
                    shared_mem_bytes: 0,
                })
            };
            drv("launching kiln_argmax", r)?;
            Ok(())
        }
    }
}
