//! The device sampler's CUDA kernel (one thread block of 1024 threads per job) and its launch.
//!
//! The kernel follows the CPU twin (`twin.rs`) phase by phase; the numbered comments in the
//! source are the twin's phases. Arithmetic that decides a token is the spec's exact form:
//! every f32 operation is an `_rn` intrinsic (NVRTC would otherwise contract `a - b * c` into
//! an FMA and change bits), masses are integers, and the constants are printed from
//! `sample::math`, not retyped. Log-probabilities use CUDA's double `log`, so they match the CPU
//! up to that function's last bit, as the spec allows.
//!
//! A job's grammar mask is read where its logits are: with no penalties, `KilnRow::logit` gives
//! `-inf` for a token whose bit is clear, so no masked copy of the row is written; with
//! penalties, the scratch copy is masked first and penalised after, the host path's order.
//!
//! Invariants of a launch: `desc` holds `jobs` descriptors whose rows lie inside `logits`;
//! `scratch` has `jobs * vocab` floats when some job has penalties (it may be null otherwise);
//! `masks` holds every masked job's `ceil(vocab / 32)` words at its descriptor's offset (it
//! may be null when no job has a mask); `out` has `jobs * OUT_WORDS` words, every one of which
//! the kernel writes.

use super::job::{cuda_defines, PackedJobs, OUT_WORDS};
use super::DeviceSampleError;
use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::tensor::Tensor;
use crate::sample::math::{EXP_COEFFS, EXP_FLUSH_BELOW, LN2_HI, LN2_LO, LOG2_E, ROUND_MAGIC, WEIGHT_SCALE};
use crate::DType;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::OnceLock;

/// Threads per job. The kernel's reductions assume a multiple of 32 and at most 1024.
const THREADS: u32 = 1024;

const MODULE: &str = "kiln_sampler";
const ENTRIES: [&str; 3] = ["kiln_sample_f32", "kiln_sample_f16", "kiln_sample_bf16"];

