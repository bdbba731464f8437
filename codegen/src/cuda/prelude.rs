//! The self-contained prelude of every generated `.cu` file.
//!
//! Invariants:
//! - no `#include`: NVRTC ships no toolkit headers, and a user's machine may have a driver but
//!   no toolkit. Only what NVRTC provides built in is used: the vector types (`uint2`, `uint4`),
//!   warp shuffles, barriers, `__trap`, bit casts and the precise CUDA math functions;
//! - f16/bf16 are storage types (structs of their IEEE bits); arithmetic runs in f32. Narrowing
//!   rounds to nearest even like the CPU backend (`half::{f16,bf16}::from_f32`);
//! - every section sits behind an include guard, so several kernels' sources can be joined
//!   into one module without redefinitions;
//! - block reductions give every thread the same bits (each warp reduces the same partials in
//!   the same order, and the butterfly's `a+b` / `b+a` pairs are equal), so values derived from
//!   them are uniform across the block. They need `blockDim.x` to be a multiple of 32 (the ABI's
//!   launch rule) and reuse one `__shared__ float[32]`, guarded by a barrier before each write.
//!
//! Sections are included only when a kernel uses them ([`Sections`]); each compiles on its
//! own on top of [`CORE`] (checked by the NVRTC test through [`full`]).

use crate::abi::MAX_ITERS;

/// Which optional sections a kernel needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sections {
    pub reduce: bool,
    /// The argmax reduction (on top of `reduce`'s shuffles and barriers).
    pub argmax: bool,
    pub rope: bool,
}

/// Storage types, conversions, vector memory access and the fixed-loop bound.
pub const CORE: &str = r#"#ifndef KILN_PRELUDE_CORE
#define KILN_PRELUDE_CORE
// f16 / bf16 are storage types: their IEEE bits. Distinct structs (not typedefs of one
// integer type) so that the conversion overloads below are chosen by type.
struct __align__(2) kiln_f16 { unsigned short bits; };
struct __align__(2) kiln_bf16 { unsigned short bits; };

__device__ __forceinline__ float kiln_to_f32(float x) { return x; }
__device__ __forceinline__ float kiln_to_f32(kiln_f16 x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}
// bf16 is the upper half of an f32, so widening is an exact shift on every arch
// (cvt.f32.bf16 exists only from sm_90; the shift gives the same bits there too).
__device__ __forceinline__ float kiln_to_f32(kiln_bf16 x) {
  return __uint_as_float(((unsigned int)x.bits) << 16);
}
// Narrowing rounds to nearest even (cvt.rn; bf16 needs sm_80+).
__device__ __forceinline__ kiln_f16 kiln_f32_to_f16(float x) {
  kiln_f16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
  return h;
}
__device__ __forceinline__ kiln_bf16 kiln_f32_to_bf16(float x) {
  kiln_bf16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
  return h;
}
__device__ __forceinline__ float kiln_inf() { return __int_as_float(0x7f800000); }

// FP8 (OCP e4m3) is a storage type too: a byte (quantized activations, FP8 KV pools).
struct __align__(1) kiln_e4m3 { unsigned char bits; };
// The exact value of an e4m3 byte: its exponent and mantissa moved into an f32's fields give
// the value × 2^-120 (subnormals too, as f32 denormals), so one multiply by 2^120 restores it.
__device__ __forceinline__ float kiln_e4m3_to_f32(unsigned b) {
  return __int_as_float(((b & 0x80u) << 24) | ((b & 0x7fu) << 20)) * __int_as_float(0x7b800000);
}
__device__ __forceinline__ float kiln_to_f32(kiln_e4m3 x) { return kiln_e4m3_to_f32(x.bits); }
// f32 -> e4m3 byte: round to nearest even, |x| saturated to 448 (NaN too: fminf drops it), in
// software so the CPU backend's `f32_to_e4m3` has the same bits.
__device__ __forceinline__ unsigned kiln_f32_to_e4m3_bits(float x) {
  const unsigned s = (__float_as_uint(x) >> 24) & 0x80u;
  const float a = fminf(fabsf(x), 448.0f);
  unsigned b;
  if (a < 0.015625f) {  // below 2^-6: subnormal steps of 2^-9 (8 of them is 2^-6, byte 0x08)
    b = (unsigned)rintf(a * 512.0f);
  } else {
    const int e = (int)((__float_as_uint(a) >> 23) & 0xFF) - 127;  // 2^e <= a < 2^(e+1)
    const float q = rintf(a * __int_as_float((127 + 3 - e) << 23));  // 8..16 steps of 2^(e-3)
    b = (unsigned)((e + 7) << 3) + (unsigned)q - 8u;                  // q = 16 carries into e + 1
  }
  return s | b;
}
__device__ __forceinline__ kiln_e4m3 kiln_f32_to_e4m3(float x) {
  kiln_e4m3 r;
  r.bits = (unsigned char)kiln_f32_to_e4m3_bits(x);
  return r;
}

