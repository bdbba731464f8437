//! 8-bit W8A8 on tensor cores through cuBLASLt, for the batches of a [`W8Cuda`] weight uploaded
//! as W8A8 — FP8 (sm_89+) and, for SmoothQuant / `int-quantized` checkpoints, INT8 (sm_80+):
//! the activation rows are quantized (dynamic: `s = max|x| / 448` over the values that share a
//! scale, `q = e4m3(x / s)`, round to nearest even, saturating; or `s = max|x| / 127` per row,
//! `q = round(x / s)` ties to even, clamped to ±127 — `act_quant::ActQuant`'s CPU twins) and
//! cuBLASLt multiplies the 8-bit matrices, FP8 with f32 accumulation, INT8 with exact i32 sums
//! (IMMA; no scale modes there, so an epilogue kernel applies `s_x[i] · s_w[j]` to the i32
//! product). FP8's two scale forms:
//!
//! - **per output channel or tensor** ([`W8a8Scales::Channel`]): a scale per activation row.
//!   From 64 rows (bf16 / f32 outputs) cuBLASLt writes the unscaled product straight into
//!   `out` and a rescale kernel applies `s_x[i] · s_w[j]` in place (its unscaled FP8 GEMM is
//!   ~1.8× its outer-vector one: [`unscaled`]); below, where cuBLASLt has outer-vector
//!   scales (Hopper, CUDA 12.9+) it applies them itself and writes `out`; elsewhere it writes
//!   an f32 product that an epilogue kernel scales (`out[i, j] = D[i, j] · s_x[i] · s_w[j]`);
//! - **128×128 weight blocks** ([`W8a8Scales::Block128`], DeepSeek-style `weight_scale_inv`;
//!   only with `KILN_W8A8_BLOCKS=1`, see [`w8a8_form`]): a scale per activation row and group
//!   of 128 inputs (cuBLASLt's `VEC128_32F` on the activations, which must then be its first
//!   operand, × `BLK128x128_32F` on the weight, Hopper), the product written transposed in
//!   bf16 and transposed into `out` by a kernel; without an algorithm, the caller's fallback.
//!
//! This is not the W8A16 arithmetic of the GEMV: the activations lose bits (e4m3 keeps 4
//! significant bits), as in every FP8 W8A8 engine; the check program compares it with a CPU
//! twin that quantizes the activations the same way ([`quantize_row_e4m3`],
//! [`quantize_groups_e4m3`]).
//!
//! Row-major to column-major as in `gemm_cuda`: `Dᵀ (n × m) = W (op T of the k × n view) ·
//! qxᵀ (k × m)`, the "TN" form FP8 cuBLASLt requires; a row-major `out` view with row stride
//! `ldo` is the column-major `n × m` matrix with leading dimension `ldo` (INT8 needs the same
//! "TN" form, with its leading dimensions multiples of 4). Scale layouts
//! (cuBLASLt's): outer vectors are `[n]` and `[m]`; the weight's block scales `[⌈n / 128⌉,
//! ld]` row-major with `ld = ⌈k / 128⌉` rounded up to 4 (made at upload); the activations'
//! group scales `[k / 128, m]` (the row index fastest). Buffers: the quantized rows, their
//! scales and the f32 (i32) product live in the device's dequantization scratch (sized at upload),
//! `x` is taken in chunks of rows that fit it; the cuBLASLt handle and its workspace are made
//! at upload too, so a CUDA graph capture sees no allocation.
//!
//! Invariants: `k % 16 == 0` (the weight's, checked by [`W8Cuda::fits`]), `k % 128 == 0` for
//! block scales; each part's rows are a multiple of 16 (else this path declines and
//! dequantize + cuBLAS runs).

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::quant::act_quant::ActQuant;
use crate::device::quant::w8::{W8Elem, W8Matrix};
use crate::device::tensor::Tensor;
use crate::{DType, Device, GemmError};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys as lts;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock, Weak};

mod tune;
pub use tune::{heuristic_answers, time_algorithms, AlgoTiming, SweepForm};

/// cuBLASLt workspace (NVIDIA's recommendation for Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

/// The e4m3 packing the FP8 kernels share (the W8A8 activations here, the FP8 KV cache's
/// store in `model::kv_fp8`), on the prelude's software encoder (`kiln_f32_to_e4m3_bits`, whose
/// bits the CPU twin [`f32_to_e4m3`] has). Needs the prelude's core before it.
pub(crate) const E4M3_ENCODE: &str = r#"
#ifndef KILN_E4M3_ENCODE
#define KILN_E4M3_ENCODE
// Eight e4m3 bytes of v / s, packed little-endian (byte e = value e).
__device__ __forceinline__ uint2 kiln_fp8_pack8(const float (&v)[8], float s) {
  unsigned w[2] = {0u, 0u};
#pragma unroll
  for (int e = 0; e < 8; ++e) w[e >> 2] |= kiln_f32_to_e4m3_bits(v[e] / s) << (8 * (e & 3));
  return make_uint2(w[0], w[1]);
}

#endif  // KILN_E4M3_ENCODE
"#;

pub(super) const BODY: &str = r#"
// ---- 8-bit W8A8 (runtime/src/device/quant/fp8_lt.rs) ----
// Eight int8 codes of v / s (the prelude's kiln_f32_to_i8: nearest even, +-127), packed
// little-endian.
__device__ __forceinline__ uint2 kiln_int8_pack8(const float (&v)[8], float s) {
  unsigned w[2] = {0u, 0u};
#pragma unroll
  for (int e = 0; e < 8; ++e) w[e >> 2] |= ((unsigned)kiln_f32_to_i8(v[e] / s).v & 0xFFu) << (8 * (e & 3));
  return make_uint2(w[0], w[1]);
}

// One block of 1024 threads per row of x: s = max|x| / TOP (1 for a zero row), q = code(x / s),
// ELEM 0: e4m3 (TOP 448), 1: int8 (TOP 127). A thread loads 8 inputs at a time (16-byte loads
// when vec) and keeps its first two chunks in registers between the two passes, so rows up to
// 16384 inputs are read once.
#define KILN_FP8_KEEP 2
template <typename T, int ELEM>
__device__ __forceinline__ void kiln_w8a8_quant_rows(const T* __restrict__ x, long long ldx, int k,
                                                     unsigned char* __restrict__ q, float* __restrict__ sx, int vec) {
  const int row = blockIdx.x, chunks = k >> 3;
  const T* xr = x + (long long)row * ldx;
  float kept[KILN_FP8_KEEP][8];
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < KILN_FP8_KEEP; ++j) {
    const int c = threadIdx.x + j * blockDim.x;
    if (c < chunks) {
      kiln_i4_x8(xr, (const int*)nullptr, c << 3, vec, kept[j]);
#pragma unroll
      for (int e = 0; e < 8; ++e) amax = fmaxf(amax, fabsf(kept[j][e]));
    }
  }
  for (int c = threadIdx.x + KILN_FP8_KEEP * blockDim.x; c < chunks; c += blockDim.x) {
    float t[8];
    kiln_i4_x8(xr, (const int*)nullptr, c << 3, vec, t);
#pragma unroll
    for (int e = 0; e < 8; ++e) amax = fmaxf(amax, fabsf(t[e]));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  __shared__ float red[32];
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
  __syncthreads();
  if (threadIdx.x < 32) {
    float a = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    if (threadIdx.x == 0) red[0] = a;
  }
  __syncthreads();
  const float s = red[0] > 0.f ? red[0] / (ELEM == 0 ? 448.0f : 127.0f) : 1.0f;
  uint2* qr = reinterpret_cast<uint2*>(q + (long long)row * k);
#pragma unroll
  for (int j = 0; j < KILN_FP8_KEEP; ++j) {
    const int c = threadIdx.x + j * blockDim.x;
    if (c < chunks) qr[c] = ELEM == 0 ? kiln_fp8_pack8(kept[j], s) : kiln_int8_pack8(kept[j], s);
  }
  for (int c = threadIdx.x + KILN_FP8_KEEP * blockDim.x; c < chunks; c += blockDim.x) {
    float t[8];
    kiln_i4_x8(xr, (const int*)nullptr, c << 3, vec, t);
    qr[c] = ELEM == 0 ? kiln_fp8_pack8(t, s) : kiln_int8_pack8(t, s);
  }
  if (threadIdx.x == 0) sx[row] = s;
}

