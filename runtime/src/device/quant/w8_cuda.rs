//! 8-bit weights on the GPU: a weight with block scales ([`W8Matrix`]: FP8 E4M3 or symmetric
//! INT8) kept in 8 bits in device memory — half the bytes of bf16 — and multiplied without a
//! dense copy of the model, as W8A16 (activations as they are) or, for a weight uploaded as
//! W8A8 (`act_quant::w8a8_act`), as W8A8 at every batch size (activations quantized by
//! `fp8_lt`'s kernels: to e4m3 per row, or per 128 inputs for 128×128 block scales, for an FP8
//! weight; to int8 per row for an INT8 weight scaled per channel or tensor — SmoothQuant).
//!
//! The paths, chosen by the number of activation rows `m` ([`gemv_max_rows`]: up to 8 rows for
//! W8A16; none for W8A8 where the tensor cores run, all where they do not):
//! - **GEMV** (decode): each block of 128 threads computes 4 output features for every row of
//!   `x`; a thread reads 16 bytes (16 inputs) of each of the 4 weight rows at a time, so every
//!   weight byte is read once, widens them in registers and accumulates `scale · Σ q·x` per 8
//!   inputs in f32. Its W8A8 instance reads the quantized rows (e4m3 or int8 bytes, widened the
//!   same way as the weight's; int8 · int8 sums of 8 are exact in f32) and their scales instead
//!   of `x`;
//! - **8-bit tensor cores** (W8A8; `fp8_lt`): cuBLASLt (FP8 on sm_89+, scales applied by it;
//!   INT8 on sm_80+, scales applied by an epilogue kernel); where it has no algorithm, the
//!   W8A8 GEMV 8 rows at a time;
//! - **dequantize + cuBLAS** (W8A16 batches): the weight is expanded into the device's
//!   scratch matrix of the activation dtype (shared with the int4 weights, sized at upload)
//!   and multiplied by the dense GEMM.
//!
//! Widening without a conversion unit: an e4m3 byte `s eeee mmm` moved into the top byte of a
//! half and shifted right by one below its sign is the f16 `s 0eeee mmm0000000`, whose value is
//! exactly the e4m3 value / 256 (subnormals included: f16 keeps them), so the device scales of
//! an FP8 weight are the checkpoint's × 256; the f16 then widens to f32 exactly. An int8 byte,
//! sign-extended by `prmt`, is added to the integer bits of 1.5 · 2²³ and the float
//! subtracted: exact. (The e4m3 NaN byte `0x7F` widens to 480, not NaN; no checkpoint
//! stores it.)
//!
//! Invariants: `cols % 16 == 0` and a scale block spans whole 16-input chunks (`bi % 16 == 0`
//! or one block over all inputs) — [`W8Cuda::upload`] refuses other layouts so the caller
//! keeps them dense; [`W8Matrix::dequantize`] is the reference every kernel is checked against
//! (`kiln-check-w8`).

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::quant::act_quant::{w8a8_act, ActQuant};
use crate::device::quant::fp8_lt::{self, lt_for, ActIn, ActScale, Lt, W8a8Part, W8a8Scales};
use crate::device::quant::gpu_product::{checked, dequant_product, gemv_all, rows_aligned16, GpuPart};
use crate::device::quant::int4_cuda::{scratch_for, Scratch};
use crate::device::quant::w8::{W8Elem, W8Matrix};
use crate::device::tensor::Tensor;
use crate::{DType, Device, GemmError};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::{Arc, OnceLock};

/// Output features per GEMV block (the kernel's `KILN_W8_ROWS`).
const ROWS_PER_BLOCK: usize = 4;
/// Threads per GEMV block (the kernel's reduction assumes 4 warps).
const GEMV_THREADS: u32 = 128;
/// The row counts the GEMV is instantiated for; `m` rows run in the smallest `M ≥ m`.
const GEMV_M: [usize; 4] = [1, 2, 4, 8];

pub(super) const BODY: &str = r#"
// ---- W8A16 (runtime/src/device/quant/w8_cuda.rs) ----
// q: [n, k] bytes, rows of k (k % 16 == 0); scales: [ceil(n / bo), sc] f32 (an FP8 weight's
// are x256: its bytes widen to value / 256); a scale block spans whole 16-input chunks.
#define KILN_W8_ROWS 4