// INT8 (symmetric, +-127) is a storage type of quantized activations too (INT8 W8A8).
struct __align__(1) kiln_i8 { signed char v; };
__device__ __forceinline__ float kiln_to_f32(kiln_i8 x) { return (float)x.v; }
// f32 -> int8: round to nearest even (cvt.rni: NaN -> 0), then saturate to +-127, as the CPU
// backend's `f32_to_i8`.
__device__ __forceinline__ kiln_i8 kiln_f32_to_i8(float x) {
  const int q = __float2int_rn(x);
  kiln_i8 r;
  r.v = (signed char)(q < -127 ? -127 : (q > 127 ? 127 : q));
  return r;
}

// One memory access moves 1, 2, 4, 8 or 16 bytes: N elements of T seen as one raw word.
template <int BYTES> struct kiln_raw;
template <> struct kiln_raw<1> { typedef unsigned char type; };
template <> struct kiln_raw<2> { typedef unsigned short type; };
template <> struct kiln_raw<4> { typedef unsigned int type; };
template <> struct kiln_raw<8> { typedef uint2 type; };
template <> struct kiln_raw<16> { typedef uint4 type; };
template <typename T, int N> union kiln_pack {
  typename kiln_raw<sizeof(T) * N>::type raw;
  T e[N];
};
// dst[0..N) = src[0..N) in one access; src must be aligned to N * sizeof(T) bytes.
template <typename T, int N>
__device__ __forceinline__ void kiln_load(T (&dst)[N], const T* __restrict__ src) {
  kiln_pack<T, N> p;
  p.raw = *reinterpret_cast<const typename kiln_raw<sizeof(T) * N>::type*>(src);
#pragma unroll
  for (int i = 0; i < N; ++i) dst[i] = p.e[i];
}
// The N elements at src kept as one packed word (a cached row costs N * sizeof(T) bytes of
// registers, not N floats); src must be aligned to N * sizeof(T) bytes.
template <typename T, int N>
__device__ __forceinline__ void kiln_load_pack(kiln_pack<T, N>& dst, const T* __restrict__ src) {
  dst.raw = *reinterpret_cast<const typename kiln_raw<sizeof(T) * N>::type*>(src);
}
// dst[0..N) = src[0..N) in one access; dst must be aligned to N * sizeof(T) bytes.
template <typename T, int N>
__device__ __forceinline__ void kiln_store(T* __restrict__ dst, const T (&src)[N]) {
  kiln_pack<T, N> p;
#pragma unroll
  for (int i = 0; i < N; ++i) p.e[i] = src[i];
  *reinterpret_cast<typename kiln_raw<sizeof(T) * N>::type*>(dst) = p.raw;
}
#endif  // KILN_PRELUDE_CORE
"#;

/// Warp and block reductions.
pub const REDUCE: &str = r#"#ifndef KILN_PRELUDE_REDUCE
#define KILN_PRELUDE_REDUCE
// Butterfly over the warp: every lane ends with the same bits (a+b == b+a at each step).
__device__ __forceinline__ float kiln_warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float kiln_warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
// Block-wide reductions; `red` is a __shared__ float[32] reused by every reduction of the
// kernel. The first barrier keeps this write from racing the previous reduction's reads;
// after the second, every warp reduces all partials, so no broadcast barrier is needed.
// blockDim.x must be a multiple of 32.
__device__ __forceinline__ float kiln_block_sum(float x, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  x = kiln_warp_sum(x);
  __syncthreads();
  if (lane == 0) red[warp] = x;
  __syncthreads();
  return kiln_warp_sum(lane < nwarps ? red[lane] : 0.0f);
}
__device__ __forceinline__ float kiln_block_max(float x, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  x = kiln_warp_max(x);
  __syncthreads();
  if (lane == 0) red[warp] = x;
  __syncthreads();
  return kiln_warp_max(lane < nwarps ? red[lane] : -kiln_inf());
}
#endif  // KILN_PRELUDE_REDUCE
"#;