const BODY: &str = r#"
// ---- the exact arithmetic of runtime/src/sample/math.rs and rng.rs ----
__device__ __forceinline__ float kiln_exp_nonpos(float x) {
  const float xc = x < KILN_EXP_FLUSH ? KILN_EXP_FLUSH : x;
  const float t = __fadd_rn(__fmul_rn(xc, KILN_LOG2_E), KILN_ROUND_MAGIC);
  const float n = __fsub_rn(t, KILN_ROUND_MAGIC);
  const int n_int = __float_as_int(t) - __float_as_int(KILN_ROUND_MAGIC);
  const float r = __fsub_rn(__fsub_rn(xc, __fmul_rn(n, KILN_LN2_HI)), __fmul_rn(n, KILN_LN2_LO));
  float p = KILN_EXP_C7;
  p = __fadd_rn(KILN_EXP_C6, __fmul_rn(r, p));
  p = __fadd_rn(KILN_EXP_C5, __fmul_rn(r, p));
  p = __fadd_rn(KILN_EXP_C4, __fmul_rn(r, p));
  p = __fadd_rn(KILN_EXP_C3, __fmul_rn(r, p));
  p = __fadd_rn(KILN_EXP_C2, __fmul_rn(r, p));
  p = __fadd_rn(KILN_EXP_C1, __fmul_rn(r, p));
  p = __fadd_rn(KILN_EXP_C0, __fmul_rn(r, p));
  const float y = __fmul_rn(p, __int_as_float((n_int + 127) << 23));
  return x < KILN_EXP_FLUSH ? 0.0f : y;
}
__device__ __forceinline__ unsigned long long kiln_quantize(float w) {
  return (unsigned long long)__fmul_rn(w, KILN_WEIGHT_SCALE);
}
// Larger keys rank earlier: logit descending, then id ascending; -0.0 == 0.0.
__device__ __forceinline__ unsigned long long kiln_rank_key(float l, unsigned int id) {
  const unsigned int bits = __float_as_uint(__fadd_rn(l, 0.0f));
  const unsigned int ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ((unsigned long long)ordered << 32) | (unsigned long long)(~id);
}
__device__ __forceinline__ unsigned int kiln_key_id(unsigned long long key) { return ~(unsigned int)key; }
#define KILN_GAMMA 0x9E3779B97F4A7C15ull
__device__ __forceinline__ unsigned long long kiln_mix(unsigned long long z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// rng::below: ((bits >> 11) * bound) >> 53 with a 128-bit product.
__device__ __forceinline__ unsigned long long kiln_below(unsigned long long seed, unsigned long long n, unsigned long long bound) {
  const unsigned long long key = kiln_mix(seed + KILN_GAMMA);
  const unsigned long long u = kiln_mix(key + (n + 1ull) * KILN_GAMMA) >> 11;
  return (__umul64hi(u, bound) << 11) | ((u * bound) >> 53);
}

// ---- block-wide helpers (blockDim.x a multiple of 32) ----
struct KilnSum { static __device__ __forceinline__ unsigned long long id() { return 0ull; }
                 static __device__ __forceinline__ unsigned long long op(unsigned long long a, unsigned long long b) { return a + b; } };
struct KilnMin { static __device__ __forceinline__ unsigned long long id() { return ~0ull; }
                 static __device__ __forceinline__ unsigned long long op(unsigned long long a, unsigned long long b) { return a < b ? a : b; } };
struct KilnMax { static __device__ __forceinline__ unsigned long long id() { return 0ull; }
                 static __device__ __forceinline__ unsigned long long op(unsigned long long a, unsigned long long b) { return a > b ? a : b; } };
// Every thread gets the block's result. The leading barrier lets `red` be reused at once.
template <typename Op>
__device__ __forceinline__ unsigned long long kiln_block_u64(unsigned long long v, unsigned long long* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = Op::op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : Op::id();
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = Op::op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum of `v` over the threads before this one.
__device__ __forceinline__ unsigned long long kiln_block_exclusive_sum(unsigned long long v, unsigned long long* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  __syncthreads();
  if (lane == 31) red[warp] = inc;
  __syncthreads();
  unsigned long long before = 0;
  for (int w = 0; w < warp; ++w) before += red[w];
  return before + inc - v;
}

// ---- one job's row ----
struct KilnShared {
  unsigned int count[256];
  unsigned long long mass[256];
  unsigned long long key[256];     // a key of the bucket: the only one when its count is 1
  unsigned long long red[32];
  unsigned long long top[KILN_SAMPLE_MAX_LOGPROBS];
  unsigned long long sel_before;   // select_mass: running mass above the chosen bucket
  unsigned long long sel_rem;      // select_kth: rank still to find inside the chosen bucket
  unsigned int n_top;
  int sel;
  int token;
};

template <typename T>
struct KilnRow {
  const T* x;                // the logits row as the model wrote it
  const float* pl;           // its masked and penalised copy, or null when the job has no penalties
  const unsigned int* mask;  // the grammar's allowed tokens, or null when the job has no mask
  float max;
  float temperature;
  __device__ __forceinline__ float logit(int i) const {
    if (pl) return pl[i];
    if (mask && ((mask[i >> 5] >> (i & 31)) & 1u) == 0u) return -kiln_inf();
    return kiln_to_f32(x[i]);
  }
  __device__ __forceinline__ unsigned long long key(int i) const { return kiln_rank_key(logit(i), (unsigned int)i); }
  __device__ __forceinline__ float weight(int i) const {
    const float z = __fsub_rn(logit(i), max);
    return kiln_exp_nonpos(temperature == 1.0f ? z : __fdiv_rn(z, temperature));
  }
  __device__ __forceinline__ unsigned long long mass(int i) const { return kiln_quantize(weight(i)); }
};

// One radix pass: (count, a key, mass if WITH_MASS) per byte at `shift` of the keys >= floor
// whose higher bytes equal `prefix`. The first passes see few distinct bytes (logits share
// their float exponents), so the lanes of a warp that hit the same bucket (__match_any_sync)
// add their count and their summed mass with one atomic each, by their leader; the leader
// also records its key, which is *the* key whenever the bucket's count is 1, the only case
// where it is read. A mass is at most 2^40, so its two 20-bit halves summed over 32 lanes fit
// the 32-bit warp reduction, and the recombined sum is exact.
template <bool WITH_MASS, typename T>
__device__ __forceinline__ void kiln_histogram(const KilnRow<T>& row, int vocab, unsigned long long floor,
                                               unsigned long long prefix, unsigned long long mask, int shift, KilnShared& sh) {
  __syncthreads();  // the previous pass's readers are done with the buckets
  for (int b = threadIdx.x; b < 256; b += blockDim.x) { sh.count[b] = 0u; sh.mass[b] = 0ull; sh.key[b] = 0ull; }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  // Whole warps step together, so every lane reaches the warp-wide match below.
  for (int base = (int)(threadIdx.x & ~31u); base < vocab; base += blockDim.x) {
    const int i = base + lane;
    unsigned long long k = 0ull;
    int b = 256;  // "not counted"
    if (i < vocab) {
      k = row.key(i);
      if (k >= floor && (k & mask) == prefix) b = (int)((k >> shift) & 255ull);
    }
    const unsigned int peers = __match_any_sync(0xffffffffu, b);
    if (b < 256) {  // every lane of a counted group takes this branch together
      const bool leader = lane == __ffs(peers) - 1;
      if (WITH_MASS) {
        const unsigned long long m = row.mass(i);
        const unsigned int hi = __reduce_add_sync(peers, (unsigned int)(m >> 20));
        const unsigned int lo = __reduce_add_sync(peers, (unsigned int)(m & 0xFFFFFull));
        const unsigned long long sum = ((unsigned long long)hi << 20) + (unsigned long long)lo;
        if (leader && sum != 0ull) atomicAdd(&sh.mass[b], sum);
      }
      if (leader) {
        atomicAdd(&sh.count[b], (unsigned int)__popc(peers));
        atomicExch(&sh.key[b], k);
      }
    }
  }
  __syncthreads();
}

// Warp 0 walks the buckets from 255 down, 8 per lane: the first bucket where the running count
// reaches `rem` (select_kth) or the running mass reaches `target` (select_mass).
template <bool BY_MASS>
__device__ __forceinline__ void kiln_pick_bucket(KilnShared& sh, unsigned long long rem, unsigned long long before, double target) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  unsigned long long sum = 0;
  for (int j = 0; j < 8; ++j) {
    const int b = 255 - 8 * lane - j;
    sum += BY_MASS ? sh.mass[b] : (unsigned long long)sh.count[b];
  }
  unsigned long long inc = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  const unsigned long long excl = inc - sum;
  const bool reached = BY_MASS ? ((double)(before + inc) >= target) : (inc >= rem);
  const unsigned int ballot = __ballot_sync(0xffffffffu, reached);
  if (ballot == 0u) {
    // Only a broken invariant gets here: take the last non-empty bucket, as the twin does.
    if (lane == 0) {
      int last = 0;
      unsigned long long above = before;
      for (int b = 255; b >= 0; --b) {
        if (sh.count[b] == 0u) continue;
        last = b;
        above += sh.mass[b];
      }
      sh.sel = last;
      sh.sel_before = above - sh.mass[last];
      sh.sel_rem = 1ull;
    }
    return;
  }
  if (lane == __ffs(ballot) - 1) {
    unsigned long long run = BY_MASS ? before + excl : excl;
    for (int j = 0; j < 8; ++j) {
      const int b = 255 - 8 * lane - j;
      if (sh.count[b] == 0u) continue;
      const unsigned long long m = BY_MASS ? sh.mass[b] : (unsigned long long)sh.count[b];
      if (BY_MASS ? ((double)(run + m) >= target) : (run + m >= rem)) {
        sh.sel = b;
        sh.sel_before = run;
        sh.sel_rem = rem - run;
        break;
      }
      run += m;
    }
  }
}

// The k-th largest rank key of the row, 1 <= k <= vocab.
template <typename T>
__device__ unsigned long long kiln_select_kth(const KilnRow<T>& row, int vocab, unsigned long long k, KilnShared& sh) {
  unsigned long long prefix = 0ull, mask = 0ull;
  for (int shift = 56; shift >= 0; shift -= 8) {
    kiln_histogram<false>(row, vocab, 0ull, prefix, mask, shift, sh);
    kiln_pick_bucket<false>(sh, k, 0ull, 0.0);
    __syncthreads();
    const int sel = sh.sel;
    k = sh.sel_rem;
    prefix |= (unsigned long long)sel << shift;
    mask |= 255ull << shift;
    if (sh.count[sel] == 1u) return sh.key[sel];
  }
  return prefix;
}

// Among keys >= floor: the key where the running mass from the top first reaches `target`,
// and that running mass (*through).
template <typename T>
__device__ unsigned long long kiln_select_mass(const KilnRow<T>& row, int vocab, unsigned long long floor, double target,
                                               KilnShared& sh, unsigned long long* through) {
  unsigned long long prefix = 0ull, mask = 0ull, before = 0ull;
  for (int shift = 56; shift >= 0; shift -= 8) {
    kiln_histogram<true>(row, vocab, floor, prefix, mask, shift, sh);
    kiln_pick_bucket<true>(sh, 0ull, before, target);
    __syncthreads();
    const int sel = sh.sel;
    before = sh.sel_before;
    prefix |= (unsigned long long)sel << shift;
    mask |= 255ull << shift;
    if (sh.count[sel] == 1u) {
      *through = before + sh.mass[sel];
      return sh.key[sel];
    }
  }
  *through = before + row.mass((int)kiln_key_id(prefix));
  return prefix;
}

template <typename T>
__device__ __forceinline__ void kiln_sample_job(const T* __restrict__ logits, long long stride, int vocab,
                                                const int* __restrict__ desc_all, const int* __restrict__ pens,
                                                const unsigned int* __restrict__ masks, float* __restrict__ scratch,
                                                int* __restrict__ out_all) {
  __shared__ KilnShared sh;
  const int job = blockIdx.x;
  const int* d = desc_all + (long long)job * KILN_SAMPLE_DESC_WORDS;
  int* out = out_all + (long long)job * KILN_SAMPLE_OUT_WORDS;
  const float temperature = __int_as_float(d[KILN_SAMPLE_W_TEMPERATURE]);
  const int top_k = d[KILN_SAMPLE_W_TOP_K];
  const float top_p = __int_as_float(d[KILN_SAMPLE_W_TOP_P]);
  const float min_p = __int_as_float(d[KILN_SAMPLE_W_MIN_P]);
  const int n_logprobs = d[KILN_SAMPLE_W_LOGPROBS];
  const int n_pen = d[KILN_SAMPLE_W_PEN_COUNT];
  KilnRow<T> row;
  row.x = logits + (long long)d[KILN_SAMPLE_W_ROW] * stride;
  row.pl = nullptr;
  row.mask = d[KILN_SAMPLE_W_MASK_OFFSET] >= 0 ? masks + d[KILN_SAMPLE_W_MASK_OFFSET] : nullptr;
  row.max = 0.0f;
  row.temperature = 1.0f;

  // 1. the mask, then the penalties, into this job's scratch row (same f32 operations as
  // penalty.rs); `row.logit` applies the mask while `row.pl` is still null
  if (n_pen > 0) {
    float* pl = scratch + (long long)job * vocab;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) pl[i] = row.logit(i);
    __syncthreads();
    const float rep = __int_as_float(d[KILN_SAMPLE_W_REPETITION]);
    const float presence = __int_as_float(d[KILN_SAMPLE_W_PRESENCE]);
    const float frequency = __int_as_float(d[KILN_SAMPLE_W_FREQUENCY]);
    const int* e = pens + 2ll * d[KILN_SAMPLE_W_PEN_OFFSET];
    for (int j = threadIdx.x; j < n_pen; j += blockDim.x) {
      const int t = e[2 * j];
      const unsigned int c = (unsigned int)e[2 * j + 1];
      float l = pl[t];
      if (rep != 1.0f) l = l > 0.0f ? __fdiv_rn(l, rep) : __fmul_rn(l, rep);
      if (c > 0u) l = __fsub_rn(__fsub_rn(l, __fmul_rn((float)c, frequency)), presence);
      pl[t] = l;
    }
    __syncthreads();  // block-wide visibility of the global-memory writes
    row.pl = pl;
  }

  // 2. scan: the first bad logit, else the largest key
  unsigned long long best = 0ull, bad = ~0ull;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float l = row.logit(i);
    if (l != l || l == kiln_inf()) bad = bad < (unsigned long long)i ? bad : (unsigned long long)i;
    else { const unsigned long long k = kiln_rank_key(l, (unsigned int)i); best = k > best ? k : best; }
  }
  bad = kiln_block_u64<KilnMin>(bad, sh.red);
  best = kiln_block_u64<KilnMax>(best, sh.red);
  if (bad != ~0ull) {
    if (threadIdx.x == 0) {
      for (int w = 0; w < KILN_SAMPLE_OUT_WORDS; ++w) out[w] = 0;
      out[0] = KILN_SAMPLE_STATUS_NON_FINITE;
      out[1] = (int)bad;
      out[2] = __float_as_int(row.logit((int)bad));
    }
    return;
  }
  const int argmax = (int)kiln_key_id(best);
  row.max = row.logit(argmax);
  if (row.max == -kiln_inf()) {
    if (threadIdx.x == 0) {
      for (int w = 0; w < KILN_SAMPLE_OUT_WORDS; ++w) out[w] = 0;
      out[0] = KILN_SAMPLE_STATUS_ALL_MASKED;
    }
    return;
  }

  // 3. the log-normaliser, from temperature-1 weights
  double log_norm = 0.0;
  if (n_logprobs >= 0) {
    unsigned long long s = 0ull;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += row.mass(i);
    s = kiln_block_u64<KilnSum>(s, sh.red);
    log_norm = log((double)s / (double)KILN_WEIGHT_SCALE);
  }

  // 4. truncation: a rank-key floor and the mass at or above it
  int token = argmax;
  if (temperature != 0.0f) {
    row.temperature = temperature;
    bool cut = false;
    unsigned long long floor = 0ull, kept = 0ull, survivors_floor = 0ull, survivors_mass = 0ull;
    bool have_survivors_mass = false;
    if (top_k > 0) {
      const unsigned long long kth = kiln_select_kth(row, vocab, (unsigned long long)top_k, sh);
      unsigned long long m = 0ull;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) if (row.key(i) >= kth) m += row.mass(i);
      m = kiln_block_u64<KilnSum>(m, sh.red);
      cut = true; floor = kth; kept = m;
      survivors_floor = kth; survivors_mass = m; have_survivors_mass = true;
    }
    if (top_p < 1.0f) {
      if (!have_survivors_mass) {
        unsigned long long m = 0ull;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) m += row.mass(i);
        survivors_mass = kiln_block_u64<KilnSum>(m, sh.red);
      }
      const double target = (double)top_p * (double)survivors_mass;
      unsigned long long through = 0ull;
      const unsigned long long key = kiln_select_mass(row, vocab, survivors_floor, target, sh, &through);
      if (!cut || key > floor) { floor = key; kept = through; }
      cut = true;
    }
    if (min_p > 0.0f) {
      unsigned long long kmin = ~0ull, m = 0ull;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float w = row.weight(i);
        if (w >= min_p) { const unsigned long long k = row.key(i); kmin = k < kmin ? k : kmin; m += kiln_quantize(w); }
      }
      kmin = kiln_block_u64<KilnMin>(kmin, sh.red);
      m = kiln_block_u64<KilnSum>(m, sh.red);
      if (!cut || kmin > floor) { floor = kmin; kept = m; }
      cut = true;
    }
    if (!cut) {
      unsigned long long m = 0ull;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) m += row.mass(i);
      kept = kiln_block_u64<KilnSum>(m, sh.red);
    }

    // 5. the draw: each thread owns a contiguous run of ids; the run holding r walks it
    const unsigned long long seed = (unsigned long long)(unsigned int)d[KILN_SAMPLE_W_SEED_LO] |
                                    ((unsigned long long)(unsigned int)d[KILN_SAMPLE_W_SEED_HI] << 32);
    const unsigned long long draw = (unsigned long long)(unsigned int)d[KILN_SAMPLE_W_DRAW_LO] |
                                    ((unsigned long long)(unsigned int)d[KILN_SAMPLE_W_DRAW_HI] << 32);
    const unsigned long long r = kiln_below(seed, draw, kept);
    const int per = (vocab + (int)blockDim.x - 1) / (int)blockDim.x;
    const int lo = (int)threadIdx.x * per;
    const int hi = lo + per < vocab ? lo + per : vocab;
    unsigned long long mine = 0ull;
    for (int i = lo; i < hi; ++i) if (row.key(i) >= floor) mine += row.mass(i);
    const unsigned long long before = kiln_block_exclusive_sum(mine, sh.red);
    if (threadIdx.x == 0) sh.token = argmax;  // kept only if the invariant broke
    __syncthreads();
    if (mine > 0ull && before <= r && r < before + mine) {
      unsigned long long run = before;
      for (int i = lo; i < hi; ++i) {
        if (row.key(i) < floor) continue;
        run += row.mass(i);
        if (run > r) { sh.token = i; break; }
      }
    }
    __syncthreads();
    token = sh.token;
    row.temperature = 1.0f;
  }

  // 6. the n best keys, for top log-probabilities
  unsigned int n_top = 0u;
  if (n_logprobs > 0) {
    const int n = n_logprobs < vocab ? n_logprobs : vocab;
    const unsigned long long nth = n < vocab ? kiln_select_kth(row, vocab, (unsigned long long)n, sh) : 0ull;
    __syncthreads();
    if (threadIdx.x == 0) sh.n_top = 0u;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const unsigned long long k = row.key(i);
      if (k >= nth) {
        const unsigned int slot = atomicAdd(&sh.n_top, 1u);
        if (slot < KILN_SAMPLE_MAX_LOGPROBS) sh.top[slot] = k;
      }
    }
    __syncthreads();
    n_top = sh.n_top < KILN_SAMPLE_MAX_LOGPROBS ? sh.n_top : KILN_SAMPLE_MAX_LOGPROBS;
  }

  if (threadIdx.x == 0) {
    for (int w = 0; w < KILN_SAMPLE_OUT_WORDS; ++w) out[w] = 0;
    // insertion sort, best first (at most MAX_LOGPROBS keys)
    for (unsigned int a = 1; a < n_top; ++a) {
      const unsigned long long k = sh.top[a];
      int b = (int)a - 1;
      while (b >= 0 && sh.top[b] < k) { sh.top[b + 1] = sh.top[b]; --b; }
      sh.top[b + 1] = k;
    }
    const bool want = n_logprobs >= 0;
    out[0] = KILN_SAMPLE_STATUS_OK;
    out[1] = token;
    out[2] = __float_as_int(want ? (float)((double)__fsub_rn(row.logit(token), row.max) - log_norm) : 0.0f);
    out[3] = (int)n_top;
    for (unsigned int a = 0; a < n_top; ++a) {
      const int id = (int)kiln_key_id(sh.top[a]);
      out[4 + 2 * a] = id;
      out[5 + 2 * a] = __float_as_int((float)((double)__fsub_rn(row.logit(id), row.max) - log_norm));
    }
  }
}

