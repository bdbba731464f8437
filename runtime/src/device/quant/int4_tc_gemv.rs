//! W4A16 for a few activation rows (decode) on tensor cores: `out = x · Wᵀ` for 1–8 rows of f16 /
//! bf16 `x` a launch (up to [`max_rows`] in launches of 8) and a 4-bit weight in
//! [`super::int4_cuda`]'s device form, groups a multiple of 128.
//!
//! Why a second GEMV: the block GEMV (`kiln_i4_gemv`) spends ~11 instructions per weight byte
//! (each nibble shifted, masked, turned into a float and multiplied alone), so an H100 cannot
//! issue them as fast as its memory delivers the bytes: it streams 35–56% of the copy bandwidth
//! and its time grows with every activation row. Here the weight is the `A` operand of
//! `mma.m16n8k16` (16 output features) and the activation rows are the 8 columns of `B`, so one
//! instruction multiplies 8 weights of a lane by every row at once (1 to 8 rows cost the same),
//! and a nibble becomes an operand by one `LOP3`: `(w & 0x000F000F) | MAGIC` is the pair
//! `(BASE + q₀, BASE + q₄)` in bf16 (BASE 128) or f16 (BASE 1024), exact. The BASE is taken off
//! once per group, not per value: a second `mma` of an all-ones `A` gives the group's `Σ x` for
//! the same output slots, and the group's contribution is
//! `scale · Σ (BASE + q) x + (bias − BASE · scale) · Σ x` in f32.
//!
//! The k order inside a step is free as long as `A` and `B` agree, so each lane keeps the
//! nibbles it loaded: lane `(g, c)` reads 16 bytes (a quad of 32 inputs) of rows `g` and `g + 8`
//! of the tile per 128-input chunk — a warp reads 64 contiguous bytes of each of its 16 rows —
//! and the 8 `x` values of word `j` of its quad. Step `2j` takes nibbles (0, 4) and (1, 5) of
//! that word, step `2j + 1` nibbles (2, 6) and (3, 7), and `B` is built from the same inputs by
//! byte permutes.
//!
//! A block is `W` warps (8, or 4 under `KILN_INT4_TC_WARPS=4`) on one 16-feature tile, splitting
//! `k` by chunks (warp `w` takes chunks `w, w + W, …`, the next one loaded while the current one
//! multiplies); the warps' sums meet in shared memory in a fixed order (no atomics: the same
//! bits every run).
//!
//! Invariants: `k % 128 == 0`, `group % 128 == 0` (a chunk lies in one group), `x` rows
//! 16-byte aligned (an act-order weight's inputs are first gathered into stored order, in the
//! scratch, as the tensor-core GEMM does), `m ≤ 8`, sm_80 or later; [`tc_gemv_product`] answers
//! `false` otherwise and the caller runs the block GEMV. The CPU product
//! ([`super::int4::Int4Matrix::matmul`]) is the reference (`kiln-check-int4`).

use super::gpu_product::rows_aligned16;
use super::int4_cuda::Int4Cuda;
use super::int4_mma::inputs_in_stored_order;
use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::tensor::Tensor;
use crate::{DType, GemmError};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::OnceLock;

/// Inputs per chunk: one 16-byte quad for each of the 4 lanes of a fragment row.
const CHUNK: usize = 128;
/// Output features per block (one m16 tile).
const TILE: usize = 16;
/// The warps per block (splitting `k`) the kernel is instantiated for.
const WARPS: [usize; 2] = [4, 8];
/// Activation rows per launch (the n8 columns of `B`).
pub(super) const MAX_ROWS: usize = 8;

