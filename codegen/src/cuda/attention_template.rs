//! The hand-written part of every attention `.cu` file: the split (flash-decoding) kernel and
//! the combine kernel as C++ templates over the storage type `T`, the KV pools' element type
//! `KT` (`T`, or FP8 e4m3 bytes), the head dim `HD`, the group cap `G` and the score modifier
//! `Mod` (a functor the emitter writes from the IR). The calling convention is
//! [`crate::attention::abi`]'s.
//!
//! How a split block works (128 threads; keys in tiles of 128):
//! 1. the served query heads' rows of `q`, scaled, go to shared memory as f32;
//! 2. per tile — the tile's cache rows (slots) go to shared memory, and each thread issues the
//!    loads of the values it will need (up to 16 of 16 bytes) before any score exists, so the
//!    tile's K and V reads are in flight together; *score phase*: thread `i` takes key
//!    `t0 + i`, loads the key's head row with 16-byte loads and dots it with every served
//!    head (q read as a shared-memory broadcast), then applies the modifier; *softmax phase*:
//!    one warp per head takes the tile's maximum, turns scores into `exp(s - m)` in place and
//!    updates the running max `m` and sum `l` (the online softmax; a tile where every key so far
//!    is masked keeps `m = -inf` and contributes nothing); *value phase*: thread `(c, lane)`
//!    owns 16 bytes `c` of the head row and every `TL`-th key of the tile, rescales its
//!    accumulators by `exp(m_old - m_new)` and adds `p * v` (where the row's chunks do not
//!    divide 128 — head dims 80 and 96 — the threads left over sit this phase out);
//! 3. the token lanes' accumulators are summed through shared memory and written: normalised
//!    when the grid has one split, else as partials for the combine kernel.
//!
//! The tensor-core form (`kiln_attn_mma`, f16/bf16) serves prefills: one block per (sequence,
//! block of `64 / group` queries, KV head); its 64 rows are (query, head) pairs, 16 per warp.
//! Per tile of 64 keys, the block copies the keys' K and V rows (found through the block
//! table) into shared memory with `cp.async` (keys past the causal end zero-filled), then each
//! warp computes its 16×64 scores with `mma.m16n8k16` (K fragments by `ldmatrix`), applies the
//! scale, the modifier and the causal mask in registers, updates the online softmax, and adds
//! P·V with P taken straight from the score registers (V fragments by `ldmatrix.trans`).
//!
//! FP8 KV pools (`KT = kiln_e4m3`, f16 / bf16 queries): the same kernels read e4m3 bytes — the
//! split kernel's score phase loads 16-byte pieces of a key row (16 values), its value phase
//! 8-byte chunks (8 values, as one 16-byte chunk of a half pool), and both widen them exactly
//! to f32 (one conversion instruction per byte pair from sm_89); the tensor-core kernel loads
//! them with plain loads and widens them into its shared tiles as T (every e4m3 value is exact
//! in f16 and bf16). A pool's K scale is folded
//! into `scale` by the caller and its V scale (`v_scale`, 1 for T pools) multiplies the
//! weighted sum once, before normalisation or the partials.
//!
//! Invariants: every barrier is reached by all threads (the tile loop's bounds are uniform
//! across the block); every `-inf` is handled (`exp2(-inf) = 0`, and a maximum of `-inf` is
//! replaced by 0 before it is subtracted), so a fully masked row gives zeros, never NaN.

pub const TEMPLATE: &str = r#"#ifndef KILN_ATTN_TEMPLATE
#define KILN_ATTN_TEMPLATE
#define KILN_ATTN_THREADS 128
#define KILN_ATTN_TILE 128
#define KILN_LOG2E 1.4426950408889634f

// An FP8 KV-cache element is a `kiln_e4m3` (the prelude's): the pools of a
// `--kv-cache-dtype fp8` cache hold these bytes, the value being e4m3 × the layer's K or V
// scale (the runtime folds the K scale into `scale` and passes the V scale as `v_scale`).

