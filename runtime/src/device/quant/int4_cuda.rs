//! W4A16 on the GPU: a 4-bit group-quantized weight (AWQ, GPTQ; [`super::int4`]) kept packed in
//! device memory and multiplied without a dense copy of the model.
//!
//! Four kernels, chosen by the number of activation rows `m`:
//! - **tensor-core GEMV** (`m ≤ 16`, launches of 8 rows; f16 / bf16, groups of 128k;
//!   `int4_tc_gemv.rs`): the weight as the `A` operand of `mma`, a nibble made an operand by
//!   one `LOP3`; the decode path wherever it applies (`KILN_INT4_TC_GEMV=0` turns it off);
//! - **GEMV** (`m ≤` [`gemv_max_rows`], decode): each block of 128 threads computes 4 output
//!   features for every row of `x`; a thread reads four words (32 inputs of one group) of each
//!   of the 4 weight rows in 16-byte loads, so every weight byte is read once, unpacks the
//!   nibbles in registers (`0x4B000000 | q` is the float `2²³ + q`, so one OR and one subtract
//!   give `q` exactly) and accumulates `scale · Σ q·x + bias · Σ x` per group in f32;
//! - **tensor cores** (`m ≤` [`mma_max_rows`], f16 / bf16; `int4_mma.rs`): the packed
//!   words go to shared memory and are dequantized into `mma` fragments in registers;
//! - **dequantize + cuBLAS** (prefill, large batches): the weight is expanded into a per-device
//!   scratch matrix of the activation dtype and multiplied by the dense GEMM. The scratch is
//!   sized at upload (the largest int4 matrix of the device), never during a step, so a
//!   captured CUDA graph sees one fixed buffer. The tensor-core path borrows the same scratch
//!   for an act-order weight's gathered inputs and its split partial sums (and falls back to
//!   this path where they do not fit).
//!
//! Invariants: the device form is [`Int4Layout`] (groups of 32k consecutive stored inputs,
//! scale and bias per group, an optional input permutation for act-order); `cols % 32 == 0`;
//! the CPU path ([`Int4Matrix::matmul`]) is the reference every kernel is checked against
//! (`kiln-check-quant`); dequantization is exact in f32 for f16 scales.

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::quant::gpu_product::{checked, dequant_product, gemv_all, per_row_chunk, rows_aligned16, GpuPart};
use crate::device::quant::int4::{Int4Layout, Int4Matrix};
use crate::device::quant::int4_mma::mma_product;
use crate::device::quant::int4_tc_gemv as tc_gemv;
use crate::device::tensor::Tensor;
use crate::{DType, Device, GemmError};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Output features per GEMV block (the kernel's `KILN_I4_ROWS`).
const ROWS_PER_BLOCK: usize = 4;
/// Threads per GEMV block (the kernel's reduction assumes 4 warps).
const GEMV_THREADS: u32 = 128;
/// The row counts the GEMV is instantiated for; `m` rows run in the smallest `M ≥ m`.
const GEMV_M: [usize; 4] = [1, 2, 4, 8];

const BODY: &str = r#"
// ---- W4A16 (runtime/src/device/quant/int4_cuda.rs) ----
// words: [n, k/8] u32, nibble e of word j = stored input 8j+e; sb: [n, k/group] float2
// (scale, -zero*scale); perm: null, or stored input i is input perm[i] of x.
#define KILN_I4_ROWS 4

__device__ __forceinline__ float kiln_i4_nibble(unsigned w, int e) {
  // 0x4B000000 | q is the float 2^23 + q (q < 16): exact without an int-to-float conversion.
  return __uint_as_float(0x4B000000u | ((w >> (4 * e)) & 15u)) - 8388608.0f;
}
__device__ __forceinline__ unsigned kiln_i4_word(const uint4& w, int j) {
  return j == 0 ? w.x : j == 1 ? w.y : j == 2 ? w.z : w.w;
}
__device__ __forceinline__ void kiln_i4_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void kiln_i4_store(kiln_f16* p, float v) { *p = kiln_f32_to_f16(v); }
__device__ __forceinline__ void kiln_i4_store(kiln_bf16* p, float v) { *p = kiln_f32_to_bf16(v); }

// x[i .. i+8) (stored inputs) as floats: through perm, in one or two 16-byte loads when the
// host found x aligned (vec), else one element at a time.
__device__ __forceinline__ void kiln_i4_vec8(const float* x, float (&f)[8]) {
  float a[4], b[4];
  kiln_load<float, 4>(a, x);
  kiln_load<float, 4>(b, x + 4);
#pragma unroll
  for (int e = 0; e < 4; ++e) { f[e] = a[e]; f[e + 4] = b[e]; }
}
template <typename T>
__device__ __forceinline__ void kiln_i4_vec8(const T* x, float (&f)[8]) {
  T a[8];
  kiln_load<T, 8>(a, x);
#pragma unroll
  for (int e = 0; e < 8; ++e) f[e] = kiln_to_f32(a[e]);
}
template <typename T>
__device__ __forceinline__ void kiln_i4_x8(const T* __restrict__ x, const int* __restrict__ perm, int i, int vec,
                                           float (&f)[8]) {
  if (perm != nullptr) {
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = kiln_to_f32(x[perm[i + e]]);
  } else if (vec) {
    kiln_i4_vec8(x + i, f);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = kiln_to_f32(x[i + e]);
  }
}

// out[mi, row] = sum_i x[mi, i] * W[row, i] for rows row0 .. row0+4 of this block and mi < m <= M.
// 128 threads stride over the k/32 quads of inputs; partial sums meet in one block reduction.
template <typename T, int M>
__device__ __forceinline__ void kiln_i4_gemv(const T* __restrict__ x, long long ldx, int m,
                                             const unsigned* __restrict__ words, const float2* __restrict__ sb,
                                             const int* __restrict__ perm, T* __restrict__ out, long long ldo,
                                             int n, int k, int group, int vec) {
  const int row0 = blockIdx.x * KILN_I4_ROWS;
  const int quads = k >> 5, groups = k / group, wpr = k >> 3;
  float acc[KILN_I4_ROWS][M];
#pragma unroll
  for (int r = 0; r < KILN_I4_ROWS; ++r)
#pragma unroll
    for (int mi = 0; mi < M; ++mi) acc[r][mi] = 0.f;
  for (int v = threadIdx.x; v < quads; v += blockDim.x) {
    uint4 w[KILN_I4_ROWS];
    float2 s[KILN_I4_ROWS];
    const int g = (v << 5) / group;
#pragma unroll
    for (int r = 0; r < KILN_I4_ROWS; ++r) {
      const int row = row0 + r;
      if (row < n) {
        w[r] = __ldg(reinterpret_cast<const uint4*>(words + (long long)row * wpr) + v);
        s[r] = __ldg(sb + (long long)row * groups + g);
      } else {
        w[r] = make_uint4(0u, 0u, 0u, 0u);
        s[r] = make_float2(0.f, 0.f);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float q[KILN_I4_ROWS][8];
#pragma unroll
      for (int r = 0; r < KILN_I4_ROWS; ++r)
#pragma unroll
        for (int e = 0; e < 8; ++e) q[r][e] = kiln_i4_nibble(kiln_i4_word(w[r], j), e);
#pragma unroll
      for (int mi = 0; mi < M; ++mi) {
        if (mi >= m) break;
        float xf[8];
        kiln_i4_x8(x + (long long)mi * ldx, perm, (v << 5) + 8 * j, vec, xf);
        float sx = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) sx += xf[e];
#pragma unroll
        for (int r = 0; r < KILN_I4_ROWS; ++r) {
          float d = 0.f;
#pragma unroll
          for (int e = 0; e < 8; ++e) d = fmaf(q[r][e], xf[e], d);
          acc[r][mi] = fmaf(s[r].x, d, fmaf(s[r].y, sx, acc[r][mi]));
        }
      }
    }
  }
  __shared__ float red[4][KILN_I4_ROWS * M];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < KILN_I4_ROWS; ++r)
#pragma unroll
    for (int mi = 0; mi < M; ++mi) {
      float a = acc[r][mi];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
      if (lane == 0) red[warp][r * M + mi] = a;
    }
  __syncthreads();
  if (threadIdx.x < KILN_I4_ROWS * M) {
    const int r = threadIdx.x / M, mi = threadIdx.x % M, row = row0 + r;
    if (row < n && mi < m) {
      const float t = (red[0][threadIdx.x] + red[1][threadIdx.x]) + (red[2][threadIdx.x] + red[3][threadIdx.x]);
      kiln_i4_store(out + (long long)mi * ldo + row, t);
    }
  }
}