// Groups of 128 inputs (k % 128 == 0): blockIdx.x is the row, and each half-warp of the block's
// 512 threads one group of 32 * blockIdx.y + (its index): 16 lanes of 8 inputs. s = max|x| / 448
// over the group (1 for a zero group), q = e4m3(x / s); group g's scale goes to sx[g * ldsx + row].
template <typename T>
__device__ __forceinline__ void kiln_fp8_quant_groups(const T* __restrict__ x, long long ldx, int k,
                                                      unsigned char* __restrict__ q, float* __restrict__ sx,
                                                      int ldsx, int vec) {
  const int row = blockIdx.x, lane = threadIdx.x & 15;
  const int g = blockIdx.y * (blockDim.x >> 4) + (threadIdx.x >> 4);
  const bool live = g < (k >> 7);  // past the last group: no loads or stores, but in the shuffles
  const int i = (g << 7) + (lane << 3);
  float v[8], amax = 0.f;
  if (live) kiln_i4_x8(x + (long long)row * ldx, (const int*)nullptr, i, vec, v);
#pragma unroll
  for (int e = 0; e < 8; ++e) amax = live ? fmaxf(amax, fabsf(v[e])) : 0.f;
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float s = amax > 0.f ? amax / 448.0f : 1.0f;
  if (!live) return;
  *reinterpret_cast<uint2*>(q + (long long)row * k + i) = kiln_fp8_pack8(v, s);
  if (lane == 0) sx[(long long)g * ldsx + row] = s;
}

// out[i, j] = d[i, j] * sx[i] * sw[j / bo] * wmul, d: [m, n] contiguous, f32 (FP8) or i32 (INT8).
template <typename T, typename D>
__device__ __forceinline__ void kiln_w8a8_epilogue(const D* __restrict__ d, const float* __restrict__ sx,
                                                  const float* __restrict__ sw, int bo, float wmul, T* __restrict__ out,
                                                  long long ldo, int m, int n) {
  const long long total = (long long)m * n;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (long long)gridDim.x * blockDim.x) {
    const int i = (int)(t / n), j = (int)(t % n);
    kiln_i4_store(out + (long long)i * ldo + j, (float)d[t] * sx[i] * (sw[j / bo] * wmul));
  }
}

// out[i, j] *= sx[i] * sw[j / bo] * wmul: the scales of a product cuBLASLt wrote unscaled
// straight into out. Rows go by blockIdx.y (no index division per element), columns over
// blockIdx.x and the threads; a scale per channel (bo == 1) is read without a division either.
// vec (the host checked out's pointer, ldo and n): 0 one column per step; 1 eight columns per
// thread in 16-byte accesses (the pass is a read and a write of the whole output, so its speed
// is its access width); 2 as 1 with the eight channel scales in 16-byte loads too.
template <typename T>
__device__ __forceinline__ void kiln_w8a8_rescale(T* __restrict__ out, long long ldo, const float* __restrict__ sx,
                                                  const float* __restrict__ sw, int bo, float wmul, int m, int n,
                                                  int vec) {
  const int stride = gridDim.x * blockDim.x, first = blockIdx.x * blockDim.x + threadIdx.x;
  for (int i = blockIdx.y; i < m; i += gridDim.y) {
    const float si = sx[i];
    T* row = out + (long long)i * ldo;
    if (vec == 0) {
      for (int j = first; j < n; j += stride) {
        const float w = sw[bo == 1 ? j : j / bo] * wmul;
        kiln_i4_store(row + j, kiln_to_f32(row[j]) * si * w);
      }
      continue;
    }
    for (int j = 8 * first; j < n; j += 8 * stride) {
      float v[8], w[8];
      kiln_i4_vec8(row + j, v);
      if (vec == 2) {
        float a[4], b[4];
        kiln_load<float, 4>(a, sw + j);
        kiln_load<float, 4>(b, sw + j + 4);
#pragma unroll
        for (int e = 0; e < 4; ++e) { w[e] = a[e]; w[e + 4] = b[e]; }
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) w[e] = sw[bo == 1 ? j + e : (j + e) / bo];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = v[e] * si * (w[e] * wmul);
      kiln_i4_store8(row + j, v);
    }
  }
}

// out[i, j] = d[j * m + i]: the block-scaled product, which cuBLASLt writes transposed in bf16.
template <typename T>
__device__ __forceinline__ void kiln_fp8_transpose(const kiln_bf16* __restrict__ d, T* __restrict__ out,
                                                   long long ldo, int m, int n) {
  const long long total = (long long)m * n;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (long long)gridDim.x * blockDim.x) {
    const int i = (int)(t % m), j = (int)(t / m);  // consecutive threads read consecutive d
    kiln_i4_store(out + (long long)i * ldo + j, kiln_to_f32(d[t]));
  }
}

#define KILN_FP8_DTYPE(SUFFIX, T)                                                                          \
  extern "C" __global__ void __launch_bounds__(1024) kiln_fp8_quant_rows_##SUFFIX(                         \
      const T* x, long long ldx, int k, unsigned char* q, float* sx, int vec) {                             \
    kiln_w8a8_quant_rows<T, 0>(x, ldx, k, q, sx, vec);                                                      \
  }                                                                                                         \
  extern "C" __global__ void __launch_bounds__(1024) kiln_int8_quant_rows_##SUFFIX(                        \
      const T* x, long long ldx, int k, unsigned char* q, float* sx, int vec) {                             \
    kiln_w8a8_quant_rows<T, 1>(x, ldx, k, q, sx, vec);                                                      \
  }                                                                                                         \
  extern "C" __global__ void __launch_bounds__(512) kiln_fp8_quant_groups_##SUFFIX(                         \
      const T* x, long long ldx, int k, unsigned char* q, float* sx, int ldsx, int vec) {                   \
    kiln_fp8_quant_groups<T>(x, ldx, k, q, sx, ldsx, vec);                                                  \
  }                                                                                                         \
  extern "C" __global__ void kiln_fp8_epilogue_##SUFFIX(const float* d, const float* sx, const float* sw, int bo, \
                                                        float wmul, T* out, long long ldo, int m, int n) {  \
    kiln_w8a8_epilogue<T, float>(d, sx, sw, bo, wmul, out, ldo, m, n);                                      \
  }                                                                                                         \
  extern "C" __global__ void kiln_int8_epilogue_##SUFFIX(const int* d, const float* sx, const float* sw, int bo, \
                                                         float wmul, T* out, long long ldo, int m, int n) { \
    kiln_w8a8_epilogue<T, int>(d, sx, sw, bo, wmul, out, ldo, m, n);                                        \
  }                                                                                                         \
  extern "C" __global__ void kiln_w8a8_rescale_##SUFFIX(T* out, long long ldo, const float* sx, const float* sw, \
                                                        int bo, float wmul, int m, int n, int vec) {         \
    kiln_w8a8_rescale<T>(out, ldo, sx, sw, bo, wmul, m, n, vec);                                            \
  }                                                                                                         \
  extern "C" __global__ void kiln_fp8_transpose_##SUFFIX(const kiln_bf16* d, T* out, long long ldo, int m,   \
                                                         int n) {                                           \
    kiln_fp8_transpose<T>(d, out, ldo, m, n);                                                               \
  }
