//! The AVX2 / FMA / F16C dot products (x86-64, chosen at run time): each weight block is unpacked
//! to 16-bit integers in two 256-bit vectors and multiplied with the 16-bit activations by
//! `madd_epi16`.

use super::x86::{
    block_halves, half, hsum, k_slice_bytes, nibbles32, q5_bytes, widen_signed, widen_unsigned, PREFETCH,
};
use super::{ActBlock, QuantFormat, Slice32, BLOCK};
use crate::device::quant::blocks::{slice_ints, slice_scales_with};
use std::arch::x86_64::*;

/// One block's 32 weights as two vectors of 16 i16 (values 0..15, then 16..31): Q4 nibbles
/// raw (0..15; Q4_0's −8 is applied through Σq), Q5_0 as its signed values, Q5_1 raw
/// (0..31), Q8_0 signed.
#[inline(always)]
unsafe fn unpack<const F: u8>(b: &[u8]) -> (__m256i, __m256i) {
    // Safety (loads): a Q4_0 block has 16 nibble bytes at 2, Q4_1 at 4, Q5_0 at 6 (high bits
    // at 2), Q5_1 at 8 (high bits at 4), Q8_0 32 bytes at 2.
    unsafe {
        match F {
            Q8 => widen_signed(_mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i)),
            Q40 => widen_unsigned(nibbles32(&b[2..18])),
            Q41 => widen_unsigned(nibbles32(&b[4..20])),
            Q50 => {
                let (lo, hi) = widen_unsigned(q5_bytes(b, 6));
                let sixteen = _mm256_set1_epi16(16);
                (_mm256_sub_epi16(lo, sixteen), _mm256_sub_epi16(hi, sixteen))
            }
            _ => widen_unsigned(q5_bytes(b, 8)),
        }
    }
}

/// Slice `s` of a Q4_K, Q5_K or Q6_K super-block as two vectors of 16 i16 (its `w`, see
/// `blocks`).
#[inline(always)]
unsafe fn k_slice_ints(format: QuantFormat, b: &[u8], s: usize) -> (__m256i, __m256i) {
    // Safety: the caller's (AVX2, a whole super-block).
    let bytes = unsafe { k_slice_bytes(format, b, s) };
    if format == QuantFormat::Q6_K {
        // Safety: AVX2 per the caller.
        widen_signed(unsafe { _mm256_sub_epi8(bytes, _mm256_set1_epi8(32)) })
    } else {
        widen_unsigned(bytes)
    }
}

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
        // The block's f16 fields once per block, not once per slice.
        // Safety: F16C per the caller; `b` is one whole block.
        let halves = unsafe { block_halves(format, b) };
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

/// Accumulators reused across weight rows.
#[derive(Default)]
pub struct Scratch {
    pub acc: Vec<__m256>,
    pub extra: Vec<f32>,
}