// The 8 values at p (aligned to 8 elements) in one or two 16-byte stores.
__device__ __forceinline__ void kiln_i4_store8(float* p, const float (&v)[8]) {
  const float a[4] = {v[0], v[1], v[2], v[3]}, b[4] = {v[4], v[5], v[6], v[7]};
  kiln_store<float, 4>(p, a);
  kiln_store<float, 4>(p + 4, b);
}
template <typename T>
__device__ __forceinline__ void kiln_i4_store8(T* p, const float (&v)[8]) {
  T h[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) kiln_i4_store(&h[e], v[e]);
  kiln_store<T, 8>(p, h);
}

// out[row, col] = W[row, col] in T: each thread expands one word (8 stored inputs), stored in
// one 16-byte access when the host found out's rows aligned and there is no permutation (vec),
// else element by element (act-order scatters the inputs).
template <typename T>
__device__ __forceinline__ void kiln_i4_dequant(const unsigned* __restrict__ words, const float2* __restrict__ sb,
                                                const int* __restrict__ perm, T* __restrict__ out, long long ldo,
                                                int n, int k, int group, int vec) {
  const long long wpr = k >> 3, total = (long long)n * wpr;
  const int groups = k / group;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (long long)gridDim.x * blockDim.x) {
    const long long row = t / wpr;
    const int j = (int)(t % wpr);
    const unsigned w = __ldg(words + t);
    const float2 s = __ldg(sb + row * groups + (8 * j) / group);
    float v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = fmaf(kiln_i4_nibble(w, e), s.x, s.y);
    if (vec) {
      kiln_i4_store8(out + row * ldo + 8 * j, v);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int i = 8 * j + e;
        kiln_i4_store(out + row * ldo + (perm != nullptr ? perm[i] : i), v[e]);
      }
    }
  }
}