/// The argmax block reduction (needs [`REDUCE`]).
pub const ARGMAX: &str = r#"#ifndef KILN_PRELUDE_ARGMAX
#define KILN_PRELUDE_ARGMAX
// Argmax: the larger value wins, equal values the lower column. That is a total order on
// (value, column) pairs (NaNs never enter: the accumulation skips them), so the butterfly
// gives every lane the same pair. `red_i` is a __shared__ int[32] beside `red`.
__device__ __forceinline__ void kiln_argmax_pick(float& v, int& c, float ov, int oc) {
  if (ov > v || (ov == v && oc < c)) { v = ov; c = oc; }
}
__device__ __forceinline__ void kiln_warp_argmax(float& v, int& c) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oc = __shfl_xor_sync(0xffffffffu, c, o);
    kiln_argmax_pick(v, c, ov, oc);
  }
}
__device__ __forceinline__ int kiln_block_argmax(float v, int c, float* red, int* red_i) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  kiln_warp_argmax(v, c);
  __syncthreads();
  if (lane == 0) { red[warp] = v; red_i[warp] = c; }
  __syncthreads();
  v = lane < nwarps ? red[lane] : -kiln_inf();
  c = lane < nwarps ? red_i[lane] : 0x7fffffff;
  kiln_warp_argmax(v, c);
  return c;
}
#endif  // KILN_PRELUDE_ARGMAX
"#;