// Four e4m3 bytes (byte i of `w` is element i) as exact floats. From sm_89 one conversion
// instruction turns a byte pair into an f16 pair (every e4m3 value is exact in f16; the upper
// byte goes to the upper half) and the halves widen on the FMA pipe: 1.5 instructions a value,
// where the bit-field form below takes 4-5 (it serves older archs; NaN bytes, which the store
// kernel never writes, read as 480 there).
__device__ __forceinline__ void kiln_e4m3x4_to_f32(unsigned w, float& f0, float& f1, float& f2, float& f3) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("{ .reg .b16 a, b, x0, x1, y0, y1; .reg .b32 x, y;\n"
      "  mov.b32 {a, b}, %4;\n"
      "  cvt.rn.f16x2.e4m3x2 x, a;\n"
      "  cvt.rn.f16x2.e4m3x2 y, b;\n"
      "  mov.b32 {x0, x1}, x;\n"
      "  mov.b32 {y0, y1}, y;\n"
      "  cvt.f32.f16 %0, x0; cvt.f32.f16 %1, x1; cvt.f32.f16 %2, y0; cvt.f32.f16 %3, y1; }"
      : "=f"(f0), "=f"(f1), "=f"(f2), "=f"(f3) : "r"(w));
#else
  f0 = kiln_e4m3_to_f32(w & 0xffu);
  f1 = kiln_e4m3_to_f32((w >> 8) & 0xffu);
  f2 = kiln_e4m3_to_f32((w >> 16) & 0xffu);
  f3 = kiln_e4m3_to_f32(w >> 24);
#endif
}

// One chunk of a key or value row: VEC = 16 / sizeof(T) elements of the pool type KT, moved
// in one access (16 bytes for a T pool, VEC bytes for e4m3) and widened to floats. The score
// phase reads whole 16-byte pieces of a key row instead (`KVEC` = 16 / sizeof(KT) elements:
// two chunks of an e4m3 row), through `widen16`.
template <typename T, typename KT> struct kiln_kv_chunk;
template <typename T> struct kiln_kv_chunk<T, T> {
  static constexpr int VEC = 16 / (int)sizeof(T);
  static constexpr int KVEC = VEC;
  typedef uint4 raw;
  static __device__ __forceinline__ void widen(const raw& r, float (&f)[VEC]) {
    kiln_pack<T, VEC> p;
    p.raw = r;
#pragma unroll
    for (int i = 0; i < VEC; ++i) f[i] = kiln_to_f32(p.e[i]);
  }
  static __device__ __forceinline__ void widen16(const uint4& r, float (&f)[KVEC]) { widen(r, f); }
};
template <typename T> struct kiln_kv_chunk<T, kiln_e4m3> {
  static constexpr int VEC = 16 / (int)sizeof(T);
  static constexpr int KVEC = 16;
  typedef typename kiln_raw<VEC>::type raw;
  static __device__ __forceinline__ void widen(const raw& r, float (&f)[VEC]) {
    const unsigned* w = reinterpret_cast<const unsigned*>(&r);
#pragma unroll
    for (int i = 0; i < VEC / 4; ++i) kiln_e4m3x4_to_f32(w[i], f[4 * i], f[4 * i + 1], f[4 * i + 2], f[4 * i + 3]);
  }
  static __device__ __forceinline__ void widen16(const uint4& r, float (&f)[KVEC]) {
    kiln_e4m3x4_to_f32(r.x, f[0], f[1], f[2], f[3]);
    kiln_e4m3x4_to_f32(r.y, f[4], f[5], f[6], f[7]);
    kiln_e4m3x4_to_f32(r.z, f[8], f[9], f[10], f[11]);
    kiln_e4m3x4_to_f32(r.w, f[12], f[13], f[14], f[15]);
  }
};

// f32 to the storage type, rounding to nearest even.
template <typename T> __device__ __forceinline__ T kiln_narrow(float x);
template <> __device__ __forceinline__ float kiln_narrow<float>(float x) { return x; }
template <> __device__ __forceinline__ kiln_f16 kiln_narrow<kiln_f16>(float x) { return kiln_f32_to_f16(x); }
template <> __device__ __forceinline__ kiln_bf16 kiln_narrow<kiln_bf16>(float x) { return kiln_f32_to_bf16(x); }

