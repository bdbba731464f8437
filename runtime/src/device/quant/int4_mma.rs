//! W4A16 on tensor cores: `out = x · Wᵀ` for a 4-bit group-quantized `W` ([`super::int4_cuda`]'s
//! device form) and f16 / bf16 activations, for the batches between the GEMV (a few rows) and
//! dequantize + cuBLAS (prefill-sized batches).
//!
//! One block of 128 threads computes a `16·MT × 128` tile of `out` (MT = 1, 2, 4 by the number
//! of rows) over its share of `k`, in steps of `Q` quads (32 inputs each, one group's; `Q` = 2
//! by default, 1 where `k` is not a multiple of 64): a `cp.async` ring (4 stages of one quad,
//! 3 of two) brings each step's activation rows, the 128 weight rows' packed words (16 bytes a
//! row and quad) and their groups' scale / bias into shared memory; each warp then builds its
//! `mma.m16n8k16` B fragments straight from the packed words (lane `(g, t)` of an n8 tile reads
//! its row's 16 bytes of a quad once and keeps nibbles `2t, 2t+1` of each word: exactly the
//! fragment's k indices), so the weights are dequantized in registers once and never written
//! out. A (activations) fragments are 32-bit shared loads from rows padded by 16 bytes
//! (conflict-free).
//!
//! Few output tiles cannot keep the memory busy, so `k` is split over `gridDim.z` when the
//! tiles alone would leave SMs idle: each split writes f32 partial sums, and one more kernel
//! adds them in split order and rounds once (deterministic: no atomics). The split count
//! follows the tile count, so a row's rounding can differ between batch sizes (as cuBLAS's
//! does when it picks another algorithm), never between runs.
//!
//! Invariants: `k % 32 == 0` and every group a multiple of 32 (so a quad lies in one group;
//! [`Int4Layout`](super::int4::Int4Layout)); activation rows 16-byte aligned (the caller checks,
//! else another path runs); an act-order weight's inputs are gathered into stored order first
//! (`kiln_i4_gather`), into the scratch, so the tile loads stay contiguous. The kernel body is
//! compiled only for sm_80 and later (`mma.sync` bf16); older GPUs never choose this path.