/// RoPE: the CPU backend's formulas, with each row's cos/sin tabulated once per pair.
pub const ROPE: &str = r#"#ifndef KILN_PRELUDE_ROPE
#define KILN_PRELUDE_ROPE
// Llama-3 frequency scaling; `on == false` leaves inv_freq unchanged.
struct kiln_llama3 { bool on; float factor, low, high, orig; };
__device__ __forceinline__ kiln_llama3 kiln_llama3_off() {
  kiln_llama3 s = {false, 1.0f, 1.0f, 1.0f, 1.0f};
  return s;
}
__device__ __forceinline__ kiln_llama3 kiln_llama3_on(float factor, float low, float high, float orig) {
  kiln_llama3 s = {true, factor, low, high, orig};
  return s;
}
// Inverse frequency of rotation pair i of a head of head_dim columns.
__device__ __forceinline__ float kiln_rope_inv_freq(int i, float theta, int head_dim, kiln_llama3 s) {
  float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
  if (s.on) {
    const float wavelen = 2.0f * 3.14159265358979323846f / inv_freq;
    if (wavelen < s.orig / s.high) {
      // high frequency: unchanged
    } else if (wavelen > s.orig / s.low) {
      inv_freq = inv_freq / s.factor;
    } else {
      const float smooth = (s.orig / wavelen - s.low) / (s.high - s.low);
      inv_freq = (1.0f - smooth) * inv_freq / s.factor + smooth * inv_freq;
    }
  }
  return inv_freq;
}
// Rotation pairs per head a block can tabulate (head_dim <= 2 * KILN_ROPE_MAX_PAIRS).
#define KILN_ROPE_MAX_PAIRS 256
// This row's cos/sin of every rotation pair: the angle depends on (position, pair) only, so
// all heads of the row share one table and each pair's cosf/sinf is computed once per row
// instead of once per column. Ends with a barrier: call it where the whole block is present.
__device__ __forceinline__ void kiln_rope_table(float* __restrict__ cs, float* __restrict__ sn, int pos, float theta, int head_dim, kiln_llama3 s) {
  if (head_dim <= 0 || (head_dim & 1) || head_dim / 2 > KILN_ROPE_MAX_PAIRS) __trap();
  for (int i = (int)threadIdx.x; i < head_dim / 2; i += (int)blockDim.x) {
    const float angle = (float)pos * kiln_rope_inv_freq(i, theta, head_dim, s);
    cs[i] = cosf(angle);
    sn[i] = sinf(angle);
  }
  __syncthreads();
}
// kiln_rope_table with the inverse frequencies read from a table: pair i's is
// freqs[step * i], head 0's entry at the pair's first column (step 1 half-split, 2 interleaved).
__device__ __forceinline__ void kiln_rope_table_freqs(float* __restrict__ cs, float* __restrict__ sn, int pos, int head_dim, const float* __restrict__ freqs, int step) {
  if (head_dim <= 0 || (head_dim & 1) || head_dim / 2 > KILN_ROPE_MAX_PAIRS) __trap();
  for (int i = (int)threadIdx.x; i < head_dim / 2; i += (int)blockDim.x) {
    const float angle = (float)pos * freqs[step * i];
    cs[i] = cosf(angle);
    sn[i] = sinf(angle);
  }
  __syncthreads();
}
// The VEC columns c0 .. c0+VEC-1 of this thread (c0 % VEC == 0), rotated by this row's table.
// Column and partner are read with vector loads when the layout allows (the partner vector
// of a half-split pair is VEC-aligned when (head_dim/2) % VEC == 0; an interleaved partner
// sits in the same vector when VEC is even), else element by element.
template <int VEC, typename T>
__device__ __forceinline__ void kiln_rope_half_split(float (&out)[VEC], const T* __restrict__ x, int c0, int head_dim, const float* __restrict__ cs, const float* __restrict__ sn) {
  const int half = head_dim / 2;
  if (half % VEC == 0) {
    const int j0 = c0 % head_dim;
    const bool first = j0 < half;
    const int i0 = first ? j0 : j0 - half;
    T a[VEC], b[VEC];
    kiln_load(a, x + c0);
    kiln_load(b, x + (first ? c0 + half : c0 - half));
    #pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float xa = kiln_to_f32(a[e]), xb = kiln_to_f32(b[e]);
      out[e] = first ? xa * cs[i0 + e] - xb * sn[i0 + e] : xa * cs[i0 + e] + xb * sn[i0 + e];
    }
  } else {
    #pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const int c = c0 + e, j = c % head_dim;
      const bool first = j < half;
      const int i = first ? j : j - half;
      const float xa = kiln_to_f32(x[c]), xb = kiln_to_f32(x[first ? c + half : c - half]);
      out[e] = first ? xa * cs[i] - xb * sn[i] : xa * cs[i] + xb * sn[i];
    }
  }
}
// GPT-J / llama.cpp layout: column 2i pairs with 2i+1.
template <int VEC, typename T>
__device__ __forceinline__ void kiln_rope_interleaved(float (&out)[VEC], const T* __restrict__ x, int c0, int head_dim, const float* __restrict__ cs, const float* __restrict__ sn) {
  T a[VEC];
  kiln_load(a, x + c0);
  #pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const int c = c0 + e, i = (c % head_dim) / 2;
    const float xa = kiln_to_f32(a[e]);
    const float xb = (VEC % 2 == 0) ? kiln_to_f32(a[e ^ 1]) : kiln_to_f32(x[c ^ 1]);
    out[e] = (c & 1) == 0 ? xa * cs[i] - xb * sn[i] : xa * cs[i] + xb * sn[i];
  }
}
// The same rotations with the source given as a function of the column (a device lambda that
// evaluates a bias add or a norm's scale at any column), read element by element.
template <int VEC, typename F>
__device__ __forceinline__ void kiln_rope_half_split_of(float (&out)[VEC], F src, int c0, int head_dim, const float* __restrict__ cs, const float* __restrict__ sn) {
  const int half = head_dim / 2;
  #pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const int c = c0 + e, j = c % head_dim;
    const bool first = j < half;
    const int i = first ? j : j - half;
    const float xa = src(c), xb = src(first ? c + half : c - half);
    out[e] = first ? xa * cs[i] - xb * sn[i] : xa * cs[i] + xb * sn[i];
  }
}
template <int VEC, typename F>
__device__ __forceinline__ void kiln_rope_interleaved_of(float (&out)[VEC], F src, int c0, int head_dim, const float* __restrict__ cs, const float* __restrict__ sn) {
  #pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const int c = c0 + e, i = (c % head_dim) / 2;
    const float xa = src(c), xb = src(c ^ 1);
    out[e] = (c & 1) == 0 ? xa * cs[i] - xb * sn[i] : xa * cs[i] + xb * sn[i];
  }
}
#endif  // KILN_PRELUDE_ROPE
"#;

/// The fixed-loop bound of kernels with cached values (a macro: an unused constant would
/// draw a warning in kernels without cached values).
pub fn max_iters_define() -> String {
    format!("#ifndef KILN_MAX_ITERS\n#define KILN_MAX_ITERS {MAX_ITERS}\n#endif\n")
}

/// The prelude sections a kernel needs, in order.
pub fn parts(s: Sections) -> Vec<String> {
    let mut v = vec![CORE.to_string(), max_iters_define()];
    if s.reduce || s.argmax {
        v.push(REDUCE.to_string());
    }
    if s.argmax {
        v.push(ARGMAX.to_string());
    }
    if s.rope {
        v.push(ROPE.to_string());
    }
    v
}

/// Every section: what the NVRTC test compiles to prove the whole prelude is clean.
pub fn full() -> String {
    parts(Sections { reduce: true, argmax: true, rope: true }).concat()
}