__device__ __forceinline__ float kiln_attn_warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float kiln_attn_warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T, typename KT, int HD, int G, typename Mod>
__device__ __forceinline__ void kiln_attn_split(
    const T* __restrict__ q, int q_stride,
    const KT* __restrict__ k_pool, const KT* __restrict__ v_pool, int kv_stride,
    const int* __restrict__ plan, int n_tokens, int n_seqs, int bt_stride, int block_size,
    int n_heads, int n_kv_heads, float scale, float v_scale,
    T* __restrict__ out, int out_stride,
    float* __restrict__ part_o, float* __restrict__ part_ml, int n_splits, int window, const Mod mod) {
  typedef kiln_kv_chunk<T, KT> kv;
  typedef typename kv::raw kv_raw;
  constexpr int VEC = kv::VEC;                 // elements per access (16 bytes of T)
  constexpr int NCH = HD / VEC;                // 16-byte chunks per head row
  // Token lanes of the value phase: threads (c, tl) with tl < TL; when NCH does not divide the
  // block (head dims 80 and 96: 10 and 12 chunks) the last KILN_ATTN_THREADS % NCH threads sit
  // the value phase out.
  constexpr int TL = KILN_ATTN_THREADS / NCH;
  constexpr int VSTEPS = (KILN_ATTN_TILE + TL - 1) / TL;  // keys of a tile per token lane
  // The score phase reads a key row in KNCH pieces of 16 bytes (KVEC elements each), KB of them
  // loaded before they are used: a divisor of KNCH, at most 8.
  constexpr int KVEC = kv::KVEC;
  constexpr int KNCH = HD / KVEC;
  constexpr int KB = KNCH % 8 == 0 ? 8 : KNCH < 8 ? KNCH : KNCH % 4 == 0 ? 4 : KNCH % 5 == 0 ? 5 : 2;
  constexpr int VPF = VSTEPS < 16 ? VSTEPS : 16;  // values loaded ahead
  static_assert(HD % VEC == 0 && HD % KVEC == 0 && NCH <= KILN_ATTN_THREADS && KNCH % KB == 0,
                "head dim does not tile the block");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tok = blockIdx.x;
  const int group = n_heads / n_kv_heads;
  const int chunks = (group + G - 1) / G;
  const int kvh = blockIdx.y / chunks;
  const int g0 = (blockIdx.y % chunks) * G;
  const int ng = min(G, group - g0);  // query heads this block serves
  const int h0 = kvh * group + g0;    // the first of them
  const int split = blockIdx.z;
  const int* __restrict__ tok_seq = plan + 1;
  const int* __restrict__ tok_pos = tok_seq + n_tokens;
  const int* __restrict__ tables = tok_pos + n_tokens + n_seqs;
  const int seq = tok_seq[tok];
  const int limit = seq < 0 ? 0 : tok_pos[tok] + 1;  // causal: keys 0 ..= q_pos
  const int q_pos = limit - 1;
  const long long part = plan[0];
  // A key window: only keys q_pos - window < key <= q_pos are visited (the splits cover them
  // from the window's start; splits past the query's last key do nothing).
  const int lo = (window > 0 && limit > window) ? limit - window : 0;
  const int k_begin = (int)min((long long)lo + split * part, (long long)limit);
  const int k_end = (int)min((long long)limit, (long long)k_begin + part);
  const int* __restrict__ table = tables + (long long)(seq < 0 ? 0 : seq) * bt_stride;

  __shared__ float q_s[G][HD];
  __shared__ float p_s[G][KILN_ATTN_TILE];
  __shared__ int slot_s[KILN_ATTN_TILE];
  __shared__ float m_s[G], l_s[G], alpha_s[G];
  __shared__ float red_s[TL][G][HD];

  for (int i = tid; i < G * HD; i += KILN_ATTN_THREADS) {
    const int g = i / HD, d = i - g * HD;
    q_s[g][d] = g < ng ? kiln_to_f32(q[(long long)tok * q_stride + (h0 + g) * HD + d]) * scale : 0.0f;
  }
  if (tid < G) {
    m_s[tid] = -kiln_inf();
    l_s[tid] = 0.0f;
    alpha_s[tid] = 1.0f;
  }
  const int c = tid % NCH, tl = tid / NCH;  // value phase: chunk c of the head row, token lane tl
  const bool vlane = tl < TL;                // this thread has a value-phase lane
  float acc[G][VEC];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[g][e] = 0.0f;
  __syncthreads();

  for (int t0 = k_begin; t0 < k_end; t0 += KILN_ATTN_TILE) {
    const int key = t0 + tid;
    const int n = min(KILN_ATTN_TILE, k_end - t0);  // keys in this tile
    if (key < k_end) slot_s[tid] = table[key / block_size] * block_size + key % block_size;
    __syncthreads();
    // ---- this lane's values of the tile, loaded now: they do not depend on the scores, so
    // the K and V reads of the tile are in flight together ----
    kv_raw vraw[VPF];
#pragma unroll
    for (int jj = 0; jj < VPF; ++jj) {
      const int j = tl + jj * TL;
      if (vlane && j < n) vraw[jj] = *reinterpret_cast<const kv_raw*>(v_pool + (long long)slot_s[j] * kv_stride + kvh * HD + c * VEC);
    }

    // ---- score phase: thread tid scores key t0 + tid against every served head ----
    float s[G];
    if (key < k_end) {
      const uint4* __restrict__ kr = reinterpret_cast<const uint4*>(k_pool + (long long)slot_s[tid] * kv_stride + kvh * HD);
      float dot[G];
#pragma unroll
      for (int g = 0; g < G; ++g) dot[g] = 0.0f;
#pragma unroll
      for (int jb = 0; jb < KNCH; jb += KB) {
        uint4 kraw[KB];
#pragma unroll
        for (int j = 0; j < KB; ++j) kraw[j] = kr[jb + j];
#pragma unroll
        for (int j = 0; j < KB; ++j) {
          float kf[KVEC];
          kv::widen16(kraw[j], kf);
#pragma unroll
          for (int g = 0; g < G; ++g)
#pragma unroll
            for (int e = 0; e < KVEC; ++e) dot[g] = fmaf(q_s[g][(jb + j) * KVEC + e], kf[e], dot[g]);
        }
      }
#pragma unroll
      for (int g = 0; g < G; ++g) s[g] = g < ng ? mod(dot[g], q_pos, key, h0 + g) : -kiln_inf();
    } else {
#pragma unroll
      for (int g = 0; g < G; ++g) s[g] = -kiln_inf();
    }
#pragma unroll
    for (int g = 0; g < G; ++g) p_s[g][tid] = s[g];
    __syncthreads();

    // ---- softmax phase: warp w updates heads w, w + 4, ... ----
    for (int g = warp; g < ng; g += KILN_ATTN_THREADS / 32) {
      float mx = -kiln_inf();
      for (int j = lane; j < KILN_ATTN_TILE; j += 32) mx = fmaxf(mx, p_s[g][j]);
      mx = kiln_attn_warp_max(mx);
      const float m_old = m_s[g];
      const float m_new = fmaxf(m_old, mx);
      const float m_use = m_new == -kiln_inf() ? 0.0f : m_new;  // every key so far is masked
      float sum = 0.0f;
      for (int j = lane; j < KILN_ATTN_TILE; j += 32) {
        const float e = exp2f((p_s[g][j] - m_use) * KILN_LOG2E);
        p_s[g][j] = e;
        sum += e;
      }
      sum = kiln_attn_warp_sum(sum);
      if (lane == 0) {
        const float alpha = exp2f((m_old - m_use) * KILN_LOG2E);
        alpha_s[g] = alpha;
        l_s[g] = l_s[g] * alpha + sum;
        m_s[g] = m_new;
      }
    }
    __syncthreads();

    // ---- value phase: rescale, then add p * v over this lane's keys of the tile ----
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float alpha = alpha_s[g];
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[g][e] *= alpha;
    }
#pragma unroll
    for (int jj = 0; jj < VSTEPS; ++jj) {
      const int j = tl + jj * TL;
      if (vlane && j < n) {
        const kv_raw vr = jj < VPF ? vraw[jj < VPF ? jj : 0]
                                   : *reinterpret_cast<const kv_raw*>(v_pool + (long long)slot_s[j] * kv_stride + kvh * HD + c * VEC);
        float vf[VEC];
        kv::widen(vr, vf);
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float p = g < ng ? p_s[g][j] : 0.0f;
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[g][e] = fmaf(p, vf[e], acc[g][e]);
        }
      }
    }
    __syncthreads();  // the next tile overwrites slot_s and p_s
  }

  // ---- merge the token lanes, then write ----
  if (vlane)
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int e = 0; e < VEC; ++e) red_s[tl][g][c * VEC + e] = acc[g][e];
  __syncthreads();
  for (int i = tid; i < ng * HD; i += KILN_ATTN_THREADS) {
    const int g = i / HD, d = i - g * HD;
    float o = 0.0f;
#pragma unroll
    for (int j = 0; j < TL; ++j) o += red_s[j][g][d];
    o *= v_scale;  // the values' scale (1 for a T pool), applied once to their weighted sum
    const int h = h0 + g;
    if (n_splits == 1) {
      const float l = l_s[g];
      out[(long long)tok * out_stride + h * HD + d] = kiln_narrow<T>(l > 0.0f ? o / l : 0.0f);
    } else {
      const long long pi = ((long long)tok * n_heads + h) * n_splits + split;
      part_o[pi * HD + d] = o;
      if (d == 0) {
        part_ml[2 * pi] = m_s[g];
        part_ml[2 * pi + 1] = l_s[g];
      }
    }
  }
}