pub(super) const BODY: &str = r#"
// ---- W4A16 few-row GEMV on tensor cores (runtime/src/device/quant/int4_tc_gemv.rs) ----
// (w & 0x000F000F) | MAGIC: nibbles 0 and 4 of w as the pair (BASE + q0, BASE + q4), exact.
__device__ __forceinline__ unsigned kiln_i4_tc_magic(const kiln_bf16*) { return 0x43004300u; }
__device__ __forceinline__ unsigned kiln_i4_tc_magic(const kiln_f16*) { return 0x64006400u; }
__device__ __forceinline__ float kiln_i4_tc_base(const kiln_bf16*) { return 128.f; }
__device__ __forceinline__ float kiln_i4_tc_base(const kiln_f16*) { return 1024.f; }
__device__ __forceinline__ unsigned kiln_i4_tc_ones(const kiln_bf16*) { return 0x3F803F80u; }
__device__ __forceinline__ unsigned kiln_i4_tc_ones(const kiln_f16*) { return 0x3C003C00u; }
__device__ __forceinline__ unsigned kiln_i4_prmt(unsigned a, unsigned b, unsigned sel) {
  unsigned r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// One lane's share of a 128-input chunk: its quad of rows g and g+8, their group's (scale, bias),
// and the matching 32 inputs of activation row g (zeros past m).
struct kiln_i4_tc_chunk {
  uint4 wa, wb;
  uint4 x[4];
  float2 sa, sb;
};

template <typename T>
__device__ __forceinline__ void kiln_i4_tc_load(kiln_i4_tc_chunk& ck, int ch, const T* __restrict__ xrow,
                                                const uint4* __restrict__ wa, const uint4* __restrict__ wb,
                                                const float2* __restrict__ sa, const float2* __restrict__ sb,
                                                int c, int group) {
  const uint4 z4 = make_uint4(0u, 0u, 0u, 0u);
  const float2 z2 = make_float2(0.f, 0.f);
  ck.wa = wa != nullptr ? __ldg(wa + ch * 4 + c) : z4;
  ck.wb = wb != nullptr ? __ldg(wb + ch * 4 + c) : z4;
  const int gi = (ch * 128) / group;
  ck.sa = sa != nullptr ? __ldg(sa + gi) : z2;
  ck.sb = sb != nullptr ? __ldg(sb + gi) : z2;
  const uint4* xp = reinterpret_cast<const uint4*>(xrow + ch * 128 + 32 * c);
#pragma unroll
  for (int j = 0; j < 4; ++j) ck.x[j] = xrow != nullptr ? __ldg(xp + j) : z4;
}

__device__ __forceinline__ unsigned kiln_i4_tc_word(const uint4& w, int j) {
  return j == 0 ? w.x : j == 1 ? w.y : j == 2 ? w.z : w.w;
}

// o (this lane's C fragment: rows g, g+8 × activation rows 2c, 2c+1) += the chunk's products.
template <typename T>
__device__ __forceinline__ void kiln_i4_tc_chunk_mma(const kiln_i4_tc_chunk& ck, float (&o)[4]) {
  const unsigned magic = kiln_i4_tc_magic((const T*)0), one = kiln_i4_tc_ones((const T*)0);
  const unsigned ones[4] = {one, one, one, one};
  float d[4] = {0.f, 0.f, 0.f, 0.f}, e[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const unsigned wa = kiln_i4_tc_word(ck.wa, j), wb = kiln_i4_tc_word(ck.wb, j);
    const uint4 xv = ck.x[j];  // inputs 8j .. 8j+7 of the quad: (x0,x1) (x2,x3) (x4,x5) (x6,x7)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // Step 2j+h: k slots (2c, 2c+1) are inputs (2h, 2h+4) of the word, (2c+8, 2c+9) inputs
      // (2h+1, 2h+5) — the nibbles each LOP3 pairs, and the x pairs the permutes build.
      const int sh = 8 * h;
      const unsigned a[4] = {((wa >> sh) & 0x000F000Fu) | magic, ((wb >> sh) & 0x000F000Fu) | magic,
                             ((wa >> (sh + 4)) & 0x000F000Fu) | magic, ((wb >> (sh + 4)) & 0x000F000Fu) | magic};
      const unsigned lo = h == 0 ? xv.x : xv.y, hi = h == 0 ? xv.z : xv.w;
      const unsigned b[2] = {kiln_i4_prmt(lo, hi, 0x5410u), kiln_i4_prmt(lo, hi, 0x7632u)};
      kiln_i4_mma((const T*)0, d, a, b);
      kiln_i4_mma((const T*)0, e, ones, b);
    }
  }
  // d = Σ (BASE + q) x, e = Σ x over the chunk (one group): scale · Σ q x + bias · Σ x.
  const float base = kiln_i4_tc_base((const T*)0);
  const float ba = fmaf(-base, ck.sa.x, ck.sa.y), bb = fmaf(-base, ck.sb.x, ck.sb.y);
  o[0] = fmaf(ck.sa.x, d[0], fmaf(ba, e[0], o[0]));
  o[1] = fmaf(ck.sa.x, d[1], fmaf(ba, e[1], o[1]));
  o[2] = fmaf(ck.sb.x, d[2], fmaf(bb, e[2], o[2]));
  o[3] = fmaf(ck.sb.x, d[3], fmaf(bb, e[3], o[3]));
}