#define KILN_I4_GEMV(NAME, T, M)                                                                             \
  extern "C" __global__ void __launch_bounds__(128) NAME(const T* x, long long ldx, int m, const unsigned* words, \
                                                         const float2* sb, const int* perm, T* out, long long ldo, \
                                                         int n, int k, int group, int vec) {                  \
    kiln_i4_gemv<T, M>(x, ldx, m, words, sb, perm, out, ldo, n, k, group, vec);                               \
  }
#define KILN_I4_DTYPE(SUFFIX, T)                                                                             \
  KILN_I4_GEMV(kiln_i4_gemv1_##SUFFIX, T, 1)                                                                 \
  KILN_I4_GEMV(kiln_i4_gemv2_##SUFFIX, T, 2)                                                                 \
  KILN_I4_GEMV(kiln_i4_gemv4_##SUFFIX, T, 4)                                                                 \
  KILN_I4_GEMV(kiln_i4_gemv8_##SUFFIX, T, 8)                                                                 \
  extern "C" __global__ void kiln_i4_dequant_##SUFFIX(const unsigned* words, const float2* sb, const int* perm, \
                                                      T* out, long long ldo, int n, int k, int group, int vec) { \
    kiln_i4_dequant<T>(words, sb, perm, out, ldo, n, k, group, vec);                                          \
  }
KILN_I4_DTYPE(f32, float)
KILN_I4_DTYPE(f16, kiln_f16)
KILN_I4_DTYPE(bf16, kiln_bf16)
"#;

/// The CUDA source of the W4A16 and W8A16 kernels (one module; for `kiln build` and the NVRTC
/// test).
pub fn source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        format!(
            "// kiln quantized-weight kernels: W4A16 (runtime/src/device/quant/int4_cuda.rs, int4_mma.rs, int4_tc_gemv.rs), W8A16 (w8_cuda.rs), 8-bit W8A8 (fp8_lt.rs)\n{}\n{}\n{BODY}\n{}\n{}\n{}\n{}",
            kiln_codegen::cuda::prelude::CORE,
            super::fp8_lt::E4M3_ENCODE,
            super::int4_mma::BODY,
            super::int4_tc_gemv::BODY,
            super::w8_cuda::BODY,
            super::fp8_lt::BODY
        )
    })
}