// Merges the splits of one (token, head): blockDim.x == HD, one thread per output column.
template <typename T, int HD>
__device__ __forceinline__ void kiln_attn_combine(
    const float* __restrict__ part_o, const float* __restrict__ part_ml, int n_splits, int n_heads,
    T* __restrict__ out, int out_stride) {
  const int tok = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  if (d >= HD) return;
  const long long base = ((long long)tok * n_heads + h) * n_splits;
  float m = -kiln_inf();
  for (int s = 0; s < n_splits; ++s) m = fmaxf(m, part_ml[2 * (base + s)]);
  const float m_use = m == -kiln_inf() ? 0.0f : m;
  float l = 0.0f, o = 0.0f;
  for (int s = 0; s < n_splits; ++s) {
    const float w = exp2f((part_ml[2 * (base + s)] - m_use) * KILN_LOG2E);
    l = fmaf(w, part_ml[2 * (base + s) + 1], l);
    o = fmaf(w, part_o[(base + s) * HD + d], o);
  }
  out[(long long)tok * out_stride + h * HD + d] = kiln_narrow<T>(l > 0.0f ? o / l : 0.0f);
}

// ---- the tensor-core form (f16 / bf16 storage): one block per (sequence, block of queries,
// KV head); rows are (query token, query head) pairs, 16 per warp, 64 per block. ----
#define KILN_MMA_KEYS 64