KILN_FP8_DTYPE(f32, float)
KILN_FP8_DTYPE(f16, kiln_f16)
KILN_FP8_DTYPE(bf16, kiln_bf16)
"#;

/// The entry points of [`BODY`].
pub(super) fn entries() -> Vec<String> {
    ["f32", "f16", "bf16"]
        .iter()
        .flat_map(|d| {
            [
                format!("kiln_fp8_quant_rows_{d}"),
                format!("kiln_int8_quant_rows_{d}"),
                format!("kiln_fp8_quant_groups_{d}"),
                format!("kiln_fp8_epilogue_{d}"),
                format!("kiln_int8_epilogue_{d}"),
                format!("kiln_w8a8_rescale_{d}"),
                format!("kiln_fp8_transpose_{d}"),
            ]
        })
        .collect()
}

/// The e4m3 byte of `x` (round to nearest even, saturating at ±448): the kernels' arithmetic,
/// the code generator's encoder.
pub use kiln_codegen::cpu::math::f32_to_e4m3;

/// The exact value of an e4m3 byte, from a table built once (the CPU twins' decode: W8A8's
/// fake quantization, the FP8 KV cache's attention).
pub fn e4m3_value(b: u8) -> f32 {
    static VALUES: OnceLock<[f32; 256]> = OnceLock::new();
    VALUES.get_or_init(|| std::array::from_fn(|b| W8Elem::Fp8E4M3.value(b as u8)))[b as usize]
}

/// A row's per-token quantization, as the kernel does it: its scale and e4m3 bytes.
pub fn quantize_row_e4m3(x: &[f32]) -> (f32, Vec<u8>) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let s = if amax > 0.0 { amax / 448.0 } else { 1.0 };
    (s, x.iter().map(|&v| f32_to_e4m3(v / s)).collect())
}

/// Groups of 128 inputs sharing an activation scale, as the block-scaled kernel quantizes a
/// row (`x.len() % 128 == 0`): each group's scale and the row's e4m3 bytes.
pub fn quantize_groups_e4m3(x: &[f32]) -> (Vec<f32>, Vec<u8>) {
    let (mut scales, mut bytes) = (vec![], Vec::with_capacity(x.len()));
    for g in x.chunks(GROUP) {
        let (s, q) = quantize_row_e4m3(g);
        scales.push(s);
        bytes.extend(q);
    }
    (scales, bytes)
}

/// The inputs (and weight rows) of a block-scaled FP8 weight's scale block.
pub const GROUP: usize = 128;

/// Which activation values share a scale in FP8 W8A8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActScale {
    /// One scale per row (token), for weights scaled per output channel or per tensor.
    Row,
    /// One scale per row and group of [`GROUP`] inputs, for weights in 128×128 blocks.
    Group,
}

impl ActScale {
    /// `x`'s row quantized as this form does it: the values it stands for (`e4m3 · scale`),
    /// the CPU's twin of the GPU's quantized activations.
    pub fn fake_quantize(self, x: &mut [f32]) {
        let g = match self {
            ActScale::Row => x.len().max(1),
            ActScale::Group => GROUP,
        };
        for part in x.chunks_mut(g) {
            // `quantize_row_e4m3`'s scale and bytes, without its vector.
            let amax = part.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = if amax > 0.0 { amax / 448.0 } else { 1.0 };
            for v in part.iter_mut() {
                *v = e4m3_value(f32_to_e4m3(*v / s)) * s;
            }
        }
    }
}

/// The FP8 W8A8 form of a weight stacked from `parts`, when every part takes one and the same:
/// FP8 E4M3, inputs a multiple of 16, rows a multiple of 16, and scales per output channel or
/// tensor ([`ActScale::Row`]) or — with `KILN_W8A8_BLOCKS=1` — in 128×128 blocks over inputs a
/// multiple of 128 ([`ActScale::Group`]). `None`: the weight multiplies as W8A16 (activations
/// unquantized). One rule for the GPU kernels and the CPU's twin.
///
/// Blocks are opt-in because cuBLASLt's block-scaled FP8 product (CUDA 13.0, H100) takes time
/// in proportion to the rows: 302 µs for 64 rows of an 8B qkv projection, 9.5 ms for 2048,
/// where dequantize + cuBLAS takes 59 and 167 µs. Checked correct all the same
/// (`kiln-check-w8` with the setting).
pub fn w8a8_form(parts: &[W8Matrix]) -> Option<ActScale> {
    static BLOCKS: OnceLock<bool> = OnceLock::new();
    let blocks = *BLOCKS.get_or_init(|| std::env::var("KILN_W8A8_BLOCKS").is_ok_and(|v| v == "1"));
    let form = |w: &W8Matrix| {
        let [bo, bi] = w.block();
        let fits = w.elem() == W8Elem::Fp8E4M3 && w.cols().is_multiple_of(16) && w.rows().is_multiple_of(16);
        match fits {
            true if bi >= w.cols() => Some(ActScale::Row),
            true if blocks && [bo, bi] == [GROUP; 2] && w.cols().is_multiple_of(GROUP) => Some(ActScale::Group),
            _ => None,
        }
    };
    let first = form(parts.first()?)?;
    parts.iter().all(|w| form(w) == Some(first)).then_some(first)
}

/// A device's cuBLASLt handle, its workspace, and a plan per GEMM shape (made on the shape's
/// first product, so a step pays for descriptors and the algorithm search once per shape).
pub(super) struct Lt {
    handle: lts::cublasLtHandle_t,
    workspace: Tensor,
    /// Each shape's plan, or `None` when cuBLASLt has no algorithm for it.
    plans: Mutex<HashMap<Shape, Option<Plan>>>,
    /// The fastest timed algorithm of each shape bucket (`tune`; with `KILN_FP8_LT_TUNE`).
    tuned: Mutex<HashMap<Shape, lts::cublasLtMatmulAlgo_t>>,
}