__device__ __forceinline__ unsigned kiln_w8_prmt(unsigned a, unsigned sel) {
  unsigned r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(0u), "r"(sel));
  return r;
}
// Two e4m3 bytes (placed by prmt in the top bytes of the two halves of t) to floats / 256.
__device__ __forceinline__ void kiln_w8_fp8x2(unsigned t, float& lo, float& hi) {
  const unsigned h = (t & 0x80008000u) | ((t >> 1) & 0x3F803F80u);
  kiln_f16 a, b;
  a.bits = (unsigned short)(h & 0xFFFFu);
  b.bits = (unsigned short)(h >> 16);
  lo = kiln_to_f32(a);
  hi = kiln_to_f32(b);
}
// The 4 bytes of w (byte e = input e) as floats: ELEM 0 e4m3 (/ 256), 1 int8.
template <int ELEM>
__device__ __forceinline__ void kiln_w8_word(unsigned w, float* f) {
  if (ELEM == 0) {
    kiln_w8_fp8x2(kiln_w8_prmt(w, 0x1404u), f[0], f[1]);
    kiln_w8_fp8x2(kiln_w8_prmt(w, 0x3424u), f[2], f[3]);
  } else {
    // Byte e sign-extended (selector nibbles 8|e replicate its sign), then 1.5*2^23 + q - 1.5*2^23.
    f[0] = __int_as_float(0x4B400000 + (int)kiln_w8_prmt(w, 0x8880u)) - 12582912.0f;
    f[1] = __int_as_float(0x4B400000 + (int)kiln_w8_prmt(w, 0x9991u)) - 12582912.0f;
    f[2] = __int_as_float(0x4B400000 + (int)kiln_w8_prmt(w, 0xAAA2u)) - 12582912.0f;
    f[3] = __int_as_float(0x4B400000 + (int)kiln_w8_prmt(w, 0xBBB3u)) - 12582912.0f;
  }
}

// out[mi, row] = sum_i x[mi, i] * W[row, i] for rows row0 .. row0+4 of this block and mi < m <= M.
// 128 threads stride over the k/16 chunks of inputs; partial sums meet in one block reduction.
// AQ (W8A8): x is 8-bit codes of the weight's ELEM (qx, rows of ldx) whose input i of row mi has
// the scale sx[(i / gsize) * ldsx + mi] (fp8_lt's quantization of the activations), instead of T
// values.
template <typename T, int M, int ELEM, int AQ>
__device__ __forceinline__ void kiln_w8_gemv(const T* __restrict__ x, const unsigned char* __restrict__ qx,
                                             const float* __restrict__ sx, int gsize, int ldsx, long long ldx, int m,
                                             const unsigned char* __restrict__ q, const float* __restrict__ scales,
                                             int bo, int bi, int sc, T* __restrict__ out, long long ldo, int n, int k,
                                             int vec) {
  const int row0 = blockIdx.x * KILN_W8_ROWS;
  const int chunks = k >> 4;
  float acc[KILN_W8_ROWS][M];
#pragma unroll
  for (int r = 0; r < KILN_W8_ROWS; ++r)
#pragma unroll
    for (int mi = 0; mi < M; ++mi) acc[r][mi] = 0.f;
  for (int v = threadIdx.x; v < chunks; v += blockDim.x) {
    uint4 w[KILN_W8_ROWS];
    float s[KILN_W8_ROWS];
#pragma unroll
    for (int r = 0; r < KILN_W8_ROWS; ++r) {
      const int row = row0 + r;
      if (row < n) {
        w[r] = __ldg(reinterpret_cast<const uint4*>(q + (long long)row * k) + v);
        s[r] = __ldg(scales + (long long)(row / bo) * sc + (v << 4) / bi);
      } else {
        w[r] = make_uint4(0u, 0u, 0u, 0u);
        s[r] = 0.f;
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float wf[KILN_W8_ROWS][8];
#pragma unroll
      for (int r = 0; r < KILN_W8_ROWS; ++r) {
        kiln_w8_word<ELEM>(h == 0 ? w[r].x : w[r].z, wf[r]);
        kiln_w8_word<ELEM>(h == 0 ? w[r].y : w[r].w, wf[r] + 4);
      }
#pragma unroll
      for (int mi = 0; mi < M; ++mi) {
        if (mi >= m) break;
        float xf[8], sxv = 1.f;
        if (AQ) {
          // Codes widen as the weight's do (e4m3 to value / 256, int8 exactly).
          const uint2 b = __ldg(reinterpret_cast<const uint2*>(qx + (long long)mi * ldx + (v << 4) + 8 * h));
          kiln_w8_word<ELEM>(b.x, xf);
          kiln_w8_word<ELEM>(b.y, xf + 4);
          sxv = __ldg(sx + (long long)((v << 4) / gsize) * ldsx + mi) * (ELEM == 0 ? 256.0f : 1.0f);
        } else {
          kiln_i4_x8(x + (long long)mi * ldx, (const int*)nullptr, (v << 4) + 8 * h, vec, xf);
        }
#pragma unroll
        for (int r = 0; r < KILN_W8_ROWS; ++r) {
          float d = 0.f;
#pragma unroll
          for (int e = 0; e < 8; ++e) d = fmaf(wf[r][e], xf[e], d);
          acc[r][mi] = fmaf(AQ ? s[r] * sxv : s[r], d, acc[r][mi]);
        }
      }
    }
  }
  __shared__ float red[4][KILN_W8_ROWS * M];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < KILN_W8_ROWS; ++r)
#pragma unroll
    for (int mi = 0; mi < M; ++mi) {
      float a = acc[r][mi];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
      if (lane == 0) red[warp][r * M + mi] = a;
    }
  __syncthreads();
  if (threadIdx.x < KILN_W8_ROWS * M) {
    const int r = threadIdx.x / M, mi = threadIdx.x % M, row = row0 + r;
    if (row < n && mi < m) {
      const float t = (red[0][threadIdx.x] + red[1][threadIdx.x]) + (red[2][threadIdx.x] + red[3][threadIdx.x]);
      kiln_i4_store(out + (long long)mi * ldo + row, t);
    }
  }
}