template <typename T> struct kiln_mma_ops;
template <> struct kiln_mma_ops<kiln_bf16> {
  static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // Two f32 to one register of two halves: `lo` in the low 16 bits (the lower column).
  static __device__ __forceinline__ unsigned pack(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
};
template <> struct kiln_mma_ops<kiln_f16> {
  static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ unsigned pack(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
};

__device__ __forceinline__ unsigned kiln_smem_addr(const void* p) {
  unsigned a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}
// 16 bytes global -> shared, asynchronously; zero-filled when !ok (nothing is read then).
__device__ __forceinline__ void kiln_cp16(void* smem, const void* gmem, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(kiln_smem_addr(smem)), "l"(gmem), "r"(ok ? 16 : 0));
}
// One chunk of a K / V tile (8 elements) into shared memory: a T pool's 16 bytes by cp.async;
// an e4m3 pool's 8 bytes loaded and widened to T (exact: every e4m3 value is an f16 and a bf16).
template <typename T>
__device__ __forceinline__ void kiln_mma_fill(T* smem, const T* gmem, bool ok) {
  kiln_cp16(smem, gmem, ok);
}
template <typename T>
__device__ __forceinline__ void kiln_mma_fill(T* smem, const kiln_e4m3* gmem, bool ok) {
  const uint2 r = ok ? *reinterpret_cast<const uint2*>(gmem) : make_uint2(0u, 0u);
  float f[8];
  kiln_e4m3x4_to_f32(r.x, f[0], f[1], f[2], f[3]);
  kiln_e4m3x4_to_f32(r.y, f[4], f[5], f[6], f[7]);
  kiln_pack<T, 8> p;
#pragma unroll
  for (int i = 0; i < 8; ++i) p.e[i] = kiln_narrow<T>(f[i]);
  *reinterpret_cast<uint4*>(smem) = p.raw;
}
__device__ __forceinline__ void kiln_ldsm4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(kiln_smem_addr(p)));
}
__device__ __forceinline__ void kiln_ldsm4_t(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(kiln_smem_addr(p)));
}

// Where chunk c of key row r sits in a K / V tile, in chunks. Rows of a multiple of 8 chunks:
// chunk c at c ^ (r & 7), so the 8 rows an ldmatrix reads at one logical chunk fall in 8
// different bank groups. Other rows (head dims 80 and 96: 10 and 12 chunks) are padded to an
// odd pitch, which spreads 8 consecutive rows over the 8 bank groups the same way.
template <int NCH> struct kiln_mma_tile {
  static constexpr int PITCH = NCH % 8 == 0 ? NCH : (NCH | 1);
  static __device__ __forceinline__ int chunk(int r, int c) { return r * PITCH + (NCH % 8 == 0 ? (c ^ (r & 7)) : c); }
};