/// How a product's scales are applied (see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Form {
    /// Unscaled FP8 f32 product; an epilogue kernel applies the scales.
    Product,
    /// Unscaled INT8 i32 product (exact sums); an epilogue kernel applies the scales.
    Int8,
    /// Outer-vector scales (weight `[n]`, activations `[m]`), output in the activations' dtype.
    OuterVec,
    /// Weight 128×128 blocks, activations 1×128 groups, output in the activations' dtype.
    Block128,
    /// Unscaled FP8 product times a per-output-channel alpha vector (cuBLASLt's
    /// `ALPHA_DEVICE_VECTOR_BETA_ZERO` pointer mode), output in the activations' dtype: the
    /// weight's scales in the GEMM's own epilogue (the sweep's only: no algorithm on an H100).
    AlphaVec,
}

/// One GEMM shape: `D ([m, n] row-major, row stride ldd, dtype out) = qx ([m, k]) · W ([n,
/// k])ᵀ` in `form` (e4m3 operands, or int8 for [`Form::Int8`], whose `out` is ignored: i32);
/// `align`: the alignment of D's address (cuBLASLt's heuristic assumes 256 bytes unless told).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Shape {
    n: usize,
    m: usize,
    k: usize,
    form: Form,
    out: DType,
    ldd: usize,
    align: u32,
}