#define KILN_SAMPLE_ENTRY(NAME, T)                                                                   \
  extern "C" __global__ void __launch_bounds__(1024) NAME(const T* logits, long long stride, int vocab, \
      const int* desc, const int* pens, const unsigned int* masks, float* scratch, int* out) {      \
    kiln_sample_job<T>(logits, stride, vocab, desc, pens, masks, scratch, out);                     \
  }
KILN_SAMPLE_ENTRY(kiln_sample_f32, float)
KILN_SAMPLE_ENTRY(kiln_sample_f16, kiln_f16)
KILN_SAMPLE_ENTRY(kiln_sample_bf16, kiln_bf16)
"#;

/// `#define NAME __int_as_float(0x...)`: an f32 constant with its exact bits.
fn float_define(name: &str, x: f32) -> String {
    format!("#define {name} __int_as_float(0x{:08x}) /* {x:e} */\n", x.to_bits())
}

/// The sampler's CUDA source (self-contained: the codegen prelude, no headers).
pub fn source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        let mut s = String::from("// kiln device sampler (runtime/src/sample/device/kernel.rs): the sampling spec of\n// runtime/src/sample/mod.rs, one thread block per job. Generated constants first.\n");
        s.push_str(kiln_codegen::cuda::prelude::CORE);
        s.push('\n');
        s.push_str(&cuda_defines());
        for (name, x) in [
            ("KILN_EXP_FLUSH", EXP_FLUSH_BELOW),
            ("KILN_LOG2_E", LOG2_E),
            ("KILN_LN2_HI", LN2_HI),
            ("KILN_LN2_LO", LN2_LO),
            ("KILN_ROUND_MAGIC", ROUND_MAGIC),
            ("KILN_WEIGHT_SCALE", WEIGHT_SCALE),
        ] {
            s.push_str(&float_define(name, x));
        }
        for (j, c) in EXP_COEFFS.iter().enumerate() {
            s.push_str(&float_define(&format!("KILN_EXP_C{j}"), *c));
        }
        s.push_str(BODY);
        s
    })
}