// items: 4 ints per block of queries: sequence (-1: padding tokens, written as zeros), batch
// row of its first query, queries in the block (<= 64 / group), position of the first query. grid = (n_items, n_kv_heads), 128 threads.
template <typename T, typename KT, int HD, typename Mod>
__device__ __forceinline__ void kiln_attn_mma(
    const T* __restrict__ q, int q_stride,
    const KT* __restrict__ k_pool, const KT* __restrict__ v_pool, int kv_stride,
    const int* __restrict__ plan, int n_tokens, int n_seqs, int bt_stride, int block_size,
    int n_heads, int n_kv_heads, float scale, float v_scale,
    T* __restrict__ out, int out_stride, const int* __restrict__ items, int window, const Mod mod) {
  typedef kiln_mma_ops<T> ops;
  constexpr int VEC = 8;           // halves per 16-byte chunk
  constexpr int NCH = HD / VEC;    // chunks per key row
  constexpr int KS = HD / 16;      // k-steps of q·k
  typedef kiln_mma_tile<NCH> tile;
  static_assert(NCH >= 8 && NCH % 2 == 0, "head dim must be a multiple of 16, at least 64");
  // K and V tiles of KILN_MMA_KEYS rows, laid out by kiln_mma_tile.
  __shared__ __align__(128) T k_s[KILN_MMA_KEYS * tile::PITCH * VEC];
  __shared__ __align__(128) T v_s[KILN_MMA_KEYS * tile::PITCH * VEC];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, tq = lane & 3;  // mma fragment coordinates: row group, column pair
  const int* __restrict__ item = items + 4 * blockIdx.x;
  const int seq = item[0], row0 = item[1], nq = item[2], pos0 = item[3];
  const int kvh = blockIdx.y;
  const int group = n_heads / n_kv_heads;
  const int* __restrict__ table = plan + 1 + 2 * n_tokens + n_seqs + (long long)seq * bt_stride;
  const int kv_end = pos0 + nq;  // causal: the last query sees keys < pos0 + nq
  const int rows = nq * group;   // valid rows of this block
  if (seq < 0) {  // padding tokens: zeros (the whole block takes this branch, before any barrier)
    for (int i = tid; i < rows * HD; i += KILN_ATTN_THREADS) {
      const int r = i / HD, d = i - r * HD;
      out[(long long)(row0 + r / group) * out_stride + (kvh * group + r % group) * HD + d] = kiln_narrow<T>(0.0f);
    }
    return;
  }

  // This thread's two rows (gq and gq + 8 of the warp): token, head, position, validity.
  int r_tok[2], r_head[2], r_pos[2];
  bool r_ok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + gq + 8 * h;
    r_ok[h] = r < rows;
    r_tok[h] = r_ok[h] ? r / group : 0;
    r_head[h] = kvh * group + (r_ok[h] ? r % group : 0);
    r_pos[h] = pos0 + r_tok[h];
  }
  // q as A fragments for every k-step (zeros for invalid rows).
  unsigned qa[KS][4];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = i & 1;  // registers 0, 2: row gq; 1, 3: row gq + 8
      const int col = kk * 16 + 2 * tq + (i >> 1) * 8;
      const T* src = q + (long long)(row0 + r_tok[h]) * q_stride + r_head[h] * HD + col;
      qa[kk][i] = r_ok[h] ? *reinterpret_cast<const unsigned*>(src) : 0u;
    }
  }
  float o[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[d][e] = 0.0f;
  float m[2] = {-kiln_inf(), -kiln_inf()}, l[2] = {0.0f, 0.0f};

  // A key window: tiles start at the first query's first visible key (tile-aligned); keys of a
  // tile outside a row's own window are masked below.
  const int k_first = (window > 0 && pos0 + 1 > window) ? (pos0 + 1 - window) / KILN_MMA_KEYS * KILN_MMA_KEYS : 0;
  for (int k0 = k_first; k0 < kv_end; k0 += KILN_MMA_KEYS) {
    // ---- the tile's K and V rows, paged, into shared memory ----
#pragma unroll
    for (int it = 0; it < KILN_MMA_KEYS * NCH / KILN_ATTN_THREADS; ++it) {
      const int idx = tid + it * KILN_ATTN_THREADS;
      const int r = idx / NCH, c = idx % NCH;
      const int key = k0 + r;
      const bool ok = key < kv_end;
      const long long slot = ok ? (long long)table[key / block_size] * block_size + key % block_size : 0;
      const long long g = slot * kv_stride + kvh * HD + c * VEC;
      const int sidx = tile::chunk(r, c) * VEC;
      kiln_mma_fill<T>(&k_s[sidx], k_pool + g, ok);
      kiln_mma_fill<T>(&v_s[sidx], v_pool + g, ok);
    }
    asm volatile("cp.async.commit_group;");
    asm volatile("cp.async.wait_group 0;");
    __syncthreads();

    if (warp * 16 < rows) {
      // ---- S = q·kᵀ: 16 rows × 64 keys, 8 tiles of 8 keys ----
      float sc[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[n][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          const int i = lane >> 3, r = np * 16 + (i >> 1) * 8 + (lane & 7), c = 2 * kk + (i & 1);
          unsigned b[4];
          kiln_ldsm4(b, &k_s[tile::chunk(r, c) * VEC]);
          ops::mma(sc[2 * np], qa[kk], b[0], b[1]);
          ops::mma(sc[2 * np + 1], qa[kk], b[2], b[3]);
        }
      }
      // ---- scale, modifier, causal mask; online softmax per row ----
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -kiln_inf();
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int key = k0 + n * 8 + 2 * tq + e;
            float x = sc[n][2 * h + e] * scale;
            const bool seen = key <= r_pos[h] && (window <= 0 || r_pos[h] - key < window);
            x = (r_ok[h] && seen) ? mod(x, r_pos[h], key, r_head[h]) : -kiln_inf();
            sc[n][2 * h + e] = x;
            mx = fmaxf(mx, x);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[h], mx);
        const float m_use = m_new == -kiln_inf() ? 0.0f : m_new;
        const float alpha = exp2f((m[h] - m_use) * KILN_LOG2E);
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = exp2f((sc[n][2 * h + e] - m_use) * KILN_LOG2E);
            sc[n][2 * h + e] = p;
            sum += p;
          }
        l[h] = l[h] * alpha + sum;  // this thread's columns; the row's 4 threads add up at the end
        m[h] = m_new;
#pragma unroll
        for (int d = 0; d < HD / 8; ++d) {
          o[d][2 * h] *= alpha;
          o[d][2 * h + 1] *= alpha;
        }
      }
      // ---- O += P·V: P from the score registers, V fragments transposed by ldmatrix ----
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const unsigned pa[4] = {ops::pack(sc[2 * j][0], sc[2 * j][1]), ops::pack(sc[2 * j][2], sc[2 * j][3]),
                                ops::pack(sc[2 * j + 1][0], sc[2 * j + 1][1]), ops::pack(sc[2 * j + 1][2], sc[2 * j + 1][3])};