/// Every entry point of [`source`] (built once: the list is passed on every launch's module
/// lookup).
pub fn entries() -> &'static [String] {
    static ENTRIES: OnceLock<Vec<String>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        let mut e = vec![];
        for d in ["f32", "f16", "bf16"] {
            e.extend(GEMV_M.iter().map(|m| format!("kiln_i4_gemv{m}_{d}")));
            e.push(format!("kiln_i4_dequant_{d}"));
        }
        e.extend(super::int4_mma::entries());
        e.extend(super::int4_tc_gemv::entries());
        e.extend(super::w8_cuda::entries());
        e.extend(super::fp8_lt::entries());
        e
    })
}

/// The most activation rows the GEMV takes (its work grows with each row: on the H100 it beats
/// dense bf16 at 1–2 rows, ties at 4, and the tensor-core kernel is faster from 8); more go
/// to the tensor-core kernel. `KILN_INT4_GEMV_MAX_ROWS` overrides it (0: never the GEMV).
pub fn gemv_max_rows() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| env_usize("KILN_INT4_GEMV_MAX_ROWS", GEMV_M[2]))
}

/// A tuning variable's value, or `default` when it is unset or not a number (read once by
/// each caller's `OnceLock`: these are consulted on every product).
pub(super) fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether checkpoints' int4 weights load into these kernels on a GPU: yes (they passed
/// `kiln-check-int4` and the packed fixtures against the CPU on an H100, 2026-12-06), unless
/// `KILN_INT4_GPU=dense`, which dequantizes them at load (4× the memory; faster than the
/// kernels from ~32 rows a step on an H100). `synth:NAME+int4` and the check program use them
/// always.
pub fn kernels_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_INT4_GPU").map_or(true, |v| v != "dense"))
}

/// A device's dequantization scratch for one dtype: shared by every int4 weight of that device
/// (products run one after another on the device's one stream), grown at upload only.
pub(super) type Scratch = Arc<Mutex<Tensor>>;

/// A 4-bit group-quantized `[rows, cols]` weight in device memory (see the module header).
#[derive(Clone)]
pub struct Int4Cuda {
    rows: usize,
    cols: usize,
    group: usize,
    /// `[rows, cols / 8]` u32 words, stored as i32.
    words: Tensor,
    /// `[rows, 2 · groups]` f32: scale, bias per group.
    scale_bias: Tensor,
    /// `[cols]` i32 (act-order), else `None`.
    perm: Option<Tensor>,
    scratch: Scratch,
}

impl std::fmt::Debug for Int4Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let order = if self.perm.is_some() { ", act-order" } else { "" };
        write!(f, "Int4Cuda({}x{}, group {}{order})", self.rows, self.cols, self.group)
    }
}

impl Int4Cuda {
    /// Matrices stacked along rows (one projection, or a fused q/k/v) on the GPU `dev`,
    /// multiplied with activations of `dtype`; `Ok(None)` when the groups of one of them do not
    /// fit the kernels ([`Int4Matrix::gpu_layout`]), so the caller keeps the weight dense.
    /// Consecutive parts of one group size and input order come back as one matrix
    /// ([`Int4Layout::join_stackable`]), so each product launches once for them.
    pub fn upload(dev: &Device, dtype: DType, parts: &[Int4Matrix]) -> Result<Option<Vec<Int4Cuda>>, GemmError> {
        let Ok(layouts) = parts.iter().map(Int4Matrix::gpu_layout).collect::<Result<Vec<_>, _>>() else {
            return Ok(None);
        };
        let cols = parts.first().map_or(0, Int4Matrix::cols);
        Self::upload_layouts(dev, dtype, cols, parts.iter().map(Int4Matrix::rows).zip(layouts).collect()).map(Some)
    }

