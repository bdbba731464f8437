//! The AVX2 / FMA / F16C dot products (x86-64, chosen at run time): each weight block is unpacked
//! to 16-bit integers in two 256-bit vectors and multiplied with the 16-bit activations by
//! `madd_epi16`.

use super::{ActBlock, QuantFormat, Slice32, BLOCK};
use crate::device::quant::blocks::{half_fields, slice_ints, slice_scales_with};
use std::arch::x86_64::*;

/// An IEEE half at `b[i..i + 2]` as f32, by the F16C instruction.
#[inline(always)]
unsafe fn half(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// One block's 32 weights as two vectors of 16 i16 (values 0..15, then 16..31): Q4 nibbles
/// raw (0..15; Q4_0's −8 is applied through Σq), Q5_0 as its signed values, Q5_1 raw
/// (0..31), Q8_0 signed.
#[inline(always)]
unsafe fn unpack<const F: u8>(b: &[u8]) -> (__m256i, __m256i) {
    // Safety (loads): a Q4_0 block has 16 nibble bytes at 2, Q4_1 at 4, Q5_0 at 6 (high bits
    // at 2), Q5_1 at 8 (high bits at 4), Q8_0 32 bytes at 2.
    unsafe {
        if F == Q8 {
            return (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(b[2..18].as_ptr() as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(b[18..34].as_ptr() as *const __m128i)),
            );
        }
        let off = [2, 4, 0, 6, 8][F as usize];
        let packed = _mm_loadu_si128(b[off..off + 16].as_ptr() as *const __m128i);
        let low4 = _mm_set1_epi8(0x0f);
        let lo = _mm256_cvtepu8_epi16(_mm_and_si128(packed, low4));
        let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low4));
        if F == Q40 || F == Q41 {
            return (lo, hi);
        }
        // Q5: bit j of the 32 high bits is the fifth bit of value j.
        let qh = u32::from_le_bytes([b[off - 4], b[off - 3], b[off - 2], b[off - 1]]);
        let lane_bits =
            _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, i16::MIN);
        let fifth = |bits: u32| {
            let set = _mm256_and_si256(_mm256_set1_epi16(bits as u16 as i16), lane_bits);
            _mm256_and_si256(_mm256_cmpeq_epi16(set, lane_bits), _mm256_set1_epi16(16))
        };
        let (lo, hi) = (_mm256_or_si256(lo, fifth(qh)), _mm256_or_si256(hi, fifth(qh >> 16)));
        if F == Q50 {
            let sixteen = _mm256_set1_epi16(16);
            (_mm256_sub_epi16(lo, sixteen), _mm256_sub_epi16(hi, sixteen))
        } else {
            (lo, hi)
        }
    }
}

/// Slice `s` of a Q4_K, Q5_K or Q6_K super-block as two vectors of 16 i16 (its `w`, see
/// `blocks`).
#[inline(always)]
unsafe fn k_slice_ints(format: QuantFormat, b: &[u8], s: usize) -> (__m256i, __m256i) {
    // Safety (loads): every range below lies inside one whole super-block (see `blocks`).
    unsafe {
        let load = |at: usize| _mm256_loadu_si256(b[at..at + 32].as_ptr() as *const __m256i);
        let shift = |v: __m256i, n: usize| _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32));
        let low4 = _mm256_set1_epi8(0x0f);
        let bytes = match format {
            QuantFormat::Q6_K => {
                let (n, k) = (s / 4, s % 4);
                let l = _mm256_and_si256(shift(load(64 * n + 32 * (k % 2)), 4 * (k / 2)), low4);
                let h = _mm256_and_si256(shift(load(128 + 32 * n), 2 * k), _mm256_set1_epi8(3));
                let v = _mm256_sub_epi8(_mm256_or_si256(l, _mm256_slli_epi16(h, 4)), _mm256_set1_epi8(32));
                return (
                    _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)),
                    _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)),
                );
            }
            QuantFormat::Q4_K => _mm256_and_si256(shift(load(16 + 32 * (s / 2)), 4 * (s % 2)), low4),
            _ => {
                let v = _mm256_and_si256(shift(load(48 + 32 * (s / 2)), 4 * (s % 2)), low4);
                let h = _mm256_and_si256(shift(load(16), s), _mm256_set1_epi8(1));
                _mm256_or_si256(v, _mm256_slli_epi16(h, 4))
            }
        };
        (_mm256_cvtepu8_epi16(_mm256_castsi256_si128(bytes)), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(bytes, 1)))
    }
}