/// The descriptors and algorithm of one [`Shape`], destroyed on drop.
struct Plan {
    desc: lts::cublasLtMatmulDesc_t,
    a: lts::cublasLtMatrixLayout_t,
    b: lts::cublasLtMatrixLayout_t,
    d: lts::cublasLtMatrixLayout_t,
    /// The heuristic's first choice. (Timing its first 8 on a shape's first product and keeping
    /// the fastest made the engine slower: a serving step meets many row counts, and each
    /// new one paid for the timing.)
    algo: lts::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was made by `Plan::new` and is destroyed only here (a layout
        // still null was never made: `Plan::new` failed before it).
        unsafe {
            for l in [self.a, self.b, self.d].into_iter().filter(|l| !l.is_null()) {
                let _ = lt::destroy_matrix_layout(l);
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

// SAFETY: the handle is used only under the device's one stream order (every product runs on
// the backend's stream) and destroyed once, on drop; the plans are behind their mutex and are
// descriptors only (host memory cuBLASLt reads while a product is enqueued).
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: made by `create_handle`, destroyed only here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// The cuBLASLt state of GPU `b` (made once, shared while any 8-bit W8A8 weight holds it), or
/// `None` where `b` has no tensor cores for `elem` (FP8 before sm_89; INT8 with the plain
/// row / column layouts this path uses before sm_80).
pub(super) fn lt_for(b: &Arc<CudaBackend>, dev: &Device, elem: W8Elem) -> Result<Option<Arc<Lt>>, GemmError> {
    let needs = match elem {
        W8Elem::Fp8E4M3 => (8, 9),
        W8Elem::Int8 => (8, 0),
    };
    if b.compute_capability() < needs {
        return Ok(None);
    }
    type Registry = Mutex<HashMap<usize, Weak<Lt>>>;
    static ALL: OnceLock<Registry> = OnceLock::new();
    let mut all = ALL.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|_, w| w.strong_count() > 0);
    let key = Arc::as_ptr(b) as usize;
    if let Some(l) = all.get(&key).and_then(Weak::upgrade) {
        return Ok(Some(l));
    }
    drv("binding the CUDA context", b.context().bind_to_thread())?;
    let handle = lt::create_handle().map_err(|e| GemmError::Shape(format!("cuBLASLt: {e:?}")))?;
    let workspace = Tensor::uninit(dev, DType::F32, 1, WORKSPACE_BYTES / 4)?;
    let l = Arc::new(Lt { handle, workspace, plans: Mutex::default(), tuned: Mutex::default() });
    all.insert(key, Arc::downgrade(&l));
    Ok(Some(l))
}

/// A W8A8 part's scales in the forms this path takes (device addresses).
#[derive(Clone, Copy, Debug)]
pub(super) enum W8a8Scales {
    /// FP8, a scale per block of `bo` output channels (one block: per tensor): `epilogue`
    /// holds `[⌈rows / bo⌉]` f32 × `1 / wmul` of their value, `outer` the `[rows]` values
    /// themselves.
    Channel { epilogue: u64, bo: usize, wmul: f32, outer: u64 },
    /// FP8, 128×128 blocks: `[⌈rows / 128⌉, ld]` f32, `ld = ⌈k / 128⌉` rounded up to 4.
    Block128 { scales: u64 },
    /// INT8, a scale per block of `bo` output channels: `[⌈rows / bo⌉]` f32, applied by the
    /// epilogue kernel to the i32 product.
    Int8Channel { scales: u64, bo: usize },
}

impl W8a8Scales {
    fn form(&self) -> Form {
        match self {
            W8a8Scales::Channel { .. } => Form::OuterVec,
            W8a8Scales::Block128 { .. } => Form::Block128,
            W8a8Scales::Int8Channel { .. } => Form::Int8,
        }
    }

    /// How the activations are quantized for weights of these scales.
    fn act(&self) -> ActQuant {
        match self {
            W8a8Scales::Channel { .. } => ActQuant::E4m3(ActScale::Row),
            W8a8Scales::Block128 { .. } => ActQuant::E4m3(ActScale::Group),
            W8a8Scales::Int8Channel { .. } => ActQuant::Int8Row,
        }
    }
}

/// The weight scales of a `[rows, k]` part in cuBLASLt's 128×128 block layout, from its
/// `[⌈rows / 128⌉, ⌈k / 128⌉]` row-major values: rows padded to a multiple of 4 with zeros.
pub(super) fn block128_layout(values: &[f32], rows: usize, k: usize) -> (Vec<f32>, usize, usize) {
    let (br, bc) = (rows.div_ceil(GROUP), k.div_ceil(GROUP));
    let ld = bc.div_ceil(4) * 4;
    let mut out = vec![0f32; br * ld];
    for (o, row) in out.chunks_mut(ld).zip(values.chunks(bc)) {
        o[..bc].copy_from_slice(row);
    }
    (out, br, ld)
}

/// One W8A8 part as this path needs it.
pub(super) struct W8a8Part {
    pub rows: usize,
    /// Device address of the `[rows, k]` 8-bit codes (e4m3, or int8 for [`W8a8Scales::Int8Channel`]).
    pub bytes: u64,
    pub scales: W8a8Scales,
}

fn lt_err(what: &str, e: impl std::fmt::Debug) -> GemmError {
    GemmError::Shape(format!("cuBLASLt {what}: {e:?}"))
}

/// The activations of a W8A8 product: rows to quantize here, or rows a kernel before it (a
/// norm fused with the quantization) already quantized per row.
#[derive(Clone, Copy)]
pub(super) enum ActIn<'a> {
    Dense(&'a Tensor),
    /// `[rows, k]` codes (e4m3, or int8 for INT8 weights) at `q` (row stride `k`) and their
    /// `[rows]` f32 scales at `s`.
    Quantized {
        q: u64,
        s: u64,
        rows: usize,
        k: usize,
    },
}

impl ActIn<'_> {
    fn shape(&self) -> (usize, usize) {
        match self {
            ActIn::Dense(x) => (x.rows(), x.cols()),
            ActIn::Quantized { rows, k, .. } => (*rows, *k),
        }
    }
}

/// `out = x · Wᵀ` in 8-bit W8A8 for the parts (each into its own columns; all of one scale
/// form), the buffers carved from the scratch at `scratch` (`scratch_bytes` long). `Ok(false)`
/// when it does not apply (a part's rows not a multiple of 16, block scales and `k % 128 != 0`,
/// already-quantized rows for block scales, no algorithm for the shape): the caller then
/// writes every column another way.
pub(super) fn product(
    b: &CudaBackend,
    l: &Lt,
    x: ActIn<'_>,
    parts: &[W8a8Part],
    out: &mut Tensor,
    (scratch, scratch_bytes): (u64, usize),
) -> Result<bool, GemmError> {
    let (m, k) = x.shape();
    let nmax = parts.iter().map(|p| p.rows).max().unwrap_or(0);
    let Some(first) = parts.first().map(|p| p.scales) else { return Ok(true) };
    let (form, act) = (first.form(), first.act());
    let groups = if form == Form::Block128 { k / GROUP } else { 1 };
    let given = matches!(x, ActIn::Quantized { .. });
    if parts.iter().any(|p| !p.rows.is_multiple_of(16) || p.scales.form() != form)
        || !k.is_multiple_of(16)
        || (form == Form::Block128 && !k.is_multiple_of(GROUP))
        || (given && act == ActQuant::E4m3(ActScale::Group))
    {
        return Ok(false);
    }
    // Rows per chunk: quantized rows (k bytes) and their scales unless given, D (nmax f32)
    // each, 256-aligned.
    let per_row = if given { 0 } else { k + 4 * groups } + 4 * nmax;
    let cap = scratch_bytes.saturating_sub(1024) / per_row / 16 * 16;
    if cap == 0 {
        return Ok(false);
    }
    let chunk = cap.min(m);
    let align = |v: u64| v.div_ceil(256) * 256;
    let qx = align(scratch);
    let sx = align(qx + (chunk * k) as u64);
    let d = if given { align(scratch) } else { align(sx + (chunk * 4 * groups) as u64) };
    let module = b.module_with(super::int4_cuda::source(), "kiln_int4", super::int4_cuda::entries())?;
    let dt = out.dtype().name();
    let epi = module.func(&format!("kiln_fp8_epilogue_{dt}"))?;
    let epi_int8 = module.func(&format!("kiln_int8_epilogue_{dt}"))?;
    let transpose = module.func(&format!("kiln_fp8_transpose_{dt}"))?;
    let rescale = module.func(&format!("kiln_w8a8_rescale_{dt}"))?;
    for r0 in (0..m).step_by(chunk) {
        let rows = (m - r0).min(chunk);
        let (qx, sx) = match x {
            ActIn::Dense(x) => {
                // SAFETY: qx holds rows × k bytes and sx rows × groups f32 inside the scratch
                // (chunk ≥ rows, carved above).
                unsafe { quantize_into(b, &x.view_rows(r0, rows)?, act, qx, sx)? };
                (qx, sx)
            }
            ActIn::Quantized { q, s, .. } => (q + (r0 * k) as u64, s + 4 * r0 as u64),
        };
        drv("binding the CUDA context", b.context().bind_to_thread())?;
        let mut at = 0;
        for p in parts {
            let o = out.view_rows(r0, rows)?.view_cols(at, p.rows)?;
            at += p.rows;
            let (op, ldo) = (o.cuda_ptr().unwrap_or(0), o.row_stride());
            let (m32, n32, ldo) = (rows as i32, p.rows as i32, ldo as i64);
            let blocks = (rows * p.rows).div_ceil(256).clamp(1, 8 * b.sm_count().max(1) as usize) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // The scales applied to the unscaled product in d (f32 for FP8, i32 for INT8).
            let epilogue = |f, sw: u64, bo: usize, wmul: f32| {
                let bo = bo as i32;
                let mut le = b.stream().launch_builder(f);
                le.arg(&d).arg(&sx).arg(&sw).arg(&bo).arg(&wmul).arg(&op).arg(&ldo).arg(&m32).arg(&n32);
                // SAFETY: d holds rows × p.rows products (written by the GEMM before it on the
                // stream), sx rows scales, sw ⌈p.rows / bo⌉; o covers rows × p.rows at ldo.
                drv("launching the W8A8 epilogue", unsafe { le.launch(cfg) })
            };
            match p.scales {
                W8a8Scales::Channel { epilogue: sw, bo, wmul, outer } => {
                    let ab = Operands { w: (p.bytes, p.rows), qx: (qx, rows), k, scales: (outer, sx) };
                    let straight = Target { ptr: op, ld: ldo as usize, dtype: o.dtype() };
                    // The unscaled product straight into `out`, its scales applied there by the
                    // rescale kernel (not into f16: an unscaled e4m3 product reaches 448² · k,
                    // past f16's range).
                    if unscaled(rows) && o.dtype() != DType::F16 && gemm(b, l, Form::Product, &ab, straight)? {
                        let vec = rescale_width(op, ldo as usize, p.rows, o.dtype().size_bytes(), sw, bo);
                        let (bo, vec32) = (bo as i32, vec as i32);
                        let mut lr = b.stream().launch_builder(rescale);
                        lr.arg(&op).arg(&ldo).arg(&sx).arg(&sw).arg(&bo).arg(&wmul).arg(&m32).arg(&n32).arg(&vec32);
                        let per_thread = if vec == 0 { 1 } else { 8 };
                        let x = p.rows.div_ceil(256 * per_thread).min(8) as u32;
                        let rcfg = LaunchConfig {
                            grid_dim: (x, rows.min(65_535) as u32, 1),
                            block_dim: (256, 1, 1),
                            shared_mem_bytes: 0,
                        };
                        // SAFETY: o covers rows × p.rows at ldo (written by the GEMM before it
                        // on the stream); sx holds rows scales, sw ⌈p.rows / bo⌉.
                        drv("launching the W8A8 rescale", unsafe { lr.launch(rcfg) })?;
                        continue;
                    }
                    if gemm(b, l, Form::OuterVec, &ab, straight)? {
                        continue;
                    }
                    if !gemm(b, l, Form::Product, &ab, Target { ptr: d, ld: p.rows, dtype: DType::F32 })? {
                        return Ok(false);
                    }
                    epilogue(epi, sw, bo, wmul)?;
                }
                W8a8Scales::Int8Channel { scales: sw, bo } => {
                    let ab = Operands { w: (p.bytes, p.rows), qx: (qx, rows), k, scales: (0, 0) };
                    if !gemm(b, l, Form::Int8, &ab, Target { ptr: d, ld: p.rows, dtype: DType::F32 })? {
                        return Ok(false);
                    }
                    epilogue(epi_int8, sw, bo, 1.0)?;
                }
                W8a8Scales::Block128 { scales } => {
                    // cuBLASLt takes 1×128 scales on its first operand and 128×128 ones on its
                    // second, and writes them in 16 bits, so the activations go first and the
                    // product comes out transposed (`[n, m]` bf16); a kernel transposes it.
                    let ab = Operands { w: (p.bytes, p.rows), qx: (qx, rows), k, scales: (scales, sx) };
                    if !gemm(b, l, Form::Block128, &ab, Target { ptr: d, ld: rows, dtype: DType::BF16 })? {
                        return Ok(false);
                    }
                    let mut lt = b.stream().launch_builder(transpose);
                    lt.arg(&d).arg(&op).arg(&ldo).arg(&m32).arg(&n32);
                    // SAFETY: d holds p.rows × rows bf16 (written by the GEMM); o covers rows ×
                    // p.rows at ldo.
                    drv("launching kiln_fp8_transpose", unsafe { lt.launch(cfg) })?;
                }
            }
        }
    }
    Ok(true)
}

/// Bytes of scratch the quantized activations of `rows` rows of `k` inputs take in `form`:
/// `(bytes of qx, bytes of sx)`.
pub(super) fn quantized_bytes(rows: usize, k: usize, form: ActQuant) -> (usize, usize) {
    let groups = if form == ActQuant::E4m3(ActScale::Group) { k / GROUP } else { 1 };
    (rows * k, rows * groups * 4)
}

/// `x`'s rows quantized in `form` (e4m3 per row or group, int8 per row) on `b`'s stream: codes
/// into `qx` (`[rows, k]`), scales into `sx` (`[rows]`, or `[k / 128, rows]` for groups).
///
/// # Safety
/// `qx` and `sx` are device addresses of at least [`quantized_bytes`] bytes, 16-byte aligned,
/// not read or written by anything else until the stream has run this.
pub(super) unsafe fn quantize_into(
    b: &CudaBackend,
    x: &Tensor,
    form: ActQuant,
    qx: u64,
    sx: u64,
) -> Result<(), GemmError> {
    let (rows, k) = (x.rows(), x.cols());
    let groups = form == ActQuant::E4m3(ActScale::Group);
    if groups && !k.is_multiple_of(GROUP) {
        return Err(GemmError::Shape(format!("FP8 activation groups of {GROUP} over {k} inputs")));
    }
    let module = b.module_with(super::int4_cuda::source(), "kiln_int4", super::int4_cuda::entries())?;
    let kind = match form {
        ActQuant::E4m3(ActScale::Row) => "fp8_quant_rows",
        ActQuant::E4m3(ActScale::Group) => "fp8_quant_groups",
        ActQuant::Int8Row => "int8_quant_rows",
    };
    let quant = module.func(&format!("kiln_{kind}_{}", x.dtype().name()))?;
    let (xp, ldx, k32, ldsx) = (x.cuda_ptr().unwrap_or(0), x.row_stride() as i64, k as i32, rows as i32);
    // 16-byte loads of 8 inputs need x's rows at 16-byte boundaries.
    let elt = x.dtype().size_bytes() as u64;
    let vec = i32::from(xp.is_multiple_of(16) && (ldx as u64 * elt).is_multiple_of(16));
    let mut lq = b.stream().launch_builder(quant);
    lq.arg(&xp).arg(&ldx).arg(&k32).arg(&qx).arg(&sx);
    if groups {
        lq.arg(&ldsx);
    }
    lq.arg(&vec);
    let cfg = if groups {
        let y = (k / GROUP).div_ceil(32) as u32;
        LaunchConfig { grid_dim: (rows as u32, y, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 }
    } else {
        LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 }
    };
    // SAFETY: x covers rows × k at ldx; qx and sx are large enough (the caller's contract).
    let r = unsafe { lq.launch(cfg) };
    drv("launching kiln_fp8_quant", r)?;
    Ok(())
}

/// Where a product goes: a row-major `[m, n]` matrix at `ptr` with row stride `ld`.
#[derive(Clone, Copy)]
struct Target {
    ptr: u64,
    ld: usize,
    dtype: DType,
}

/// A product's inputs: the weight `(bytes, rows n)`, the quantized activations `(bytes, rows
/// m)`, `k`, and the `(weight, activation)` scale arrays of the direct forms.
struct Operands {
    w: (u64, usize),
    qx: (u64, usize),
    k: usize,
    scales: (u64, u64),
}

fn cuda_type(d: DType) -> lts::cudaDataType_t {
    use lts::cudaDataType_t as Ty;
    match d {
        DType::F16 => Ty::CUDA_R_16F,
        DType::BF16 => Ty::CUDA_R_16BF,
        _ => Ty::CUDA_R_32F,
    }
}

impl Plan {
    /// The plan of `s` on `l` with the heuristic's first algorithm: `None` when cuBLASLt has
    /// none for it.
    fn new(l: &Lt, s: Shape) -> Result<Option<Plan>, GemmError> {
        let mut plan = Plan::describe(s, fast_accum())?;
        match plan.offers(l, s, 1)?.first() {
            Some(h) => {
                plan.algo = h.algo;
                Ok(Some(plan))
            }
            None => Ok(None),
        }
    }

    /// The descriptors of `s` (accumulating in the tensor cores' own precision when `fast`),
    /// with no algorithm chosen yet.
    fn describe(s: Shape, fast: bool) -> Result<Plan, GemmError> {
        use lts::cublasComputeType_t as Compute;
        use lts::cublasLtMatmulDescAttributes_t as Attr;
        use lts::cublasLtMatmulMatrixScale_t as Mode;
        use lts::cudaDataType_t as Ty;
        // INT8: exact i32 sums, i32 alpha / beta and D (cuBLASLt's IMMA combination).
        let int8 = s.form == Form::Int8;
        let (compute, scale, input, out) = match int8 {
            true => (Compute::CUBLAS_COMPUTE_32I, Ty::CUDA_R_32I, Ty::CUDA_R_8I, Ty::CUDA_R_32I),
            false => (Compute::CUBLAS_COMPUTE_32F, Ty::CUDA_R_32F, Ty::CUDA_R_8F_E4M3, cuda_type(s.out)),
        };
        let desc = lt::create_matmul_desc(compute, scale).map_err(|e| lt_err("descriptor", e))?;
        // Owned from here: a later failure drops (destroys) what was made. Layouts are
        // column-major: W as k × n (read transposed), qx as k × m, D as n × m.
        let layout = |ty, rows: usize, cols: usize, ld: usize| {
            lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64).map_err(|e| lt_err("layout", e))
        };
        let null = std::ptr::null_mut();
        let algo = lts::cublasLtMatmulAlgo_t { data: [0; 8] };
        let mut plan = Plan { desc, a: null, b: null, d: null, algo };
        // Block128 puts the activations first (see `product`): D is `Dᵀ`, m × n.
        let (ra, rb) = match s.form {
            Form::Block128 => (s.m, s.n),
            _ => (s.n, s.m),
        };
        plan.a = layout(input, s.k, ra, s.k)?;
        plan.b = layout(input, s.k, rb, s.k)?;
        plan.d = layout(out, ra, rb, s.ldd)?;
        // SAFETY: the descriptor is live (owned by `plan`); each attribute buffer is a live
        // local of the size passed.
        unsafe {
            let set = |attr: Attr, v: i32| {
                lt::set_matmul_desc_attribute(plan.desc, attr, &v as *const i32 as *const c_void, 4)
                    .map_err(|e| lt_err("descriptor attribute", e))
            };
            // cublasOperation_t as the 32-bit value cuBLASLt reads: OP_N = 0, OP_T = 1 (W is
            // read transposed, the "TN" form FP8 requires).
            set(Attr::CUBLASLT_MATMUL_DESC_TRANSA, 1)?;
            set(Attr::CUBLASLT_MATMUL_DESC_TRANSB, 0)?;
            let modes = match s.form {
                Form::Product | Form::Int8 | Form::AlphaVec => None,
                Form::OuterVec => Some((
                    Mode::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
                    Mode::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
                )),
                Form::Block128 => Some((
                    Mode::CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
                    Mode::CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F,
                )),
            };
            if let Some((a, b)) = modes {
                set(Attr::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, a as i32)?;
                set(Attr::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, b as i32)?;
            }
            if s.form == Form::AlphaVec {
                let mode = lts::cublasLtPointerMode_t::CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO as i32;
                set(Attr::CUBLASLT_MATMUL_DESC_POINTER_MODE, mode)?;
            }
            if matches!(s.form, Form::Product | Form::OuterVec | Form::AlphaVec) && fast {
                let one = 1i8;
                let v = &one as *const i8 as *const c_void;
                lt::set_matmul_desc_attribute(plan.desc, Attr::CUBLASLT_MATMUL_DESC_FAST_ACCUM, v, 1)
                    .map_err(|e| lt_err("fast accumulation", e))?;
            }
        }
        Ok(plan)
    }

    /// Up to `count` algorithms cuBLASLt's heuristic offers for this plan's shape `s` on `l`,
    /// its best guess first (none: it has no algorithm for the shape).
    fn offers(&self, l: &Lt, s: Shape, count: usize) -> Result<Vec<lts::cublasLtMatmulHeuristicResult_t>, GemmError> {
        Ok(self.heuristic(l, s, count)?.2)
    }

    /// [`Plan::offers`] with the heuristic's status and the count it returned (for the
    /// sweep's diagnosis).
    #[allow(clippy::type_complexity)]
    fn heuristic(
        &self,
        l: &Lt,
        s: Shape,
        count: usize,
    ) -> Result<(lts::cublasStatus_t, i32, Vec<lts::cublasLtMatmulHeuristicResult_t>), GemmError> {
        use lts::cublasLtMatmulPreferenceAttributes_t as Pref;
        let ws = l.workspace.len() * 4;
        // SAFETY: the descriptors are live (owned by `self`); each attribute buffer is a live
        // local of the size passed; `found` has room for `count` results.
        unsafe {
            let pref = lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?;
            let set_pref = |attr: Pref, v: *const c_void, size: usize| {
                lt::set_matmul_pref_attribute(pref, attr, v, size).map_err(|e| lt_err("preference attribute", e))
            };
            let mut found: Vec<lts::cublasLtMatmulHeuristicResult_t> = Vec::with_capacity(count);
            let mut n = 0i32;
            let r = set_pref(Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws as *const usize as *const c_void, 8)
                .and_then(|()| {
                    let a = &s.align as *const u32 as *const c_void;
                    set_pref(Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, a, 4)?;
                    set_pref(Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, a, 4)
                })
                .map(|()| {
                    lts::cublasLtMatmulAlgoGetHeuristic(
                        l.handle,
                        self.desc,
                        self.a,
                        self.b,
                        self.d,
                        self.d,
                        pref,
                        count as i32,
                        found.as_mut_ptr(),
                        &mut n,
                    )
                });
            let _ = lt::destroy_matmul_pref(pref);
            // A status other than success (NOT_SUPPORTED included) means no algorithm.
            let status = r?;
            if status != lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Ok((status, n, vec![]));
            }
            found.set_len((n.max(0) as usize).min(count));
            found.retain(|h| h.state == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
            Ok((status, n, found))
        }
    }
}

/// The rescale kernel's access form for an output at `op` (row stride `ldo` elements of `size`
/// bytes, `n` columns) and weight scales at `sw` (one per `bo` columns): 2 when the output's rows
/// and the scales can be read eight at a time in 16-byte accesses, 1 when only the output can,
/// 0 one element at a time.
fn rescale_width(op: u64, ldo: usize, n: usize, size: usize, sw: u64, bo: usize) -> u32 {
    let aligned = op.is_multiple_of(16) && (ldo * size).is_multiple_of(16) && n.is_multiple_of(8);
    match (aligned, bo == 1 && sw.is_multiple_of(16)) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    }
}