// out[row, col] = W[row, col] in T: each thread expands one 16-byte chunk, stored in 16-byte
// accesses when the host found out's rows aligned (vec), else element by element.
template <typename T, int ELEM>
__device__ __forceinline__ void kiln_w8_dequant(const unsigned char* __restrict__ q, const float* __restrict__ scales,
                                                int bo, int bi, int sc, T* __restrict__ out, long long ldo, int n,
                                                int k, int vec) {
  const long long cpr = k >> 4, total = (long long)n * cpr;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (long long)gridDim.x * blockDim.x) {
    const long long row = t / cpr;
    const int v = (int)(t % cpr);
    const uint4 w = __ldg(reinterpret_cast<const uint4*>(q + row * k) + v);
    const float s = __ldg(scales + (row / bo) * sc + (v << 4) / bi);
    float f[16];
    kiln_w8_word<ELEM>(w.x, f);
    kiln_w8_word<ELEM>(w.y, f + 4);
    kiln_w8_word<ELEM>(w.z, f + 8);
    kiln_w8_word<ELEM>(w.w, f + 12);
#pragma unroll
    for (int e = 0; e < 16; ++e) f[e] *= s;
    T* dst = out + row * ldo + 16 * v;
    if (vec) {
      float a[8], b[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) { a[e] = f[e]; b[e] = f[e + 8]; }
      kiln_i4_store8(dst, a);
      kiln_i4_store8(dst + 8, b);
    } else {
#pragma unroll
      for (int e = 0; e < 16; ++e) kiln_i4_store(dst + e, f[e]);
    }
  }
}

#define KILN_W8_GEMV(NAME, T, M, ELEM)                                                                       \
  extern "C" __global__ void __launch_bounds__(128) NAME(const T* x, long long ldx, int m, const unsigned char* q, \
                                                         const float* scales, int bo, int bi, int sc, T* out,  \
                                                         long long ldo, int n, int k, int vec) {               \
    kiln_w8_gemv<T, M, ELEM, 0>(x, nullptr, nullptr, 1, 0, ldx, m, q, scales, bo, bi, sc, out, ldo, n, k, vec);  \
  }
// W8A8: 8-bit weights times activations quantized to the same ELEM (NAME_aq).
#define KILN_W8_GEMV_AQ(NAME, T, M, ELEM)                                                                    \
  extern "C" __global__ void __launch_bounds__(128) NAME(const unsigned char* qx, const float* sx, int gsize,  \
                                                         int ldsx, long long ldx, int m, const unsigned char* q, \
                                                         const float* scales, int bo, int bi, int sc, T* out, \
                                                         long long ldo, int n, int k) {                       \
    kiln_w8_gemv<T, M, ELEM, 1>(nullptr, qx, sx, gsize, ldsx, ldx, m, q, scales, bo, bi, sc, out, ldo, n, k, 0);  \
  }