/// Runs `jobs` on the GPU over `logits` (a float tensor on `b`'s device) and returns the
/// result records (`jobs.len() * OUT_WORDS` words).
pub(crate) fn run(b: &CudaBackend, logits: &Tensor, jobs: &PackedJobs) -> Result<Vec<i32>, DeviceSampleError> {
    let entry = match logits.dtype() {
        DType::F32 => ENTRIES[0],
        DType::F16 => ENTRIES[1],
        DType::BF16 => ENTRIES[2],
        // The caller checked the dtype; this keeps the match total.
        d => return Err(DeviceSampleError::Shape(format!("logits must be a float tensor, not {d}"))),
    };
    let dev = logits.device();
    let n = jobs.len();
    let vocab = logits.cols();
    let desc = Tensor::vector(dev, &jobs.desc)?;
    // A null pointer stands for "no penalties" / "no scratch": the kernel never reads them then.
    let pens = if jobs.penalties.is_empty() { None } else { Some(Tensor::vector(dev, &jobs.penalties)?) };
    // Only constrained jobs' mask bits go up: a few KiB per row, never logits down.
    let masks = if jobs.masks.is_empty() { None } else { Some(Tensor::vector(dev, &jobs.masks)?) };
    let scratch = if jobs.needs_scratch { Some(Tensor::uninit(dev, DType::F32, n, vocab)?) } else { None };
    let out = Tensor::uninit(dev, DType::I32, 1, n * OUT_WORDS)?;
    let entries: Vec<String> = ENTRIES.iter().map(|s| s.to_string()).collect();
    let module = b.module_with(source(), MODULE, &entries)?;
    let f = module.func(entry)?;
    let ptr = |t: &Option<Tensor>| t.as_ref().and_then(|t| t.cuda_ptr()).unwrap_or(0);
    let (lp, stride, v) = (logits.cuda_ptr().unwrap_or(0), logits.row_stride() as i64, vocab as i32);
    let (dp, pp, mp) = (desc.cuda_ptr().unwrap_or(0), ptr(&pens), ptr(&masks));
    let (sp, op) = (ptr(&scratch), out.cuda_ptr().unwrap_or(0));
    let mut l = b.stream().launch_builder(f);
    l.arg(&lp).arg(&stride).arg(&v).arg(&dp).arg(&pp).arg(&mp).arg(&sp).arg(&op);
    // SAFETY: `logits` covers every job's row (checked by the caller) at `stride`; `desc`,
    // `pens`, `masks`, `scratch` and `out` are live allocations of the sizes the module header
    // states (mask lengths checked by the caller).
    let r = unsafe {
        l.launch(LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
    };
    drv("launching kiln_sample", r)?;
    Ok(out.to_host::<i32>()?)
}