/// Rows from which an FP8 per-channel / per-tensor product is unscaled + rescaled by default:
/// cuBLASLt's unscaled FP8 GEMM runs at 870–1,490 TFLOP/s on an H100 where its outer-vector
/// form ran near bf16's speed, which at full load (256 rows and prefill chunks) made the engine
/// 1.18× bf16 against 1.08× (H100, 2026-12-07); at one row the outer-vector form is ahead
/// (4.51 against 4.73 ms a step), at 64 rows the unscaled one (7.87 against 8.03).
const UNSCALED_MIN_ROWS: usize = 64;

/// Whether an FP8 per-channel / per-tensor product of `rows` rows is unscaled + rescaled: by
/// default from [`UNSCALED_MIN_ROWS`] rows — the per-tensor product straight into the output,
/// then a rescale kernel applying `s_x[i] · s_w[j]` — with cuBLASLt's outer-vector modes below;
/// `KILN_FP8_FORM` (a measurement switch) forces `outer` or `unscaled`. Either falls back to
/// the next (outer vectors, then an f32 product and an epilogue) where cuBLASLt has no
/// algorithm, and f16 outputs never take the unscaled product (see `product`). (The weight's
/// scales as cuBLASLt's alpha vector, `Form::AlphaVec`, have no FP8 algorithm on an H100's
/// cuBLASLt: only the sweep times that form.)
fn unscaled(rows: usize) -> bool {
    static F: OnceLock<Option<bool>> = OnceLock::new();
    let forced = *F.get_or_init(|| match std::env::var("KILN_FP8_FORM").as_deref() {
        Ok("unscaled") => Some(true),
        Ok("outer") => Some(false),
        _ => None,
    });
    forced.unwrap_or(rows >= UNSCALED_MIN_ROWS)
}