use super::int4_cuda::{env_usize, Int4Cuda};
use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::kernel_cache::LoadedModule;
use crate::device::quant::gpu_product::rows_aligned16;
use crate::device::tensor::Tensor;
use crate::GemmError;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Output features per block (the kernel's `KILN_I4_BN`: 4 warps × 32).
const BN: usize = 128;
/// Inputs per quad: one 16-byte piece of a row's packed words, in one group; a pipeline step
/// is `Q` quads (the kernel's template parameter, 1 or 2).
const QUAD: usize = 32;
/// Threads per block.
const THREADS: u32 = 128;
/// The fewest pipeline steps a split of `k` is given.
const MIN_STEPS_PER_SPLIT: usize = 4;

pub(super) const BODY: &str = r#"
// ---- W4A16 on tensor cores (runtime/src/device/quant/int4_mma.rs) ----
#define KILN_I4_BN 128

__device__ __forceinline__ unsigned kiln_i4_smem(const void* p) {
  unsigned s;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(s) : "l"(p));
  return s;
}
// 16 (or 8) bytes global -> shared, bypassing registers; bytes = 0 fills zeros (rows past the
// matrix) without reading src.
__device__ __forceinline__ void kiln_i4_cp16(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(kiln_i4_smem(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void kiln_i4_cp8(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(kiln_i4_smem(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void kiln_i4_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void kiln_i4_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Two floats as one register of two halves, the first in the low half (a fragment's order).
__device__ __forceinline__ unsigned kiln_i4_pack2(const kiln_bf16*, float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ unsigned kiln_i4_pack2(const kiln_f16*, float lo, float hi) {
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
// d += a · b for one m16n8k16 tile, f32 accumulators.
__device__ __forceinline__ void kiln_i4_mma(const kiln_bf16*, float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void kiln_i4_mma(const kiln_f16*, float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Stored inputs 2t and 2t+1 of word w (nibbles 2t, 2t+1) dequantized and packed.
template <typename T>
__device__ __forceinline__ unsigned kiln_i4_pair(unsigned w, int t, float2 s) {
  const float lo = fmaf(kiln_i4_nibble(w, 2 * t), s.x, s.y);
  const float hi = fmaf(kiln_i4_nibble(w, 2 * t + 1), s.x, s.y);
  return kiln_i4_pack2((const T*)0, lo, hi);
}

// out (or partial, when split) for rows m0 .. m0+16*MT and features n0 .. n0+128 of this block,
// inputs of steps kt0 .. kt0+steps, a step being Q quads (32 inputs each, one group's).
// words: [n, k/8]; sb: [n, k/group] (scale, bias).
template <typename T, int MT, int Q>
__device__ __forceinline__ void kiln_i4_mma_gemm(const T* __restrict__ x, long long ldx, int m,
                                                 const unsigned* __restrict__ words, const float2* __restrict__ sb,
                                                 T* __restrict__ out, long long ldo, float* __restrict__ partial,
                                                 int n, int k, int group, int steps_per_split) {
#if __CUDA_ARCH__ >= 800
  constexpr int BM = 16 * MT, BK = 32 * Q;
  // Stages in flight: fewer for longer steps (the static shared memory stays under 48 KB).
  constexpr int STAGES = Q == 1 ? 4 : 3;
  // Shared row stride of an activation tile, in elements: 16 bytes of padding keeps rows
  // 16-byte aligned for cp.async and puts the 8 rows of a fragment load on distinct banks.
  constexpr int XS = BK + 8;
  __shared__ __align__(16) T xs[STAGES][BM * XS];
  __shared__ __align__(16) uint4 ws[STAGES][KILN_I4_BN * Q];
  __shared__ __align__(16) float2 ss[STAGES][KILN_I4_BN * Q];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * KILN_I4_BN, m0 = blockIdx.y * BM;
  const int kt0 = blockIdx.z * steps_per_split;
  const int steps = min(steps_per_split, k / BK - kt0);
  const long long wpr = k >> 3;
  const int groups = k / group;

  // Step kt into stage st: thread tid brings weight row n0+tid's Q quads (16 bytes each) and
  // their scales, and 16-byte pieces of the activation rows.
  auto load = [&](int st, int kt) {
    const int row = n0 + tid;
    const bool in = row < n;
    const long long r = in ? row : 0;
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      const int quad = kt * Q + q;
      kiln_i4_cp16(&ws[st][tid * Q + q], words + r * wpr + quad * 4, in ? 16 : 0);
      kiln_i4_cp8(&ss[st][tid * Q + q], sb + r * groups + (quad * 32) / group, in ? 8 : 0);
    }
#pragma unroll
    for (int c = tid; c < BM * 4 * Q; c += 128) {
      const int xr = c / (4 * Q), piece = c % (4 * Q);
      const bool xin = m0 + xr < m;
      const T* src = x + (xin ? (long long)(m0 + xr) * ldx : 0) + kt * BK + piece * 8;
      kiln_i4_cp16(&xs[st][xr * XS + piece * 8], src, xin ? 16 : 0);
    }
  };

  float acc[MT][4][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < steps) load(s, kt0 + s);
    kiln_i4_cp_commit();
  }
  for (int it = 0; it < steps; ++it) {
    // Step it has landed (at most STAGES-2 later groups still in flight), and every warp is
    // done with the stage the next load overwrites (it was read in step it-1).
    kiln_i4_cp_wait<STAGES - 2>();
    __syncthreads();
    const int next = it + STAGES - 1;
    if (next < steps) load(next % STAGES, kt0 + next);
    kiln_i4_cp_commit();

    const int st = it % STAGES;
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      // B fragments of this warp's four n8 tiles, both k16 halves of quad q: lane (g, t)
      // holds inputs 2t, 2t+1 (b0) and 2t+8, 2t+9 (b1) of row 8j+g: nibbles 2t, 2t+1 of words
      // 0/1 (first half) and 2/3 (second half).
      unsigned b[4][2][2];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int row = warp * 32 + j * 8 + g;
        const uint4 w = ws[st][row * Q + q];
        const float2 s = ss[st][row * Q + q];
        b[j][0][0] = kiln_i4_pair<T>(w.x, t, s);
        b[j][0][1] = kiln_i4_pair<T>(w.y, t, s);
        b[j][1][0] = kiln_i4_pair<T>(w.z, t, s);
        b[j][1][1] = kiln_i4_pair<T>(w.w, t, s);
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          // A fragment: rows g and g+8 of the m16 tile, inputs 2t, 2t+1 and 2t+8, 2t+9.
          const T* p = &xs[st][(16 * i + g) * XS + 32 * q + 16 * kk + 2 * t];
          const unsigned a[4] = {*reinterpret_cast<const unsigned*>(p),
                                 *reinterpret_cast<const unsigned*>(p + 8 * XS),
                                 *reinterpret_cast<const unsigned*>(p + 8),
                                 *reinterpret_cast<const unsigned*>(p + 8 * XS + 8)};
#pragma unroll
          for (int j = 0; j < 4; ++j) kiln_i4_mma((const T*)0, acc[i][j], a, b[j][kk]);
        }
    }
  }

  // C fragment: rows g, g+8 of the m16 tile; features 2t, 2t+1 of the n8 tile.
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + 16 * i + g + 8 * h, col = n0 + warp * 32 + 8 * j + 2 * t;
        if (row >= m) continue;
        const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
        if (partial != nullptr) {
          float* p = partial + ((long long)blockIdx.z * m + row) * n + col;
          if (col < n) p[0] = v0;
          if (col + 1 < n) p[1] = v1;
        } else {
          if (col < n) kiln_i4_store(out + row * ldo + col, v0);
          if (col + 1 < n) kiln_i4_store(out + row * ldo + col + 1, v1);
        }
      }
#endif
}

// out[row, col] = the sum of the splits' partials in split order, rounded once.
template <typename T>
__device__ __forceinline__ void kiln_i4_reduce(const float* __restrict__ partial, int splits, int m, int n,
                                               T* __restrict__ out, long long ldo) {
  const long long total = (long long)m * n;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int sp = 0; sp < splits; ++sp) s += partial[sp * total + idx];
    kiln_i4_store(out + (idx / n) * ldo + idx % n, s);
  }
}

// xp[row, i] = x[row, perm[i]]: an act-order weight's inputs in stored order, dense rows.
template <typename T>
__device__ __forceinline__ void kiln_i4_gather(const T* __restrict__ x, long long ldx, const int* __restrict__ perm,
                                               int m, int k, T* __restrict__ xp) {
  const long long total = (long long)m * k;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x)
    xp[idx] = x[(idx / k) * ldx + perm[idx % k]];
}

#define KILN_I4_MMA(NAME, T, MT, Q)                                                                           \
  extern "C" __global__ void __launch_bounds__(128) NAME(const T* x, long long ldx, int m, const unsigned* words, \
                                                         const float2* sb, T* out, long long ldo, float* partial, \
                                                         int n, int k, int group, int steps_per_split) {       \
    kiln_i4_mma_gemm<T, MT, Q>(x, ldx, m, words, sb, out, ldo, partial, n, k, group, steps_per_split);         \
  }
#define KILN_I4_MMA_DTYPE(SUFFIX, T)                                                                          \
  KILN_I4_MMA(kiln_i4_mma1_q1_##SUFFIX, T, 1, 1)                                                              \
  KILN_I4_MMA(kiln_i4_mma2_q1_##SUFFIX, T, 2, 1)                                                              \
  KILN_I4_MMA(kiln_i4_mma4_q1_##SUFFIX, T, 4, 1)                                                              \
  KILN_I4_MMA(kiln_i4_mma1_q2_##SUFFIX, T, 1, 2)                                                              \
  KILN_I4_MMA(kiln_i4_mma2_q2_##SUFFIX, T, 2, 2)                                                              \
  KILN_I4_MMA(kiln_i4_mma4_q2_##SUFFIX, T, 4, 2)                                                              \
  extern "C" __global__ void kiln_i4_reduce_##SUFFIX(const float* partial, int splits, int m, int n, T* out,   \
                                                     long long ldo) {                                         \
    kiln_i4_reduce<T>(partial, splits, m, n, out, ldo);                                                       \
  }                                                                                                           \
  extern "C" __global__ void kiln_i4_gather_##SUFFIX(const T* x, long long ldx, const int* perm, int m, int k, \
                                                     T* xp) {                                                 \
    kiln_i4_gather<T>(x, ldx, perm, m, k, xp);                                                                \
  }
KILN_I4_MMA_DTYPE(f16, kiln_f16)
KILN_I4_MMA_DTYPE(bf16, kiln_bf16)
"#;

/// The entry points of [`BODY`].
pub(super) fn entries() -> impl Iterator<Item = String> {
    ["f16", "bf16"].into_iter().flat_map(|d| {
        ["mma1_q1", "mma2_q1", "mma4_q1", "mma1_q2", "mma2_q2", "mma4_q2", "reduce", "gather"]
            .into_iter()
            .map(move |k| format!("kiln_i4_{k}_{d}"))
    })
}

/// How a product of one weight is cut: the m16 tiles per block, the quads per pipeline step
/// and the splits of `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MmaPlan {
    /// m16 tiles per block (1, 2 or 4).
    pub mt: usize,
    /// Quads (32 inputs) per pipeline step (1 or 2).
    pub q: usize,
    /// Pipeline steps per split of `k`.
    pub steps_per_split: usize,
    /// Splits of `k` (`gridDim.z`); 1 writes `out` directly.
    pub splits: usize,
}

impl MmaPlan {
    /// The plan for `m` rows of a `n × k` weight on a GPU of `sms` SMs: two quads a step where
    /// `k` allows (`KILN_INT4_MMA_Q=1`: one), enough blocks for [`Knobs::blocks_per_sm`] per
    /// SM, each split at least [`MIN_STEPS_PER_SPLIT`] steps long, none empty.
    pub fn new(m: usize, n: usize, k: usize, sms: usize) -> MmaPlan {
        let knobs = Knobs::get();
        let q = if knobs.quads == 2 && k.is_multiple_of(2 * QUAD) { 2 } else { 1 };
        MmaPlan::with(m, n, k, sms, q, knobs.blocks_per_sm)
    }

    /// [`MmaPlan::new`] with the step's quads (`k` a multiple of `32 q`) and the blocks per SM
    /// chosen.
    pub fn with(m: usize, n: usize, k: usize, sms: usize, q: usize, per_sm: usize) -> MmaPlan {
        let mt = match m {
            0..=16 => 1,
            17..=32 => 2,
            _ => 4,
        };
        let steps = k / (QUAD * q);
        let tiles = n.div_ceil(BN) * m.div_ceil(16 * mt).max(1);
        let want = (per_sm * sms.max(1)).div_ceil(tiles).clamp(1, (steps / MIN_STEPS_PER_SPLIT).max(1));
        let steps_per_split = steps.div_ceil(want).max(1);
        MmaPlan { mt, q, steps_per_split, splits: steps.div_ceil(steps_per_split).max(1) }
    }

    /// Bytes of f32 partial sums the plan needs for `m` rows of `n` features.
    pub fn partial_bytes(&self, m: usize, n: usize) -> usize {
        if self.splits > 1 {
            self.splits * m * n * 4
        } else {
            0
        }
    }
}

/// The kernel's tuning variables, read once. Measured on an H100 (8B shapes, 1–128 rows): two
/// quads a step and 4 blocks per SM were the fastest of {1, 2} × {2, 4, 8}, 10–25% ahead of one
/// quad and 2 blocks.
struct Knobs {
    /// Quads per step where `k` allows two (`KILN_INT4_MMA_Q`, default 2).
    quads: usize,
    /// The blocks per SM the split of `k` aims for (`KILN_INT4_MMA_BLOCKS_PER_SM`, default 4).
    blocks_per_sm: usize,
}

impl Knobs {
    fn get() -> &'static Knobs {
        static K: std::sync::OnceLock<Knobs> = std::sync::OnceLock::new();
        K.get_or_init(|| Knobs {
            quads: env_usize("KILN_INT4_MMA_Q", 2),
            blocks_per_sm: match env_usize("KILN_INT4_MMA_BLOCKS_PER_SM", 4) {
                0 => 4,
                n => n,
            },
        })
    }
}

/// `x`'s rows as the kernels read them: `x` itself (its pointer and row stride), or, for an
/// act-order weight (`perm` not 0), its inputs gathered into stored order into `scratch` (dense
/// rows of `x.cols()`).
///
/// # Safety
/// Where `perm` is not 0, `scratch` must hold `x.rows() · x.cols()` elements of `x`'s dtype and
/// `perm` must be `x.cols()` indices below `x.cols()` in device memory.
pub(super) unsafe fn inputs_in_stored_order(
    b: &CudaBackend,
    module: &LoadedModule,
    x: &Tensor,
    perm: u64,
    scratch: u64,
) -> Result<(u64, i64), GemmError> {
    let (xp, ldx) = (x.cuda_ptr().unwrap_or(0), x.row_stride() as i64);
    if perm == 0 {
        return Ok((xp, ldx));
    }
    let (m, k) = (x.rows(), x.cols());
    let f = module.func(&format!("kiln_i4_gather_{}", x.dtype().name()))?;
    let (m32, k32) = (m as i32, k as i32);
    let mut l = b.stream().launch_builder(f);
    l.arg(&xp).arg(&ldx).arg(&perm).arg(&m32).arg(&k32).arg(&scratch);
    let blocks = (m * k).div_ceil(256).clamp(1, 8 * b.sm_count().max(1) as usize) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: x covers m rows of k at ldx; perm and the scratch as the caller promises.
    drv("launching kiln_i4_gather", unsafe { l.launch(cfg) })?;
    Ok((scratch, k as i64))
}

/// `out = x · Wᵀ` on tensor cores; `scratch` (device memory, `scratch_bytes` long) takes an
/// act-order weight's gathered inputs and the split partial sums. `Ok(false)` when the shapes
/// do not fit this path (unaligned rows, f32, a scratch too small): the caller runs another.
pub(super) fn mma_product(
    b: &CudaBackend,
    x: &Tensor,
    w: &Int4Cuda,
    out: &mut Tensor,
    scratch: u64,
    scratch_bytes: usize,
) -> Result<bool, GemmError> {
    let (m, n, k) = (x.rows(), w.rows(), w.cols());
    let (words, scale_bias, perm) = w.ptrs();
    let dtype = x.dtype();
    if !matches!(dtype, crate::DType::F16 | crate::DType::BF16) || b.compute_capability().0 < 8 || k % QUAD != 0 {
        return Ok(false);
    }
    let elt = dtype.size_bytes();
    let aligned = rows_aligned16(x);
    let plan = MmaPlan::new(m, n, k, b.sm_count().max(1) as usize);
    let gathered = if perm != 0 { (m * k * elt).next_multiple_of(256) } else { 0 };
    if (!aligned && perm == 0) || gathered + plan.partial_bytes(m, n) > scratch_bytes {
        return Ok(false);
    }
    let module = b.module_with(super::int4_cuda::source(), "kiln_int4", super::int4_cuda::entries())?;
    let d = dtype.name();
    let (m32, n32, k32) = (m as i32, n as i32, k as i32);
    let blocks_for = |elems: usize| elems.div_ceil(256).clamp(1, 8 * b.sm_count().max(1) as usize) as u32;
    // SAFETY: the scratch holds m·k elements of x's dtype (checked above).
    let (xp, ldx) = unsafe { inputs_in_stored_order(b, &module, x, perm, scratch)? };
    let partial = if plan.splits > 1 { scratch + gathered as u64 } else { 0 };
    let f = module.func(&format!("kiln_i4_mma{}_q{}_{d}", plan.mt, plan.q))?;
    let (op, ldo) = (out.cuda_ptr().unwrap_or(0), out.row_stride() as i64);
    let (group, spp) = (w.group() as i32, plan.steps_per_split as i32);
    let mut l = b.stream().launch_builder(f);
    l.arg(&xp).arg(&ldx).arg(&m32).arg(&words).arg(&scale_bias).arg(&op).arg(&ldo).arg(&partial);
    l.arg(&n32).arg(&k32).arg(&group).arg(&spp);
    let grid = (n.div_ceil(BN) as u32, m.div_ceil(16 * plan.mt) as u32, plan.splits as u32);
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: x (or its gathered copy) covers m rows of k at ldx, 16-byte aligned rows; out
    // covers m rows of n at ldo (the caller checks); the weight arrays are live and sized for
    // (n, k, group); the partials fit the scratch (checked above).
    drv("launching kiln_i4_mma", unsafe { l.launch(cfg) })?;
    if plan.splits > 1 {
        let f = module.func(&format!("kiln_i4_reduce_{d}"))?;
        let splits = plan.splits as i32;
        let mut l = b.stream().launch_builder(f);
        l.arg(&partial).arg(&splits).arg(&m32).arg(&n32).arg(&op).arg(&ldo);
        let cfg = LaunchConfig { grid_dim: (blocks_for(m * n), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the partials hold splits · m · n f32 written by the launch before it on the
        // same stream; out as above.
        drv("launching kiln_i4_reduce", unsafe { l.launch(cfg) })?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_split_k_only_when_the_tiles_leave_sms_idle() {
        // 8B qkv on 132 SMs, one row: 48 tiles, 6 splits of 22 steps (of 128).
        let p = MmaPlan::with(1, 6144, 4096, 132, 1, 2);
        assert_eq!((p.mt, p.steps_per_split, p.splits), (1, 22, 6));
        // gate_up: 224 tiles, two splits; at 64 rows (one 64-row tile) the same.
        assert_eq!(MmaPlan::with(1, 28672, 4096, 132, 1, 2).splits, 2);
        assert_eq!(MmaPlan::with(64, 28672, 4096, 132, 1, 2), MmaPlan { mt: 4, q: 1, steps_per_split: 64, splits: 2 });
        // Enough tiles, of n or of m: no split.
        assert_eq!(MmaPlan::with(64, 65536, 4096, 132, 1, 2).splits, 1);
        assert_eq!(MmaPlan::with(512, 6144, 4096, 132, 1, 2).splits, 1);
        // down (k 14336): 32 tiles, 9 splits; the row tiles divide it.
        assert_eq!(MmaPlan::with(16, 4096, 14336, 132, 1, 2).splits, 9);
        assert_eq!(MmaPlan::with(128, 4096, 14336, 132, 1, 2).splits, 5);
        // A short k is never cut below four steps a split.
        assert_eq!(MmaPlan::with(8, 64, 256, 132, 1, 2).splits, 2);
        assert_eq!(MmaPlan::with(8, 64, 96, 132, 1, 2).splits, 1);
    }

    #[test]
    fn plans_cover_k_with_no_empty_split() {
        for m in [1, 5, 16, 17, 32, 33, 64, 300] {
            for (n, k) in [(64, 1024), (1003, 256), (4096, 14336), (6144, 4096), (96, 32)] {
                for (q, per_sm) in [(1, 2), (1, 8), (2, 2), (2, 4)] {
                    if k % (QUAD * q) != 0 {
                        continue;
                    }
                    let p = MmaPlan::with(m, n, k, 132, q, per_sm);
                    let steps = k / (QUAD * q);
                    assert!(p.splits * p.steps_per_split >= steps, "{m}: {n}×{k}: {p:?}");
                    assert!((p.splits - 1) * p.steps_per_split < steps, "{m}: {n}×{k}: {p:?}");
                    assert_eq!(p.mt, m.div_ceil(16).min(4).next_power_of_two().min(4), "{m}");
                }
            }
        }
    }
}