/// Bytes ahead of the current block to prefetch.
const PREFETCH: usize = 2048;

const Q40: u8 = 0;
const Q41: u8 = 1;
const Q8: u8 = 2;
const Q50: u8 = 3;
const Q51: u8 = 4;

/// `out[i] = w · xs[i]` for one weight row and every activation row: each weight block is
/// unpacked once and used for all rows; per row, blocks accumulate in order, so a row's
/// result does not depend on how many rows share the call.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_many(
    format: QuantFormat,
    w: &[u8],
    xs: &[&[ActBlock]],
    acc: &mut Vec<__m256>,
    extra: &mut Vec<f32>,
    out: &mut [f32],
) {
    // Safety: the caller's guarantee, passed on.
    unsafe {
        match format {
            QuantFormat::Q4_0 => dot_many_in::<Q40>(w, xs, acc, extra, out),
            QuantFormat::Q4_1 => dot_many_in::<Q41>(w, xs, acc, extra, out),
            QuantFormat::Q8_0 => dot_many_in::<Q8>(w, xs, acc, extra, out),
            QuantFormat::Q5_0 => dot_many_in::<Q50>(w, xs, acc, extra, out),
            QuantFormat::Q5_1 => dot_many_in::<Q51>(w, xs, acc, extra, out),
            other => dot_many_sliced(other, w, xs, acc, extra, out),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_many_in<const F: u8>(
    w: &[u8],
    xs: &[&[ActBlock]],
    acc: &mut Vec<__m256>,
    extra: &mut Vec<f32>,
    out: &mut [f32],
) {
    let bb = [18, 20, 34, 22, 24][F as usize];
    if let [x] = xs {
        // One row (decode): accumulators in registers.
        let (mut a, mut e) = (_mm256_setzero_ps(), 0f32);
        for (b, blk) in w.chunks_exact(bb).zip(x.iter()) {
            // A hint only (prefetching past the row's end is harmless): the hardware
            // prefetcher alone left this loop waiting on memory (decode 40 tok/s on the default
            // model against 72 with 2 KB ahead; 0.5, 1 and 4 KB were slower).
            _mm_prefetch(b.as_ptr().wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
            // Safety: AVX2/F16C per the caller; `b` is one whole block.
            let ((w_lo, w_hi), dw) = unsafe { (unpack::<F>(b), half(b, 0)) };
            let d = dw * blk.d;
            if F == Q40 {
                e -= 8.0 * d * blk.sum as f32;
            } else if F == Q41 || F == Q51 {
                // Safety: as above.
                e += unsafe { half(b, 2) } * blk.d * blk.sum as f32;
            }
            a = fma_block(a, d, w_lo, w_hi, blk);
        }
        out[0] = hsum(a) + e;
        return;
    }
    acc.clear();
    acc.resize(xs.len(), _mm256_setzero_ps());
    // Per-block scalar terms (Q4_0's −8·d·Σq, Q4_1's m·d_x·Σq).
    extra.clear();
    extra.resize(xs.len(), 0.0);
    for (j, b) in w.chunks_exact(bb).enumerate() {
        // Safety: AVX2/F16C per the caller; `b` is one whole block.
        let ((w_lo, w_hi), dw) = unsafe { (unpack::<F>(b), half(b, 0)) };
        // Safety: as above.
        let m = if F == Q41 || F == Q51 { unsafe { half(b, 2) } } else { 0.0 };
        for ((x, a), e) in xs.iter().zip(acc.iter_mut()).zip(extra.iter_mut()) {
            let blk = &x[j];
            let d = dw * blk.d;
            if F == Q40 {
                *e -= 8.0 * d * blk.sum as f32;
            } else if F == Q41 || F == Q51 {
                *e += m * blk.d * blk.sum as f32;
            }
            *a = fma_block(*a, d, w_lo, w_hi, blk);
        }
    }
    for ((o, a), e) in out.iter_mut().zip(acc.iter()).zip(extra.iter()) {
        *o = hsum(*a) + e;
    }
}

/// Any format through its 32-value slices ([`super::blocks`]): each slice is unpacked to
/// 16-bit integers once and used for every activation row; per row, slices accumulate in
/// order, as in [`dot_many_in`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_many_sliced(
    format: QuantFormat,
    w: &[u8],
    xs: &[&[ActBlock]],
    acc: &mut Vec<__m256>,
    extra: &mut Vec<f32>,
    out: &mut [f32],
) {
    let per = format.block_len() / BLOCK;
    acc.clear();
    acc.resize(xs.len(), _mm256_setzero_ps());
    extra.clear();
    extra.resize(xs.len(), 0.0);
    let mut slice = Slice32::default();
    for (i, b) in w.chunks_exact(format.block_bytes()).enumerate() {
        _mm_prefetch(b.as_ptr().wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
        // The block's f16 fields once per block (by F16C), not once per slice.
        let fields = half_fields(format);
        // Safety: F16C per the caller; the offsets lie inside the block.
        let halves = unsafe { [half(b, fields[0]), fields.get(1).map_or(0.0, |&at| half(b, at))] };
        for s in 0..per {
            (slice.scale, slice.min) = slice_scales_with(format, b, s, halves);
            // Safety: AVX2 per the caller; `b` is one whole block, `slice.w` 32 i16 (loads
            // unaligned).
            let (w_lo, w_hi) = unsafe {
                match format {
                    QuantFormat::Q4_K | QuantFormat::Q5_K | QuantFormat::Q6_K => k_slice_ints(format, b, s),
                    _ => {
                        slice_ints(format, b, s, &mut slice.w);
                        (
                            _mm256_loadu_si256(slice.w.as_ptr() as *const __m256i),
                            _mm256_loadu_si256(slice.w[16..].as_ptr() as *const __m256i),
                        )
                    }
                }
            };
            for ((x, a), e) in xs.iter().zip(acc.iter_mut()).zip(extra.iter_mut()) {
                let blk = &x[i * per + s];
                *a = fma_halves(*a, blk.d * slice.scale[0], blk.d * slice.scale[1], w_lo, w_hi, blk);
                if format.has_min() {
                    *e += blk.d * (slice.min[0] * blk.sum_lo as f32 + slice.min[1] * (blk.sum - blk.sum_lo) as f32);
                }
            }
        }
    }
    for ((o, a), e) in out.iter_mut().zip(acc.iter()).zip(extra.iter()) {
        *o = hsum(*a) + e;
    }
}

/// `a + d_lo · Σ (w · q)` over the first 16 values plus `d_hi · Σ (w · q)` over the rest,
/// as 8 partial sums.
#[inline(always)]
fn fma_halves(a: __m256, d_lo: f32, d_hi: f32, w_lo: __m256i, w_hi: __m256i, blk: &ActBlock) -> __m256 {
    // Safety: only called from `dot_many_sliced` (AVX2/FMA enabled); `qs` is 32 i16, loads
    // unaligned.
    unsafe {
        let q_lo = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
        let q_hi = _mm256_loadu_si256(blk.qs[16..].as_ptr() as *const __m256i);
        let lo = _mm256_cvtepi32_ps(_mm256_madd_epi16(w_lo, q_lo));
        let hi = _mm256_cvtepi32_ps(_mm256_madd_epi16(w_hi, q_hi));
        _mm256_fmadd_ps(_mm256_set1_ps(d_hi), hi, _mm256_fmadd_ps(_mm256_set1_ps(d_lo), lo, a))
    }
}

/// `a + d · Σ (w · q)` over one block, as 8 partial sums.
#[inline(always)]
fn fma_block(a: __m256, d: f32, w_lo: __m256i, w_hi: __m256i, blk: &ActBlock) -> __m256 {
    // Safety: only called from `dot_many_in` (AVX2/FMA enabled); `qs` is 32 i16, loads
    // unaligned.
    unsafe {
        let q_lo = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
        let q_hi = _mm256_loadu_si256(blk.qs[16..].as_ptr() as *const __m256i);
        let prod = _mm256_add_epi32(_mm256_madd_epi16(w_lo, q_lo), _mm256_madd_epi16(w_hi, q_hi));
        _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(prod), a)
    }
}

#[inline(always)]
fn hsum(a: __m256) -> f32 {
    // Safety: only called from `dot_many_in` (AVX2 enabled).
    unsafe {
        let hi = _mm256_extractf128_ps(a, 1);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(a), hi);
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        _mm_cvtss_f32(s1)
    }
}

/// Accumulators reused across weight rows.
#[derive(Default)]
pub struct Scratch {
    pub acc: Vec<__m256>,
    pub extra: Vec<f32>,
}
