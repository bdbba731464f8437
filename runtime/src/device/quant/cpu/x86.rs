//! What the two AVX2 kernels share (`avx2.rs` on 16-bit activations, `avx2_q8.rs` on 8-bit):
//! F16C scale reads, the horizontal sum, the prefetch distance, and the unpacking of a
//! 32-value slice to 32 unsigned bytes, from which each kernel takes its own form (16-bit
//! lanes, or bytes for `maddubs`).
//!
//! Every function here must be called from a function with AVX2 and F16C enabled; the
//! unpackers read only inside one whole block (layouts in `blocks.rs`).

use crate::device::quant::blocks::half_fields;
use crate::device::quant::QuantFormat;
use std::arch::x86_64::*;

/// Bytes ahead of the current block to prefetch. A hint only (prefetching past the row's end
/// is harmless): the hardware prefetcher alone left the decode loop waiting on memory (40 tok/s
/// on the default model against 72 with 2 KB ahead; 0.5, 1 and 4 KB were slower).
pub(super) const PREFETCH: usize = 2048;

/// An IEEE half at `b[i..i + 2]` as f32, by the F16C instruction.
#[inline(always)]
pub(super) unsafe fn half(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// A block's f16 fields (`d`, and `m` / `dmin` or 0; see `blocks::half_fields`), converted
/// once per block.
#[inline(always)]
pub(super) unsafe fn block_halves(format: QuantFormat, b: &[u8]) -> [f32; 2] {
    let fields = half_fields(format);
    // Safety: the caller's F16C; the offsets lie inside the block.
    unsafe { [half(b, fields[0]), fields.get(1).map_or(0.0, |&at| half(b, at))] }
}

/// The sum of the 8 lanes.
#[inline(always)]
pub(super) fn hsum(a: __m256) -> f32 {
    // Safety: only called from functions with AVX2 enabled.
    unsafe {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }
}

/// 16 bytes of nibbles as 32 bytes: the low nibbles (values 0..15), then the high ones.
#[inline(always)]
pub(super) unsafe fn nibbles32(p: &[u8]) -> __m256i {
    // Safety (load): `p` holds at least 16 bytes (the callers pass a block's nibble bytes).
    let packed = unsafe { _mm_loadu_si128(p[..16].as_ptr() as *const __m128i) };
    let low4 = _mm_set1_epi8(0x0f);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low4), _mm_and_si128(packed, low4))
}

/// Byte j is 16 where bit j of `qh` is set, else 0 (a Q5 block's fifth bits).
#[inline(always)]
pub(super) fn fifth_bits(qh: u32) -> __m256i {
    // Safety: only called from functions with AVX2 enabled.
    unsafe {
        // Byte j takes byte j / 8 of `qh` (the shuffle works within each 128-bit half, and both
        // halves hold `qh`), then keeps bit j % 8.
        let v = _mm256_set1_epi32(qh as i32);
        let spread = _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
        let bytes = _mm256_shuffle_epi8(v, spread);
        let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), _mm256_set1_epi8(16))
    }
}

/// A Q5 block's 32 values as unsigned bytes (0..31): its nibbles at `at`, its fifth bits in the
/// u32 just before them.
#[inline(always)]
pub(super) unsafe fn q5_bytes(b: &[u8], at: usize) -> __m256i {
    let qh = u32::from_le_bytes([b[at - 4], b[at - 3], b[at - 2], b[at - 1]]);
    // Safety: the caller's; `at..at + 16` lies inside the block.
    unsafe { _mm256_or_si256(nibbles32(&b[at..at + 16]), fifth_bits(qh)) }
}

/// Slice `s` of a Q4_K, Q5_K or Q6_K super-block as 32 unsigned bytes: its `w` (see `blocks`),
/// except Q6_K's, which are `w + 32` (0..63).
#[inline(always)]
pub(super) unsafe fn k_slice_bytes(format: QuantFormat, b: &[u8], s: usize) -> __m256i {
    // Safety (loads): every range below lies inside one whole super-block.
    unsafe {
        let load = |at: usize| _mm256_loadu_si256(b[at..at + 32].as_ptr() as *const __m256i);
        let shift = |v: __m256i, n: usize| _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32));
        let low4 = _mm256_set1_epi8(0x0f);
        match format {
            QuantFormat::Q6_K => {
                let (n, k) = (s / 4, s % 4);
                let l = _mm256_and_si256(shift(load(64 * n + 32 * (k % 2)), 4 * (k / 2)), low4);
                let h = _mm256_and_si256(shift(load(128 + 32 * n), 2 * k), _mm256_set1_epi8(3));
                _mm256_or_si256(l, _mm256_slli_epi16(h, 4))
            }
            QuantFormat::Q4_K => _mm256_and_si256(shift(load(16 + 32 * (s / 2)), 4 * (s % 2)), low4),
            _ => {
                let v = _mm256_and_si256(shift(load(48 + 32 * (s / 2)), 4 * (s % 2)), low4);
                let h = _mm256_and_si256(shift(load(16), s), _mm256_set1_epi8(1));
                _mm256_or_si256(v, _mm256_slli_epi16(h, 4))
            }
        }
    }
}

/// 32 bytes as two vectors of 16 i16 (values 0..15, then 16..31), zero-extended.
#[inline(always)]
pub(super) fn widen_unsigned(v: __m256i) -> (__m256i, __m256i) {
    // Safety: only called from functions with AVX2 enabled.
    unsafe { (_mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1))) }
}

/// 32 bytes as two vectors of 16 i16, sign-extended.
#[inline(always)]
pub(super) fn widen_signed(v: __m256i) -> (__m256i, __m256i) {
    // Safety: only called from functions with AVX2 enabled.
    unsafe { (_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)), _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1))) }
}