// out[mi, row] for mi < m <= 8 and the 16 rows row0 .. row0+16 of this block.
// words: [n, k/8]; sbias: [n, k/group] (scale, bias).
template <typename T, int W>
__device__ __forceinline__ void kiln_i4_tc_gemv(const T* __restrict__ x, long long ldx, int m,
                                                const unsigned* __restrict__ words,
                                                const float2* __restrict__ sbias, T* __restrict__ out,
                                                long long ldo, int n, int k, int group) {
#if __CUDA_ARCH__ >= 800
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
  const int row0 = blockIdx.x * 16, ra = row0 + g, rb = row0 + g + 8;
  const int chunks = k >> 7, groups = k / group;
  const long long wpr = k >> 3;
  const uint4* wa = ra < n ? reinterpret_cast<const uint4*>(words + ra * wpr) : nullptr;
  const uint4* wb = rb < n ? reinterpret_cast<const uint4*>(words + rb * wpr) : nullptr;
  const float2* sa = ra < n ? sbias + (long long)ra * groups : nullptr;
  const float2* sb = rb < n ? sbias + (long long)rb * groups : nullptr;
  const T* xrow = g < m ? x + g * ldx : nullptr;

  float o[4] = {0.f, 0.f, 0.f, 0.f};
  kiln_i4_tc_chunk p, q;
  // Two chunks in flight a warp: the next is loaded before the current one multiplies.
  if (warp < chunks) kiln_i4_tc_load(p, warp, xrow, wa, wb, sa, sb, c, group);
  for (int ch = warp; ch < chunks; ch += 2 * W) {
    const int c1 = ch + W, c2 = ch + 2 * W;
    if (c1 < chunks) kiln_i4_tc_load(q, c1, xrow, wa, wb, sa, sb, c, group);
    kiln_i4_tc_chunk_mma<T>(p, o);
    if (c1 < chunks) {
      if (c2 < chunks) kiln_i4_tc_load(p, c2, xrow, wa, wb, sa, sb, c, group);
      kiln_i4_tc_chunk_mma<T>(q, o);
    }
  }

  // The warps' sums, added in warp order: output (tile row r, activation row mi) is element
  // 2 (r / 8) + mi % 2 of lane 4 (r % 8) + mi / 2.
  __shared__ float4 red[W][32];
  red[warp][lane] = make_float4(o[0], o[1], o[2], o[3]);
  __syncthreads();
  if (threadIdx.x < 128) {
    const int r = threadIdx.x >> 3, mi = threadIdx.x & 7, row = row0 + r;
    if (row < n && mi < m) {
      const int l = 4 * (r & 7) + (mi >> 1), e = 2 * (r >> 3) + (mi & 1);
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < W; ++w) {
        const float4 v = red[w][l];
        s += e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
      }
      kiln_i4_store(out + mi * ldo + row, s);
    }
  }
#endif
}

#define KILN_I4_TC(SUFFIX, T, W)                                                                              \
  extern "C" __global__ void __launch_bounds__(32 * W) kiln_i4_tcgemv##W##_##SUFFIX(                          \
      const T* x, long long ldx, int m, const unsigned* words, const float2* sb, T* out, long long ldo, int n,    \
      int k, int group) {                                                                                     \
    kiln_i4_tc_gemv<T, W>(x, ldx, m, words, sb, out, ldo, n, k, group);                                       \
  }
KILN_I4_TC(f16, kiln_f16, 4)
KILN_I4_TC(f16, kiln_f16, 8)
KILN_I4_TC(bf16, kiln_bf16, 4)
KILN_I4_TC(bf16, kiln_bf16, 8)
"#;

/// The entry points of [`BODY`].
pub(super) fn entries() -> impl Iterator<Item = String> {
    ["f16", "bf16"].into_iter().flat_map(|d| WARPS.iter().map(move |w| format!("kiln_i4_tcgemv{w}_{d}")))
}