    /// [`Self::upload`] of parts already in the kernels' form (`(rows, layout)` of `cols`
    /// inputs each, in output order): a checkpoint's int4 matrices, or GGUF 4-bit blocks
    /// ([`Int4Layout::from_blocks`]).
    pub fn upload_layouts(
        dev: &Device,
        dtype: DType,
        cols: usize,
        parts: Vec<(usize, Int4Layout)>,
    ) -> Result<Vec<Int4Cuda>, GemmError> {
        let Device::Cuda(b) = dev else {
            return Err(GemmError::Unsupported { dtype, device: "the CPU for a GPU int4 weight".into() });
        };
        if !dtype.is_float() {
            return Err(GemmError::DTypes { a: dtype, b: dtype, out: dtype });
        }
        let bad = parts.iter().find(|(rows, l)| {
            l.group == 0
                || !cols.is_multiple_of(32)
                || !l.group.is_multiple_of(32)
                || !cols.is_multiple_of(l.group)
                || l.words.len() != rows * cols / 8
                || l.scale_bias.len() != rows * 2 * cols / l.group
                || l.perm.as_ref().is_some_and(|p| p.len() != cols)
        });
        if let Some((rows, l)) = bad {
            return Err(GemmError::Shape(format!("int4 layout of {rows}×{cols} in groups of {}", l.group)));
        }
        let total: usize = parts.iter().map(|(rows, _)| rows * cols).sum();
        let scratch = scratch_for(b, dev, dtype, total)?;
        // Parts that can share a launch are joined (a checkpoint's separate q, k and v).
        let joined = Int4Layout::join_stackable(parts);
        let mut out = Vec::with_capacity(joined.len());
        for (rows, Int4Layout { group, words, scale_bias, perm }) in joined {
            let words: Vec<i32> = words.into_iter().map(|x| x as i32).collect();
            let words = Tensor::from_host(dev, &words, rows, cols / 8)?;
            let scale_bias = Tensor::from_host(dev, &scale_bias, rows, 2 * cols / group)?;
            let perm = perm.map(|p| Tensor::vector(dev, &p)).transpose()?;
            out.push(Int4Cuda { rows, cols, group, words, scale_bias, perm, scratch: scratch.clone() });
        }
        Ok(out)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of device memory the weight holds (not counting the shared scratch).
    pub fn device_bytes(&self) -> usize {
        (self.words.len() + self.scale_bias.len() + self.perm.as_ref().map_or(0, Tensor::len)) * 4
    }

    /// Inputs per scale group.
    pub(super) fn group(&self) -> usize {
        self.group
    }

    /// Device addresses of the words, the scales and biases, and the permutation (0 if none).
    pub(super) fn ptrs(&self) -> (u64, u64, u64) {
        let p = |t: &Tensor| t.cuda_ptr().unwrap_or(0);
        (p(&self.words), p(&self.scale_bias), self.perm.as_ref().map_or(0, p))
    }

    /// `out = x · Wᵀ` by the GEMV, `x.rows() ≤ 8`; `out` may be a column view of a wider tensor.
    fn gemv(&self, b: &CudaBackend, x: &Tensor, out: &mut Tensor) -> Result<(), GemmError> {
        let m = x.rows();
        let mm = *GEMV_M.iter().find(|&&c| c >= m).ok_or_else(|| GemmError::Shape(format!("GEMV of {m} rows")))?;
        let module = b.module_with(source(), "kiln_int4", entries())?;
        let f = module.func(&format!("kiln_i4_gemv{mm}_{}", x.dtype().name()))?;
        let (words, sb, perm) = self.ptrs();
        let (xp, op) = (x.cuda_ptr().unwrap_or(0), out.cuda_ptr().unwrap_or(0));
        // 16-byte loads of 8 inputs need x's rows at 16-byte boundaries (32 inputs per quad).
        let vec = i32::from(rows_aligned16(x));
        let (ldx, ldo, m32) = (x.row_stride() as i64, out.row_stride() as i64, m as i32);
        let (n, k, group) = (self.rows as i32, self.cols as i32, self.group as i32);
        let mut l = b.stream().launch_builder(f);
        l.arg(&xp).arg(&ldx).arg(&m32).arg(&words).arg(&sb).arg(&perm);
        l.arg(&op).arg(&ldo).arg(&n).arg(&k).arg(&group).arg(&vec);
        let blocks = self.rows.div_ceil(ROWS_PER_BLOCK) as u32;
        // SAFETY: x covers m rows of k elements at ldx, out m rows of n at ldo (checked by
        // `linear_int4_cuda`); words, sb and perm are this weight's live device arrays of the
        // sizes the kernel reads for (n, k, group).
        let r = unsafe {
            l.launch(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (GEMV_THREADS, 1, 1), shared_mem_bytes: 0 })
        };
        drv("launching kiln_i4_gemv", r)?;
        Ok(())
    }

