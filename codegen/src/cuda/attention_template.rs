//! The hand-written part of every attention `.cu` file: the split (flash-decoding) kernel and
//! the combine kernel as C++ templates over the storage type `T`, the head dim `HD`, the
//! group cap `G` and the score modifier `Mod` (a functor the emitter writes from the IR). The
//! calling convention is [`crate::attention::abi`]'s.
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
//!    accumulators by `exp(m_old - m_new)` and adds `p * v`;
//! 3. the token lanes' accumulators are summed through shared memory and written: normalised
//!    when the grid has one split, else as partials for the combine kernel.
//!
//! Invariants: every barrier is reached by all threads (the tile loop's bounds are uniform
//! across the block); every `-inf` is handled (`exp2(-inf) = 0`, and a maximum of `-inf` is
//! replaced by 0 before it is subtracted), so a fully masked row gives zeros, never NaN.

pub const TEMPLATE: &str = r#"#ifndef KILN_ATTN_TEMPLATE
#define KILN_ATTN_TEMPLATE
#define KILN_ATTN_THREADS 128
#define KILN_ATTN_TILE 128
#define KILN_LOG2E 1.4426950408889634f

// 16 bytes of T, widened to floats.
template <typename T>
__device__ __forceinline__ void kiln_widen16(const uint4& raw, float (&f)[16 / sizeof(T)]) {
  kiln_pack<T, 16 / sizeof(T)> p;
  p.raw = raw;
#pragma unroll
  for (int i = 0; i < (int)(16 / sizeof(T)); ++i) f[i] = kiln_to_f32(p.e[i]);
}

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

template <typename T, int HD, int G, typename Mod>
__device__ __forceinline__ void kiln_attn_split(
    const T* __restrict__ q, int q_stride,
    const T* __restrict__ k_pool, const T* __restrict__ v_pool, int kv_stride,
    const int* __restrict__ plan, int n_tokens, int n_seqs, int bt_stride, int block_size,
    int n_heads, int n_kv_heads, float scale,
    T* __restrict__ out, int out_stride,
    float* __restrict__ part_o, float* __restrict__ part_ml, int n_splits, const Mod mod) {
  constexpr int VEC = 16 / (int)sizeof(T);    // elements per 16-byte access
  constexpr int NCH = HD / VEC;                // 16-byte chunks per head row
  constexpr int TL = KILN_ATTN_THREADS / NCH;  // token lanes of the value phase
  constexpr int KB = NCH < 8 ? NCH : 8;        // chunks of a key loaded before they are used
  constexpr int VPF = KILN_ATTN_TILE / TL < 16 ? KILN_ATTN_TILE / TL : 16;  // values loaded ahead
  static_assert(HD % VEC == 0 && KILN_ATTN_THREADS % NCH == 0 && NCH % KB == 0, "head dim does not tile the block");
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
  const int k_begin = (int)min((long long)split * part, (long long)limit);
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
    uint4 vraw[VPF];
#pragma unroll
    for (int jj = 0; jj < VPF; ++jj) {
      const int j = tl + jj * TL;
      if (j < n) vraw[jj] = *reinterpret_cast<const uint4*>(v_pool + (long long)slot_s[j] * kv_stride + kvh * HD + c * VEC);
    }

    // ---- score phase: thread tid scores key t0 + tid against every served head ----
    float s[G];
    if (key < k_end) {
      const uint4* __restrict__ kr = reinterpret_cast<const uint4*>(k_pool + (long long)slot_s[tid] * kv_stride + kvh * HD);
      float dot[G];
#pragma unroll
      for (int g = 0; g < G; ++g) dot[g] = 0.0f;
#pragma unroll
      for (int jb = 0; jb < NCH; jb += KB) {
        uint4 kraw[KB];
#pragma unroll
        for (int j = 0; j < KB; ++j) kraw[j] = kr[jb + j];
#pragma unroll
        for (int j = 0; j < KB; ++j) {
          float kf[VEC];
          kiln_widen16<T>(kraw[j], kf);
#pragma unroll
          for (int g = 0; g < G; ++g)
#pragma unroll
            for (int e = 0; e < VEC; ++e) dot[g] = fmaf(q_s[g][(jb + j) * VEC + e], kf[e], dot[g]);
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
    for (int jj = 0; jj < KILN_ATTN_TILE / TL; ++jj) {
      const int j = tl + jj * TL;
      if (j < n) {
        const uint4 vr = jj < VPF ? vraw[jj < VPF ? jj : 0]
                                  : *reinterpret_cast<const uint4*>(v_pool + (long long)slot_s[j] * kv_stride + kvh * HD + c * VEC);
        float vf[VEC];
        kiln_widen16<T>(vr, vf);
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
#endif  // KILN_ATTN_TEMPLATE
"#;