#define KILN_W8_ELEM(E, ELEM, SUFFIX, T)                                                                     \
  KILN_W8_GEMV(kiln_w8_gemv1_##E##_##SUFFIX, T, 1, ELEM)                                                     \
  KILN_W8_GEMV(kiln_w8_gemv2_##E##_##SUFFIX, T, 2, ELEM)                                                     \
  KILN_W8_GEMV(kiln_w8_gemv4_##E##_##SUFFIX, T, 4, ELEM)                                                     \
  KILN_W8_GEMV(kiln_w8_gemv8_##E##_##SUFFIX, T, 8, ELEM)                                                     \
  KILN_W8_GEMV_AQ(kiln_w8_gemv1_##E##_##SUFFIX##_aq, T, 1, ELEM)                                             \
  KILN_W8_GEMV_AQ(kiln_w8_gemv2_##E##_##SUFFIX##_aq, T, 2, ELEM)                                             \
  KILN_W8_GEMV_AQ(kiln_w8_gemv4_##E##_##SUFFIX##_aq, T, 4, ELEM)                                             \
  KILN_W8_GEMV_AQ(kiln_w8_gemv8_##E##_##SUFFIX##_aq, T, 8, ELEM)                                             \
  extern "C" __global__ void kiln_w8_dequant_##E##_##SUFFIX(const unsigned char* q, const float* scales, int bo, \
                                                            int bi, int sc, T* out, long long ldo, int n, int k, \
                                                            int vec) {                                         \
    kiln_w8_dequant<T, ELEM>(q, scales, bo, bi, sc, out, ldo, n, k, vec);                                     \
  }
#define KILN_W8_DTYPE(SUFFIX, T)                                                                             \
  KILN_W8_ELEM(fp8e4m3, 0, SUFFIX, T)                                                                        \
  KILN_W8_ELEM(int8, 1, SUFFIX, T)
KILN_W8_DTYPE(f32, float)
KILN_W8_DTYPE(f16, kiln_f16)
KILN_W8_DTYPE(bf16, kiln_bf16)
"#;

/// The entry points of [`BODY`].
pub(super) fn entries() -> Vec<String> {
    let mut e = vec![];
    for d in ["f32", "f16", "bf16"] {
        for el in [W8Elem::Fp8E4M3, W8Elem::Int8] {
            e.extend(GEMV_M.iter().map(|m| format!("kiln_w8_gemv{m}_{}_{d}", el.name())));
            e.extend(GEMV_M.iter().map(|m| format!("kiln_w8_gemv{m}_{}_{d}_aq", el.name())));
            e.push(format!("kiln_w8_dequant_{}_{d}", el.name()));
        }
    }
    e
}

/// The most activation rows the GEMV takes: for a W8A16 weight 8 (on the H100, 8B shapes, a
/// layer's four projections: ahead of dequantize + cuBLAS at 8 rows, behind at 16); for a
/// W8A8 weight with the FP8 tensor cores none (cuBLASLt with its scales applied is ahead of
/// the W8A8 GEMV from one row: 116 µs against 139 for a layer's four projections at one row),
/// without them all (the W8A8 GEMV is then the only W8A8 path). `KILN_W8_GEMV_MAX_ROWS`
/// overrides the first two.
pub fn gemv_max_rows(tensor_cores: bool) -> usize {
    static MAX: OnceLock<Option<usize>> = OnceLock::new();
    let set = *MAX.get_or_init(|| std::env::var("KILN_W8_GEMV_MAX_ROWS").ok().and_then(|v| v.parse().ok()));
    set.unwrap_or(if tensor_cores { 0 } else { GEMV_M[3] })
}

/// How a checkpoint's 8-bit weights multiply (`KILN_W8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum W8Policy {
    /// Unset: dequantized to the compute dtype at load (W8A16 arithmetic, dense memory).
    Dense,
    /// `kernels`: kept 8-bit on a GPU, multiplied as W8A16 (the GEMV, dequantize + cuBLAS
    /// above 8 rows) — the CPU's arithmetic; half the weight memory, 1.3× dense bf16 for one
    /// sequence, 0.4–0.5× from 16 sequences a step.
    Kernels,
    /// `w8a8`: W8A8 wherever a weight takes it (`act_quant::w8a8_act`: FP8 with scales per
    /// channel, per tensor or in 128×128 blocks, as FP8-dynamic checkpoints intend; INT8 per
    /// channel or tensor, as SmoothQuant's) — the activations quantized per token (e4m3 per 128
    /// inputs for block scales) at every batch size: on a GPU kept 8-bit, the 8-bit tensor
    /// cores (the W8A8 GEMV without them); on the CPU the twin (`Weight::W8a8Cpu`), so the two
    /// devices compute the same thing.
    W8a8,
}

/// The policy `KILN_W8` sets. Not 8-bit by default: W8A16 batches are slower than dense, and
/// W8A8 is not the dequantize-then-multiply model a checkpoint's float reference computes
/// (the activations lose bits). `synth:NAME+fp8` and the check program take W8A8 always.
pub fn policy() -> W8Policy {
    static P: OnceLock<W8Policy> = OnceLock::new();
    *P.get_or_init(|| match std::env::var("KILN_W8").as_deref() {
        Ok("kernels") => W8Policy::Kernels,
        Ok("w8a8") => W8Policy::W8a8,
        _ => W8Policy::Dense,
    })
}

/// An 8-bit `[rows, cols]` weight in device memory (see the module header).
#[derive(Clone)]
pub struct W8Cuda {
    rows: usize,
    cols: usize,
    elem: W8Elem,
    /// `[rows, cols / 4]`: the bytes, four to an i32.
    bytes: Tensor,
    /// `[⌈rows / bo⌉, sc]` f32, × 256 for FP8.
    scales: Tensor,
    /// `[bo, bi]`, with `bi` at most `cols`.
    block: [usize; 2],
    scratch: Scratch,
    /// W8A8 (`Some`: every path quantizes the activations so; see [`w8a8_act`]), when the
    /// upload allowed it and the stacked weight takes it.
    act: Option<ActQuant>,
    /// cuBLASLt for the 8-bit tensor cores (`fp8_lt`): W8A8 weights on a GPU that has them.
    lt: Option<Arc<Lt>>,
    /// An FP8 weight's scales as cuBLASLt reads them, with `lt`: for [`ActScale::Row`] the
    /// `[rows]` values, for [`ActScale::Group`] `fp8_lt::block128_layout`. (INT8's epilogue
    /// reads `scales`.)
    lt_scales: Option<Tensor>,
}

impl std::fmt::Debug for W8Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [bo, bi] = self.block;
        write!(f, "W8Cuda({} {}x{}, scale blocks {bo}x{bi})", self.elem.name(), self.rows, self.cols)
    }
}

impl W8Cuda {
    /// Whether the kernels take `w`'s layout (see the module invariants).
    pub fn fits(w: &W8Matrix) -> bool {
        let bi = w.block()[1];
        w.cols().is_multiple_of(16) && (bi >= w.cols() || bi.is_multiple_of(16))
    }

    /// Matrices stacked along rows (one projection, or a fused q/k/v, each multiplied into its
    /// own columns; consecutive ones joined where [`W8Matrix::join_stackable`] can) on the GPU
    /// `dev`, multiplied with activations of `dtype`; `Ok(None)` when one of them does not fit
    /// the kernels, so the caller keeps the weight dense.
    /// `w8a8`: batches of an FP8 weight may take the FP8 tensor cores (activations quantized;
    /// see [`W8Policy::W8a8`]), else they stay W8A16.
    pub fn upload(
        dev: &Device,
        dtype: DType,
        parts: &[W8Matrix],
        w8a8: bool,
    ) -> Result<Option<Vec<W8Cuda>>, GemmError> {
        let Device::Cuda(b) = dev else {
            return Err(GemmError::Unsupported { dtype, device: "the CPU for a GPU 8-bit weight".into() });
        };
        if !dtype.is_float() {
            return Err(GemmError::DTypes { a: dtype, b: dtype, out: dtype });
        }
        if parts.is_empty() || !parts.iter().all(W8Cuda::fits) {
            return Ok(None);
        }
        // One launch for parts that can share it (a checkpoint's separate q, k and v).
        let joined = W8Matrix::join_stackable(parts);
        let parts = &joined[..];
        let total: usize = parts.iter().map(|w| w.rows() * w.cols()).sum();
        let scratch = scratch_for(b, dev, dtype, total)?;
        let act = if w8a8 { w8a8_act(parts) } else { None };
        let lt = if act.is_some() { lt_for(b, dev, parts[0].elem())? } else { None };
        let mut out = Vec::with_capacity(parts.len());
        for w in parts {
            let (rows, cols) = (w.rows(), w.cols());
            let words: Vec<i32> =
                w.bytes().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let bytes = Tensor::from_host(dev, &words, rows, cols / 4)?;
            let mult = if w.elem() == W8Elem::Fp8E4M3 { 256.0 } else { 1.0 };
            let scales: Vec<f32> = w.scales().iter().map(|s| s * mult).collect();
            let [bo, bi] = w.block();
            let scales = Tensor::from_host(dev, &scales, rows.div_ceil(bo), w.scale_cols())?;
            let block = [bo, bi.min(cols)];
            let lt_scales = match (lt.is_some(), act) {
                (true, Some(ActQuant::E4m3(a))) => Some(lt_scales(dev, w, a)?),
                _ => None,
            };
            let (elem, scratch, lt) = (w.elem(), scratch.clone(), lt.clone());
            out.push(W8Cuda { rows, cols, elem, bytes, scales, block, scratch, act, lt, lt_scales });
        }
        Ok(Some(out))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of device memory the weight holds (not counting the shared scratch).
    pub fn device_bytes(&self) -> usize {
        (self.bytes.len() + self.scales.len() + self.lt_scales.as_ref().map_or(0, Tensor::len)) * 4
    }

    /// The kernel arguments shared by both kernels: bytes, scales, bo, bi, scale columns.
    fn args(&self) -> (u64, u64, i32, i32, i32) {
        let p = |t: &Tensor| t.cuda_ptr().unwrap_or(0);
        let [bo, bi] = self.block;
        (p(&self.bytes), p(&self.scales), bo as i32, bi as i32, self.scales.cols() as i32)
    }

    /// `out = x · Wᵀ` by the GEMV, `x.rows() ≤ 8`; `out` may be a column view of a wider tensor.
    fn gemv(&self, b: &CudaBackend, x: &Tensor, out: &mut Tensor) -> Result<(), GemmError> {
        let m = x.rows();
        let mm = *GEMV_M.iter().find(|&&c| c >= m).ok_or_else(|| GemmError::Shape(format!("GEMV of {m} rows")))?;
        let module = b.module_with(super::int4_cuda::source(), "kiln_int4", super::int4_cuda::entries())?;
        let f = module.func(&format!("kiln_w8_gemv{mm}_{}_{}", self.elem.name(), x.dtype().name()))?;
        let (q, sp, bo, bi, sc) = self.args();
        let (xp, op) = (x.cuda_ptr().unwrap_or(0), out.cuda_ptr().unwrap_or(0));
        // 16-byte loads of 8 inputs need x's rows at 16-byte boundaries.
        let vec = i32::from(rows_aligned16(x));
        let (ldx, ldo, m32) = (x.row_stride() as i64, out.row_stride() as i64, m as i32);
        let (n, k) = (self.rows as i32, self.cols as i32);
        let mut l = b.stream().launch_builder(f);
        l.arg(&xp).arg(&ldx).arg(&m32).arg(&q).arg(&sp).arg(&bo).arg(&bi).arg(&sc);
        l.arg(&op).arg(&ldo).arg(&n).arg(&k).arg(&vec);
        let blocks = self.rows.div_ceil(ROWS_PER_BLOCK) as u32;
        // SAFETY: x covers m rows of k elements at ldx, out m rows of n at ldo (checked by
        // `linear_w8_cuda`); the bytes and scales are this weight's live device arrays of the
        // sizes the kernel reads for (n, k, bo, bi, sc).
        let r = unsafe {
            l.launch(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (GEMV_THREADS, 1, 1), shared_mem_bytes: 0 })
        };
        drv("launching kiln_w8_gemv", r)?;
        Ok(())
    }

    /// `out = qx · Wᵀ` by the W8A8 GEMV: `qx` the device address of `m ≤ 8` rows of `cols`
    /// codes of the weight's element type, `sx` their scales in `self.act`'s layout
    /// (`fp8_lt::quantize_into`).
    fn gemv_w8a8(&self, b: &CudaBackend, (qx, sx, m): (u64, u64, usize), out: &mut Tensor) -> Result<(), GemmError> {
        let mm = *GEMV_M.iter().find(|&&c| c >= m).ok_or_else(|| GemmError::Shape(format!("GEMV of {m} rows")))?;
        let module = b.module_with(super::int4_cuda::source(), "kiln_int4", super::int4_cuda::entries())?;
        let f = module.func(&format!("kiln_w8_gemv{mm}_{}_{}_aq", self.elem.name(), out.dtype().name()))?;
        let (q, sp, bo, bi, sc) = self.args();
        let gsize = if self.act == Some(ActQuant::E4m3(ActScale::Group)) { fp8_lt::GROUP } else { self.cols } as i32;
        let (ldsx, ldx, m32) = (m as i32, self.cols as i64, m as i32);
        let (op, ldo, n, k) =
            (out.cuda_ptr().unwrap_or(0), out.row_stride() as i64, self.rows as i32, self.cols as i32);
        let mut l = b.stream().launch_builder(f);
        l.arg(&qx).arg(&sx).arg(&gsize).arg(&ldsx).arg(&ldx).arg(&m32).arg(&q).arg(&sp).arg(&bo).arg(&bi).arg(&sc);
        l.arg(&op).arg(&ldo).arg(&n).arg(&k);
        let blocks = self.rows.div_ceil(ROWS_PER_BLOCK) as u32;
        // SAFETY: qx holds m rows of k bytes and sx their scales (the caller's quantization);
        // out covers m rows of n at ldo; the bytes and scales are this weight's.
        let r = unsafe {
            l.launch(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (GEMV_THREADS, 1, 1), shared_mem_bytes: 0 })
        };
        drv("launching kiln_w8_gemv_aq", r)?;
        Ok(())
    }

    /// The dense weight in `out` (`[rows, cols]`, a view with any row stride, dtype of `out`).
    pub fn dequantize_into(&self, out: &mut Tensor) -> Result<(), GemmError> {
        let Device::Cuda(b) = out.device().clone() else {
            return Err(GemmError::Shape("8-bit dequantize into a CPU tensor".into()));
        };
        if out.rows() != self.rows || out.cols() != self.cols || !out.dtype().is_float() {
            let msg = format!("8-bit {}x{} into {}x{} {}", self.rows, self.cols, out.rows(), out.cols(), out.dtype());
            return Err(GemmError::Shape(msg));
        }
        let module = b.module_with(super::int4_cuda::source(), "kiln_int4", super::int4_cuda::entries())?;
        let f = module.func(&format!("kiln_w8_dequant_{}_{}", self.elem.name(), out.dtype().name()))?;
        let (q, sp, bo, bi, sc) = self.args();
        let (op, ldo) = (out.cuda_ptr().unwrap_or(0), out.row_stride() as i64);
        let elt = out.dtype().size_bytes() as u64;
        let vec = i32::from(op.is_multiple_of(16) && (ldo as u64 * elt).is_multiple_of(16));
        let (n, k) = (self.rows as i32, self.cols as i32);
        let mut l = b.stream().launch_builder(f);
        l.arg(&q).arg(&sp).arg(&bo).arg(&bi).arg(&sc).arg(&op).arg(&ldo).arg(&n).arg(&k).arg(&vec);
        let blocks = (self.rows * self.cols / 16).div_ceil(256).clamp(1, 8 * b.sm_count().max(1) as usize) as u32;
        // SAFETY: out covers rows × cols at ldo (checked above); the arrays are this weight's.
        let r =
            unsafe { l.launch(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) };
        drv("launching kiln_w8_dequant", r)?;
        Ok(())
    }
}

/// FP8 `w`'s scales in the form the tensor-core path reads for `act` (`w8a8_form`'s verdict
/// on `w`): a scale per output row (per channel or per tensor), or the 128×128 blocks.
fn lt_scales(dev: &Device, w: &W8Matrix, act: ActScale) -> Result<Tensor, GemmError> {
    let (bo, rows) = (w.block()[0], w.rows());
    Ok(match act {
        ActScale::Row => Tensor::from_host(dev, &(0..rows).map(|j| w.scales()[j / bo]).collect::<Vec<_>>(), 1, rows)?,
        ActScale::Group => {
            let (padded, br, ld) = fp8_lt::block128_layout(w.scales(), rows, w.cols());
            Tensor::from_host(dev, &padded, br, ld)?
        }
    })
}

/// Which kernel multiplies an 8-bit weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum W8Path {
    /// The GEMV up to [`gemv_max_rows`] rows; above, FP8 W8A8 on tensor cores where it
    /// applies and was allowed at upload, else dequantize + cuBLAS.
    Auto,
    /// The GEMV, 8 rows of `x` per launch.
    Gemv,
    /// Dequantize into the scratch, then cuBLAS.
    Dequant,
    /// W8A8 on the 8-bit tensor cores through cuBLASLt (`fp8_lt`; activations quantized per
    /// row, or per 128 inputs for 128×128 block scales); where it does not apply, the W8A8
    /// GEMV for a weight uploaded as W8A8 (a GPU without those tensor cores, no cuBLASLt
    /// algorithm), dequantize + cuBLAS for one that is not.
    TensorCores,
    /// The W8A8 GEMV (activations quantized as for the tensor cores), 8 rows per launch;
    /// the W8A16 GEMV for a weight not uploaded as W8A8.
    W8a8Gemv,
}

/// `out = x · Wᵀ` for 8-bit weights stacked along rows, each part into its own columns.
pub fn linear_w8_cuda(x: &Tensor, parts: &[W8Cuda], out: &mut Tensor) -> Result<(), GemmError> {
    linear_w8_cuda_by(x, parts, out, W8Path::Auto)
}

/// [`linear_w8_cuda`] through a chosen kernel (for the check program's comparisons).
pub fn linear_w8_cuda_by(x: &Tensor, parts: &[W8Cuda], out: &mut Tensor, path: W8Path) -> Result<(), GemmError> {
    let Some(b) = checked(x, parts, out, "w8")? else { return Ok(()) };
    let act = parts[0].act;
    let small = x.rows() <= gemv_max_rows(parts[0].lt.is_some());
    match path {
        W8Path::Gemv => gemv_all(&b, x, parts, out, GEMV_M[3]),
        W8Path::Dequant => dequant_product(x, parts, out),
        W8Path::W8a8Gemv => w8a8_gemv_all(&b, x, parts, out),
        W8Path::TensorCores if w8a8_product(&b, x, parts, out)? => Ok(()),
        W8Path::TensorCores if act.is_some() => w8a8_gemv_all(&b, x, parts, out),
        W8Path::TensorCores => dequant_product(x, parts, out),
        // W8A8 stays W8A8 at every batch size: a sequence's numbers do not depend on how many
        // others share its step.
        W8Path::Auto if act.is_some() && (small || !w8a8_product(&b, x, parts, out)?) => {
            w8a8_gemv_all(&b, x, parts, out)
        }
        W8Path::Auto if act.is_some() => Ok(()),
        W8Path::Auto if small => gemv_all(&b, x, parts, out, GEMV_M[3]),
        W8Path::Auto => dequant_product(x, parts, out),
    }
}

/// The W8A8 GEMV of every part, 8 rows of `x` at a time quantized into the shared scratch
/// (the W8A16 GEMV when the weight was not uploaded as W8A8).
fn w8a8_gemv_all(b: &CudaBackend, x: &Tensor, parts: &[W8Cuda], out: &mut Tensor) -> Result<(), GemmError> {
    let Some(act) = parts[0].act else { return gemv_all(b, x, parts, out, GEMV_M[3]) };
    let (m, k) = (x.rows(), x.cols());
    let chunk = GEMV_M[3];
    let scratch = parts[0].scratch.lock().unwrap_or_else(|e| e.into_inner());
    let (qx_bytes, sx_bytes) = fp8_lt::quantized_bytes(chunk, k, act);
    let base = scratch.cuda_ptr().unwrap_or(0).div_ceil(256) * 256;
    let (qx, sx) = (base, (base + qx_bytes as u64).div_ceil(256) * 256);
    if (sx - scratch.cuda_ptr().unwrap_or(0)) as usize + sx_bytes > scratch.len() * scratch.dtype().size_bytes() {
        return Err(GemmError::Shape(format!("dequantization scratch too small for {chunk} rows of {k} 8-bit codes")));
    }
    for r0 in (0..m).step_by(chunk) {
        let rows = (m - r0).min(chunk);
        // SAFETY: qx and sx lie inside the scratch (checked above), which this lock keeps to
        // this product; the stream orders the GEMVs after the quantization.
        unsafe { fp8_lt::quantize_into(b, &x.view_rows(r0, rows)?, act, qx, sx)? };
        gemv_w8a8_parts(b, (qx, sx, rows), parts, &out.view_rows(r0, rows)?)?;
    }
    Ok(())
}

/// The W8A8 GEMV of every part over `rows ≤ 8` quantized rows (`qx`, `sx` as for
/// [`W8Cuda::gemv_w8a8`]), each part into its own columns of `out` (`rows` rows).
fn gemv_w8a8_parts(b: &CudaBackend, q: (u64, u64, usize), parts: &[W8Cuda], out: &Tensor) -> Result<(), GemmError> {
    let mut at = 0;
    for w in parts {
        w.gemv_w8a8(b, q, &mut out.view_cols(at, w.rows)?)?;
        at += w.rows;
    }
    Ok(())
}

/// The W8A8 tensor-core product when every part takes it (`false`: nothing was written).
fn w8a8_product(b: &CudaBackend, x: &Tensor, parts: &[W8Cuda], out: &mut Tensor) -> Result<bool, GemmError> {
    w8a8_product_of(b, ActIn::Dense(x), parts, out)
}

/// [`w8a8_product`] of rows to quantize or already quantized.
fn w8a8_product_of(b: &CudaBackend, x: ActIn<'_>, parts: &[W8Cuda], out: &mut Tensor) -> Result<bool, GemmError> {
    let Some(lt) = parts[0].lt.as_ref() else { return Ok(false) };
    let mut w8a8 = Vec::with_capacity(parts.len());
    for w in parts {
        let (bytes, epilogue, bo, ..) = w.args();
        let at = w.lt_scales.as_ref().map(|t| t.cuda_ptr().unwrap_or(0));
        let scales = match (w.act, at) {
            // The device scales are × 256 (the GEMV's widening); the tensor cores read e4m3 as is.
            (Some(ActQuant::E4m3(ActScale::Row)), Some(at)) => {
                W8a8Scales::Channel { epilogue, bo: bo as usize, wmul: 1.0 / 256.0, outer: at }
            }
            (Some(ActQuant::E4m3(ActScale::Group)), Some(at)) => W8a8Scales::Block128 { scales: at },
            (Some(ActQuant::Int8Row), _) => W8a8Scales::Int8Channel { scales: epilogue, bo: bo as usize },
            _ => return Ok(false),
        };
        w8a8.push(W8a8Part { rows: w.rows, bytes, scales });
    }
    let scratch = parts[0].scratch.lock().unwrap_or_else(|e| e.into_inner());
    let area = (scratch.cuda_ptr().unwrap_or(0), scratch.len() * scratch.dtype().size_bytes());
    fp8_lt::product(b, lt, x, &w8a8, out, area)
}

/// The code type of the activation rows these parts multiply quantized per row, with one scale
/// a row (uploaded as W8A8 with a scale per output channel or tensor): e4m3 for FP8, int8 for
/// INT8; [`linear_w8_cuda_quantized`] takes rows of it. `None`: the parts quantize otherwise
/// (128×128 blocks) or not at all.
pub fn row_codes(parts: &[W8Cuda]) -> Option<DType> {
    let codes = |w: &W8Cuda| w.act.and_then(ActQuant::row_codes);
    let first = codes(parts.first()?)?;
    parts.iter().all(|w| codes(w) == Some(first)).then_some(first)
}

/// `out = (q · s) · Wᵀ` from activations a kernel before it already quantized per row (a norm
/// fused with the quantization): `q` `[m, k]` codes of [`row_codes`]' type, `s` the `[m]` f32
/// scales. The product of [`linear_w8_cuda`] on the rows `q · s` stand for, without its
/// quantization kernel; parts that take no such rows, or rows of another code type, are an
/// error.
pub fn linear_w8_cuda_quantized(q: &Tensor, s: &Tensor, parts: &[W8Cuda], out: &mut Tensor) -> Result<(), GemmError> {
    let Device::Cuda(b) = q.device().clone() else {
        return Err(GemmError::Shape("quantized activations in host memory for a GPU weight".into()));
    };
    let (m, k, n) = (q.rows(), q.cols(), parts.iter().map(|w| w.rows).sum::<usize>());
    let Some(codes) = row_codes(parts) else {
        return Err(GemmError::Shape("quantized rows for a weight not uploaded as W8A8 per channel".into()));
    };
    if parts.iter().any(|w| w.cols != k) || out.rows() != m || out.cols() != n || s.vector_len() != Some(m) {
        return Err(GemmError::Shape(format!(
            "{codes} x {m}×{k} (scales {}×{}) · w8ᵀ ({n} rows) into {}×{}",
            s.rows(),
            s.cols(),
            out.rows(),
            out.cols()
        )));
    }
    if q.dtype() != codes || s.dtype() != DType::F32 || !out.dtype().is_float() || q.row_stride() != k {
        return Err(GemmError::DTypes { a: q.dtype(), b: s.dtype(), out: out.dtype() });
    }
    if m == 0 {
        return Ok(());
    }
    let (qp, sp) = (q.cuda_ptr().unwrap_or(0), s.cuda_ptr().unwrap_or(0));
    let small = m <= gemv_max_rows(parts[0].lt.is_some());
    if !small && w8a8_product_of(&b, ActIn::Quantized { q: qp, s: sp, rows: m, k }, parts, out)? {
        return Ok(());
    }
    let chunk = GEMV_M[3];
    for r0 in (0..m).step_by(chunk) {
        let rows = (m - r0).min(chunk);
        let (qx, sx) = (qp + (r0 * k) as u64, sp + 4 * r0 as u64);
        gemv_w8a8_parts(&b, (qx, sx, rows), parts, &out.view_rows(r0, rows)?)?;
    }
    Ok(())
}

impl GpuPart for W8Cuda {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn gemv(&self, b: &CudaBackend, x: &Tensor, out: &mut Tensor) -> Result<(), GemmError> {
        W8Cuda::gemv(self, b, x, out)
    }
    fn dequantize_into(&self, out: &mut Tensor) -> Result<(), GemmError> {
        W8Cuda::dequantize_into(self, out)
    }
    fn scratch(&self) -> &Scratch {
        &self.scratch
    }
}