    /// The dense weight in `out` (`[rows, cols]`, a view with any row stride, dtype of `out`).
    pub fn dequantize_into(&self, out: &mut Tensor) -> Result<(), GemmError> {
        let Device::Cuda(b) = out.device().clone() else {
            return Err(GemmError::Shape("int4 dequantize into a CPU tensor".into()));
        };
        if out.rows() != self.rows || out.cols() != self.cols || !out.dtype().is_float() {
            let msg = format!("int4 {}x{} into {}x{} {}", self.rows, self.cols, out.rows(), out.cols(), out.dtype());
            return Err(GemmError::Shape(msg));
        }
        let module = b.module_with(source(), "kiln_int4", entries())?;
        let f = module.func(&format!("kiln_i4_dequant_{}", out.dtype().name()))?;
        let (words, sb, perm) = self.ptrs();
        let (op, ldo) = (out.cuda_ptr().unwrap_or(0), out.row_stride() as i64);
        let elt = out.dtype().size_bytes() as u64;
        let vec = i32::from(perm == 0 && op.is_multiple_of(16) && (ldo as u64 * elt).is_multiple_of(16));
        let (n, k, group) = (self.rows as i32, self.cols as i32, self.group as i32);
        let mut l = b.stream().launch_builder(f);
        l.arg(&words).arg(&sb).arg(&perm).arg(&op).arg(&ldo).arg(&n).arg(&k).arg(&group).arg(&vec);
        let blocks = (self.rows * self.cols / 8).div_ceil(256).clamp(1, 8 * b.sm_count().max(1) as usize) as u32;
        // SAFETY: out covers rows × cols at ldo (checked above); the arrays are this weight's.
        let r =
            unsafe { l.launch(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) };
        drv("launching kiln_i4_dequant", r)?;
        Ok(())
    }
}

/// The scratch of (`b`, `dtype`), grown to at least `elems` elements: one per device and dtype
/// while any weight holds it (a registry of weak references, so a dropped model frees it).
pub(super) fn scratch_for(
    b: &Arc<CudaBackend>,
    dev: &Device,
    dtype: DType,
    elems: usize,
) -> Result<Scratch, GemmError> {
    type Registry = Mutex<HashMap<(usize, DType), Weak<Mutex<Tensor>>>>;
    static ALL: OnceLock<Registry> = OnceLock::new();
    let mut all = ALL.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|_, w| w.strong_count() > 0);
    let key = (Arc::as_ptr(b) as usize, dtype);
    let s = match all.get(&key).and_then(Weak::upgrade) {
        Some(s) => s,
        None => {
            let s = Arc::new(Mutex::new(Tensor::uninit(dev, dtype, 1, elems)?));
            all.insert(key, Arc::downgrade(&s));
            return Ok(s);
        }
    };
    {
        let mut t = s.lock().unwrap_or_else(|e| e.into_inner());
        if t.cols() < elems {
            *t = Tensor::uninit(dev, dtype, 1, elems)?;
        }
    }
    Ok(s)
}

/// The most activation rows the tensor-core kernel takes (f16 / bf16); more go through
/// dequantize + cuBLAS, whose GEMM wins once the product is compute-bound (H100, 8B shapes:
/// the tensor cores ahead at 64 rows, behind at 128).
/// `KILN_INT4_MMA_MAX_ROWS` overrides it (0 never uses the tensor-core kernel).
pub fn mma_max_rows() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| env_usize("KILN_INT4_MMA_MAX_ROWS", 64))
}