/// Whether the FP8 products accumulate in the tensor cores' own precision for all of `k`
/// (`KILN_FP8_FAST_ACCUM=1`; a measurement switch) instead of promoting partial sums to f32.
fn fast_accum() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| std::env::var("KILN_FP8_FAST_ACCUM").is_ok_and(|v| v == "1"))
}

/// The largest power of two up to 256 that divides `ptr`.
fn alignment(ptr: u64) -> u32 {
    1u32 << ptr.trailing_zeros().min(8)
}

/// The product of `ab` in `form` into `t` on `b`'s stream; `Ok(false)` when cuBLASLt has no
/// algorithm for it.
fn gemm(b: &CudaBackend, l: &Lt, form: Form, ab: &Operands, t: Target) -> Result<bool, GemmError> {
    let ((w, n), (qx, m), k) = (ab.w, ab.qx, ab.k);
    let shape = Shape { n, m, k, form, out: t.dtype, ldd: t.ld, align: alignment(t.ptr) };
    // Block128 takes the activations as cuBLASLt's first operand (see `product`).
    let ((a, sa), (bm, sb)) = match form {
        Form::Block128 => ((qx, ab.scales.1), (w, ab.scales.0)),
        _ => ((w, ab.scales.0), (qx, ab.scales.1)),
    };
    let mut plans = l.plans.lock().unwrap_or_else(|e| e.into_inner());
    let plan = match plans.entry(shape) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let mut plan = Plan::new(l, shape)?;
            if let Some(p) = plan.as_mut().filter(|_| tune::candidates() > 1) {
                // SAFETY: the operands are the caller's, of this shape; the plan is not yet
                // shared (made under the plans' lock).
                unsafe { p.tune(b, l, shape, (a, sa), (bm, sb), t.ptr) }?;
            }
            e.insert(plan)
        }
    };
    let Some(p) = plan.as_ref() else { return Ok(false) };
    let stream = b.stream().cu_stream() as lts::cudaStream_t;
    // SAFETY: the plan's descriptors describe the matrices at these device addresses (the
    // caller's carving of W, qx, the scales and D); the scale pointers are set under the
    // plans' lock, just before the product that reads them.
    unsafe { p.launch(l, &p.algo, (a, sa), (bm, sb), t.ptr, form, stream) }?;
    Ok(true)
}