/// Whether decode-sized products take this kernel where it applies: yes, unless
/// `KILN_INT4_TC_GEMV=0` (the block GEMV then takes up to [`super::int4_cuda::gemv_max_rows`]
/// rows, as before; for comparisons in one run).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_INT4_TC_GEMV").map_or(true, |v| v != "0"))
}

/// The most activation rows a product takes this kernel for (launches of [`MAX_ROWS`] each,
/// every launch reading the whole weight): 16, or `KILN_INT4_TC_MAX_ROWS`. On an H100 (8B
/// shapes) two launches at 16 rows beat the tensor-core GEMM (a 16-sequence step 6.55 against
/// 6.85 ms), four at 32 do not (11.2 against 8.2).
pub fn max_rows() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| super::int4_cuda::env_usize("KILN_INT4_TC_MAX_ROWS", 2 * MAX_ROWS))
}

/// Warps per block: 8 unless `KILN_INT4_TC_WARPS=4`.
fn warps() -> usize {
    static W: OnceLock<usize> = OnceLock::new();
    *W.get_or_init(|| if super::int4_cuda::env_usize("KILN_INT4_TC_WARPS", 8) == 4 { 4 } else { 8 })
}

/// Whether this kernel can multiply `w` by `x` (see the module's invariants); the row count
/// aside (the caller cuts `x` into launches of [`MAX_ROWS`]). An act-order weight's inputs are
/// gathered into stored order first (into the scratch), so only its groups must fit.
pub(super) fn applies(b: &CudaBackend, x: &Tensor, w: &Int4Cuda) -> bool {
    let aligned = w.ptrs().2 != 0 || rows_aligned16(x);
    matches!(x.dtype(), DType::F16 | DType::BF16)
        && b.compute_capability().0 >= 8
        && w.cols().is_multiple_of(CHUNK)
        && w.group().is_multiple_of(CHUNK)
        && aligned
}

/// `out = x · Wᵀ` for `x.rows() ≤` [`MAX_ROWS`] by this kernel, `out` a column view of the
/// product; `scratch` (device memory, `scratch_bytes` long) takes an act-order weight's
/// gathered inputs. `Ok(false)` (nothing launched) where it does not apply.
pub(super) fn tc_gemv_product(
    b: &CudaBackend,
    x: &Tensor,
    w: &Int4Cuda,
    out: &mut Tensor,
    (scratch, scratch_bytes): (u64, usize),
) -> Result<bool, GemmError> {
    let (m, k) = (x.rows(), w.cols());
    let elt = x.dtype().size_bytes();
    let (words, sb, perm) = w.ptrs();
    if m == 0 || m > MAX_ROWS || !applies(b, x, w) || (perm != 0 && m * k * elt > scratch_bytes) {
        return Ok(false);
    }
    let module = b.module_with(super::int4_cuda::source(), "kiln_int4", super::int4_cuda::entries())?;
    // SAFETY: the scratch holds m·k elements of x's dtype (checked above) and is 256-byte
    // aligned (a device buffer); perm is this weight's permutation of k inputs.
    let (xp, ldx) = unsafe { inputs_in_stored_order(b, &module, x, perm, scratch)? };
    let (m32, warps) = (m as i32, warps());
    let f = module.func(&format!("kiln_i4_tcgemv{warps}_{}", x.dtype().name()))?;
    let op = out.cuda_ptr().unwrap_or(0);
    let ldo = out.row_stride() as i64;
    let (n, k, group) = (w.rows() as i32, w.cols() as i32, w.group() as i32);
    let mut l = b.stream().launch_builder(f);
    l.arg(&xp).arg(&ldx).arg(&m32).arg(&words).arg(&sb).arg(&op).arg(&ldo).arg(&n).arg(&k).arg(&group);
    let cfg = LaunchConfig {
        grid_dim: (w.rows().div_ceil(TILE) as u32, 1, 1),
        block_dim: (warps as u32 * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: x (or its gathered copy) covers m ≤ 8 rows of k elements at ldx, 16-byte aligned
    // (checked by `applies`, or the scratch's dense rows of k % 128 == 0 elements);
    // out covers m rows of n at ldo (the caller's `checked`); words and sb are this weight's
    // live device arrays for (n, k, group), read only below row n.
    drv("launching kiln_i4_tcgemv", unsafe { l.launch(cfg) })?;
    Ok(true)
}