/// Which kernel multiplies an int4 weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int4Path {
    /// The tensor-core GEMV up to 16 rows (`KILN_INT4_TC_MAX_ROWS`) where it applies, else the
    /// GEMV up to [`gemv_max_rows`] rows; the tensor-core kernel up to [`mma_max_rows`] (f16 /
    /// bf16), dequantize + cuBLAS above (and wherever the others do not apply).
    Auto,
    /// The GEMV, 8 rows of `x` per launch.
    Gemv,
    /// The tensor-core GEMV (`int4_tc_gemv`), 8 rows of `x` per launch, falling back to the
    /// GEMV where it does not apply (f32, groups of 32 or 64, unaligned rows).
    TcGemv,
    /// The tensor-core kernel (`int4_mma`), falling back to dequantize + cuBLAS where it does
    /// not apply (f32 activations, unaligned rows, a GPU before sm_80).
    Mma,
    /// Dequantize into the scratch, then cuBLAS.
    Dequant,
}

/// `out = x · Wᵀ` for int4 weights stacked along rows, each part into its own columns of
/// `out`: a GEMV for few rows (on tensor cores where it applies), the tensor-core GEMM for a
/// few dozen, else each part dequantized into the scratch and one dense GEMM.
pub fn linear_int4_cuda(x: &Tensor, parts: &[Int4Cuda], out: &mut Tensor) -> Result<(), GemmError> {
    linear_int4_cuda_by(x, parts, out, Int4Path::Auto)
}

/// [`linear_int4_cuda`] through a chosen kernel (for the check program's comparisons).
pub fn linear_int4_cuda_by(x: &Tensor, parts: &[Int4Cuda], out: &mut Tensor, path: Int4Path) -> Result<(), GemmError> {
    let Some(b) = checked(x, parts, out, "int4")? else { return Ok(()) };
    let (m, n) = (x.rows(), out.cols());
    let tc = path == Int4Path::TcGemv
        || (path == Int4Path::Auto
            && m <= tc_gemv::max_rows()
            && tc_gemv::enabled()
            && parts.iter().any(|w| tc_gemv::applies(&b, x, w)));
    if tc {
        let scratch = parts[0].scratch.lock().unwrap_or_else(|e| e.into_inner());
        let sp = (scratch.cuda_ptr().unwrap_or(0), scratch.len() * scratch.dtype().size_bytes());
        return per_row_chunk(x, parts, out, tc_gemv::MAX_ROWS, |w, xs, o| {
            if !tc_gemv::tc_gemv_product(&b, xs, w, o, sp)? {
                w.gemv(&b, xs, o)?;
            }
            Ok(())
        });
    }
    let gemv = path == Int4Path::Gemv || (path == Int4Path::Auto && m <= gemv_max_rows());
    let mma = path == Int4Path::Mma || (path == Int4Path::Auto && !gemv && m <= mma_max_rows());
    if gemv {
        return gemv_all(&b, x, parts, out, GEMV_M[3]);
    }
    let mut at = 0;
    if mma {
        let scratch = parts[0].scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (sp, sbytes) = (scratch.cuda_ptr().unwrap_or(0), scratch.len() * scratch.dtype().size_bytes());
        let mut done = 0;
        for w in parts {
            let mut o = out.view_cols(at, w.rows)?;
            if !mma_product(&b, x, w, &mut o, sp, sbytes)? {
                break;
            }
            at += w.rows;
            done += 1;
        }
        if done == parts.len() {
            return Ok(());
        }
        // The rest (every part, as they share x and the scratch) through dequantize + cuBLAS.
        drop(scratch);
        let mut rest = out.view_cols(at, n - at)?;
        return dequant_product(x, &parts[done..], &mut rest);
    }
    dequant_product(x, parts, out)
}

impl GpuPart for Int4Cuda {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn gemv(&self, b: &CudaBackend, x: &Tensor, out: &mut Tensor) -> Result<(), GemmError> {
        Int4Cuda::gemv(self, b, x, out)
    }
    fn dequantize_into(&self, out: &mut Tensor) -> Result<(), GemmError> {
        Int4Cuda::dequantize_into(self, out)
    }
    fn scratch(&self) -> &Scratch {
        &self.scratch
    }
}