impl Plan {
    /// `D = A · B` with `algo` on `stream`, scales `sa`, `sb` set on the descriptor first for
    /// the forms cuBLASLt scales itself.
    ///
    /// # Safety
    /// `a`, `b`, `d` (and the scales when `scaled`) are device addresses of the matrices this
    /// plan describes; no other thread uses this plan's descriptor until the call returns.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch(
        &self,
        l: &Lt,
        algo: &lts::cublasLtMatmulAlgo_t,
        (a, sa): (u64, u64),
        (bm, sb): (u64, u64),
        d: u64,
        form: Form,
        stream: lts::cudaStream_t,
    ) -> Result<(), GemmError> {
        use lts::cublasLtMatmulDescAttributes_t as Attr;
        // Host scalars of the plan's scale type: i32 for INT8, f32 otherwise.
        let (alpha, beta, alpha_i, beta_i) = (1.0f32, 0.0f32, 1i32, 0i32);
        let (alpha, beta) = match form {
            Form::Int8 => (&alpha_i as *const i32 as *const c_void, &beta_i as *const i32 as *const c_void),
            // The weight's `[n]` scales on the device are alpha (beta is zero by the mode).
            Form::AlphaVec => (sa as *const c_void, &beta as *const f32 as *const c_void),
            _ => (&alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void),
        };
        // SAFETY: the caller's contract; alpha and beta are host scalars of the descriptor's
        // scale type (see above), live for the call; the workspace is this handle's, of the
        // size the plan was searched with.
        unsafe {
            if matches!(form, Form::OuterVec | Form::Block128) {
                for (attr, ptr) in
                    [(Attr::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, sa), (Attr::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, sb)]
                {
                    let v = ptr as *const c_void;
                    lt::set_matmul_desc_attribute(self.desc, attr, &v as *const *const c_void as *const c_void, 8)
                        .map_err(|e| lt_err("scale pointer", e))?;
                }
            }
            lt::matmul(
                l.handle,
                self.desc,
                alpha,
                beta,
                a as *const c_void,
                self.a,
                bm as *const c_void,
                self.b,
                d as *const c_void,
                self.d,
                d as *mut c_void,
                self.d,
                algo,
                l.workspace.cuda_ptr().unwrap_or(0) as *mut c_void,
                l.workspace.len() * 4,
                stream,
            )
        }
        .map_err(|e| lt_err("matmul", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_encoding_rounds_to_nearest_even_and_saturates() {
        // Every finite e4m3 value encodes to itself.
        for b in 0u8..=255 {
            if b & 0x7F == 0x7F {
                continue;
            }
            let v = W8Elem::Fp8E4M3.value(b);
            let got = f32_to_e4m3(v);
            // -0 and +0 are both zero.
            assert!(got == b || (v == 0.0 && got & 0x7F == 0), "{b:#04x} ({v}) -> {got:#04x}");
        }
        assert_eq!(f32_to_e4m3(1000.0), 0x7E); // saturates to 448
        assert_eq!(f32_to_e4m3(-1e9), 0xFE);
        assert_eq!(f32_to_e4m3(1.0625), 0x38); // halfway between 1 and 1.125: to even (1)
        assert_eq!(f32_to_e4m3(1.1875), 0x3A); // halfway between 1.125 and 1.25: to even (1.25)
        assert_eq!(f32_to_e4m3(2f32.powi(-10)), 0x00); // half the smallest subnormal: to even (0)
        assert_eq!(f32_to_e4m3(3.0 * 2f32.powi(-10)), 0x02); // 1.5 steps: to even (2)
        assert_eq!(f32_to_e4m3(0.0155), 0x08); // rounds up into the first normal
        assert_eq!(f32_to_e4m3(15.9), 0x58); // 15.9 -> 16 carries into the next exponent
    }

    #[test]
    fn groups_take_their_own_scales_and_block_scales_pad_rows_to_four() {
        let mut x = vec![0f32; 2 * GROUP];
        x[3] = 2.0;
        x[GROUP + 5] = -0.25;
        let (s, q) = quantize_groups_e4m3(&x);
        assert_eq!(s, vec![2.0 / 448.0, 0.25 / 448.0]);
        assert_eq!((q[3], q[GROUP + 5], q[0]), (0x7E, 0xFE, 0));
        // 300 rows × 640 inputs: 3 × 5 blocks, rows of 5 padded to 8.
        let values: Vec<f32> = (0..15).map(|v| v as f32 + 1.0).collect();
        let (padded, rows, ld) = block128_layout(&values, 300, 640);
        assert_eq!((rows, ld), (3, 8));
        assert_eq!(&padded[8..16], &[6.0, 7.0, 8.0, 9.0, 10.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_rescale_reads_sixteen_bytes_only_where_every_access_is_aligned() {
        // bf16 rows of 4096 at a 16-byte base, channel scales aligned: output and scales wide.
        assert_eq!(rescale_width(0x1000, 4096, 4096, 2, 0x2000, 1), 2);
        // Scales per block of columns (or misaligned): only the output is read wide.
        assert_eq!(rescale_width(0x1000, 4096, 4096, 2, 0x2000, 128), 1);
        assert_eq!(rescale_width(0x1000, 4096, 4096, 2, 0x2004, 1), 1);
        // A part starting mid-row at an odd column, a row stride or a width not of eight: narrow.
        assert_eq!(rescale_width(0x1002, 4096, 4096, 2, 0x2000, 1), 0);
        assert_eq!(rescale_width(0x1000, 4100, 4096, 2, 0x2000, 1), 0);
        assert_eq!(rescale_width(0x1000, 4096, 4092, 2, 0x2000, 1), 0);
        // f32 rows: a stride of 4 elements is 16 bytes.
        assert_eq!(rescale_width(0x1000, 4100, 4096, 4, 0x2000, 1), 2);
    }

    #[test]
    fn a_row_quantizes_to_its_own_scale() {
        let (s, q) = quantize_row_e4m3(&[0.5, -2.0, 0.0, 1.0]);
        assert_eq!(s, 2.0 / 448.0);
        assert_eq!(q[1], 0xFE); // -448
        assert_eq!(W8Elem::Fp8E4M3.value(q[0]), 112.0); // 0.5 / (2 / 448)
        let (s0, q0) = quantize_row_e4m3(&[0.0; 3]);
        assert_eq!((s0, q0), (1.0, vec![0, 0, 0]));
    }
}
