//! The AVX2 dot products over 8-bit activations (`Activations::Ggml8`): llama.cpp's arithmetic.
//! Each 32-value slice of a weight becomes 32 bytes `u` with `w = u − offset` (unsigned), or the
//! signed bytes themselves (Q8_0), and `maddubs` multiplies them with the activation bytes, 32
//! products per instruction (twice the 16-bit kernel's), summed in pairs into i16 (no overflow:
//! `u ≤ 63` or `|w| ≤ 128` against `|q| ≤ 127`), then into eight i32 lanes: lanes 0–3 hold the
//! slice's first 16 values, lanes 4–7 the rest, so a k-quant's two half scales apply as one
//! vector. The offset and the format's min both multiply `Σq` and are applied once per half.
//!
//! Per activation row, slices accumulate in order and every term is formed as in the
//! multi-row loop, so a row's result does not depend on how many rows share the call.

use super::x86::{block_halves, hsum, k_slice_bytes, nibbles32, q5_bytes, PREFETCH};
use super::{ActBlock8, QuantFormat, BLOCK};
use crate::device::quant::blocks::{slice_ints, slice_scales_with};
use std::arch::x86_64::*;

/// One slice ready for `maddubs`.
struct Prepared {
    bytes: __m256i,
    /// Per half: the scale, and the coefficient of `Σq` (the min minus scale × offset).
    scale: [f32; 2],
    coef: [f32; 2],
}

/// Slice `s` of block `b` as bytes for `maddubs` (see the module header); `halves` are the
/// block's f16 fields (`x86::block_halves`), converted once per block.
#[inline(always)]
unsafe fn prepare(format: QuantFormat, b: &[u8], s: usize, halves: [f32; 2]) -> Prepared {
    // Safety (loads, F16C): every range lies inside one whole block (see `blocks`); AVX2 and
    // F16C per the callers.
    unsafe {
        let one = |bytes, d: f32, c: f32| Prepared { bytes, scale: [d; 2], coef: [c; 2] };
        let [d, m] = halves;
        match format {
            QuantFormat::Q4_0 => one(nibbles32(&b[2..18]), d, -8.0 * d),
            QuantFormat::Q4_1 => one(nibbles32(&b[4..20]), d, m),
            QuantFormat::Q5_0 => one(q5_bytes(b, 6), d, -16.0 * d),
            QuantFormat::Q5_1 => one(q5_bytes(b, 8), d, m),
            // Signed bytes: `dot` takes their magnitudes and moves the signs to the activations.
            QuantFormat::Q8_0 => one(_mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i), d, 0.0),
            _ => {
                let (scale, min) = slice_scales_with(format, b, s, halves);
                let (bytes, offset) = match format {
                    QuantFormat::Q4_K | QuantFormat::Q5_K => (k_slice_bytes(format, b, s), 0.0),
                    QuantFormat::Q6_K => (k_slice_bytes(format, b, s), 32.0),
                    // Q2_K (0..3) and Q3_K (−4..3, moved up by 4) through the scalar slice form.
                    _ => {
                        let mut ints = [0i16; 32];
                        slice_ints(format, b, s, &mut ints);
                        let offset = if format == QuantFormat::Q3_K { 4 } else { 0 };
                        let bytes: [u8; 32] = ints.map(|w| (w + offset) as u8);
                        (_mm256_loadu_si256(bytes.as_ptr() as *const __m256i), offset as f32)
                    }
                };
                let coef = [min[0] - scale[0] * offset, min[1] - scale[1] * offset];
                Prepared { bytes, scale, coef }
            }
        }
    }
}