#pragma unroll
        for (int dp = 0; dp < HD / 16; ++dp) {
          const int i = lane >> 3, r = j * 16 + (i & 1) * 8 + (lane & 7), c = 2 * dp + (i >> 1);
          unsigned b[4];
          kiln_ldsm4_t(b, &v_s[tile::chunk(r, c) * VEC]);
          ops::mma(o[2 * dp], pa, b[0], b[1]);
          ops::mma(o[2 * dp + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next tile overwrites k_s and v_s
  }

  // ---- normalise and write this thread's two rows ----
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float lt = l[h];
    lt += __shfl_xor_sync(0xffffffffu, lt, 1);
    lt += __shfl_xor_sync(0xffffffffu, lt, 2);
    const float inv = lt > 0.0f ? v_scale / lt : 0.0f;  // the values' scale rides on the normalisation
    if (r_ok[h]) {
      T* dst = out + (long long)(row0 + r_tok[h]) * out_stride + r_head[h] * HD + 2 * tq;
#pragma unroll
      for (int d = 0; d < HD / 8; ++d)
        *reinterpret_cast<unsigned*>(dst + d * 8) = ops::pack(o[d][2 * h] * inv, o[d][2 * h + 1] * inv);
    }
  }
}
#endif  // KILN_ATTN_TEMPLATE
"#;