/// `Σ u·q` of one slice as 8 f32 partial sums (lanes 0–3: the first 16 values).
#[inline(always)]
fn dot(u: __m256i, signed: bool, q: &ActBlock8) -> __m256 {
    // Safety: only called from functions with AVX2 enabled; `ActBlock8` is 32-byte aligned and
    // starts with its 32 bytes.
    unsafe {
        let qv = _mm256_load_si256(q.qs.as_ptr() as *const __m256i);
        let pairs = if signed {
            _mm256_maddubs_epi16(_mm256_sign_epi8(u, u), _mm256_sign_epi8(qv, u))
        } else {
            _mm256_maddubs_epi16(u, qv)
        };
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

/// One slice's contribution to one row: the vector part into `a`, the `Σq` part into `e`.
/// `HALVES`: whether the two halves have their own scale and coefficient (k-quants).
#[inline(always)]
fn accumulate<const HALVES: bool>(p: &Prepared, signed: bool, q: &ActBlock8, a: &mut __m256, e: &mut f32) {
    // Safety: only called from functions with AVX2/FMA enabled.
    unsafe {
        if HALVES {
            let scales = _mm256_set_m128(_mm_set1_ps(q.d * p.scale[1]), _mm_set1_ps(q.d * p.scale[0]));
            *a = _mm256_fmadd_ps(dot(p.bytes, signed, q), scales, *a);
            *e += q.d * (p.coef[0] * q.sum_lo as f32 + p.coef[1] * (q.sum - q.sum_lo) as f32);
        } else {
            *a = _mm256_fmadd_ps(dot(p.bytes, signed, q), _mm256_set1_ps(q.d * p.scale[0]), *a);
            *e += q.d * p.coef[0] * q.sum as f32;
        }
    }
}

/// `out[i] = w · xs[i]` for one weight row and every 8-bit activation row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_many(
    format: QuantFormat,
    w: &[u8],
    xs: &[&[ActBlock8]],
    acc: &mut Vec<__m256>,
    extra: &mut Vec<f32>,
    out: &mut [f32],
) {
    // One instance per format, so `prepare`'s match folds away in the loops.
    let f = QuantFormat::ALL.iter().position(|&f| f == format).unwrap_or(0);
    // Safety: the caller's guarantee, passed on.
    unsafe {
        match f {
            0 => dot_many_in::<0>(w, xs, acc, extra, out),
            1 => dot_many_in::<1>(w, xs, acc, extra, out),
            2 => dot_many_in::<2>(w, xs, acc, extra, out),
            3 => dot_many_in::<3>(w, xs, acc, extra, out),
            4 => dot_many_in::<4>(w, xs, acc, extra, out),
            5 => dot_many_in::<5>(w, xs, acc, extra, out),
            6 => dot_many_in::<6>(w, xs, acc, extra, out),
            7 => dot_many_in::<7>(w, xs, acc, extra, out),
            8 => dot_many_in::<8>(w, xs, acc, extra, out),
            _ => dot_many_in::<9>(w, xs, acc, extra, out),
        }
    }
}

/// [`dot_many`] for `QuantFormat::ALL[F]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_many_in<const F: usize>(
    w: &[u8],
    xs: &[&[ActBlock8]],
    acc: &mut Vec<__m256>,
    extra: &mut Vec<f32>,
    out: &mut [f32],
) {
    let format = QuantFormat::ALL[F];
    let per = format.block_len() / BLOCK;
    let signed = format == QuantFormat::Q8_0;
    if let [x] = xs {
        // One row (decode): accumulators in registers.
        let (mut a, mut e) = (_mm256_setzero_ps(), 0f32);
        for (i, b) in w.chunks_exact(format.block_bytes()).enumerate() {
            _mm_prefetch(b.as_ptr().wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
            // Safety: AVX2/F16C per the caller; `b` is one whole block.
            let halves = unsafe { block_halves(format, b) };
            for s in 0..per {
                // Safety: as above.
                let p = unsafe { prepare(format, b, s, halves) };
                if per == 1 {
                    accumulate::<false>(&p, signed, &x[i], &mut a, &mut e);
                } else {
                    accumulate::<true>(&p, signed, &x[i * per + s], &mut a, &mut e);
                }
            }
        }
        out[0] = hsum(a) + e;
        return;
    }
    acc.clear();
    acc.resize(xs.len(), _mm256_setzero_ps());
    extra.clear();
    extra.resize(xs.len(), 0.0);
    for (i, b) in w.chunks_exact(format.block_bytes()).enumerate() {
        // Safety: AVX2/F16C per the caller; `b` is one whole block.
        let halves = unsafe { block_halves(format, b) };
        for s in 0..per {
            // Safety: as above.
            let p = unsafe { prepare(format, b, s, halves) };
            for ((x, a), e) in xs.iter().zip(acc.iter_mut()).zip(extra.iter_mut()) {
                if per == 1 {
                    accumulate::<false>(&p, signed, &x[i], a, e);
                } else {
                    accumulate::<true>(&p, signed, &x[i * per + s], a, e);
                }
            }
        }
    }
    for ((o, a), e) in out.iter_mut().zip(acc.iter()).zip(extra.iter()) {
        *o = hsum(*a) + e;
    }
}
