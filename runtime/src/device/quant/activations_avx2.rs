//! AVX2 forms of two activation quantizers of `activations.rs` (16-bit, and llama.cpp's Q8_0
//! rules): the same blocks bit for bit, eight values per instruction where the scalar forms call
//! libm's `roundf` once per value (a tenth of a prefill's time went there).
//!
//! Equal to the scalar forms for every input, NaN and infinities included: the maximum ignores
//! NaN as `f32::max` does (the running maximum is the second operand of `max_ps`); rounding half
//! away from zero is a truncation plus one where the exact remainder is at least one half; the
//! conversion to i16 saturates and makes NaN 0, as Rust's `as` cast does.

use super::activations::ActBlock;
use super::BLOCK;
use std::arch::x86_64::*;

/// `|v|` of each lane.
#[inline(always)]
fn abs(v: __m256) -> __m256 {
    // Safety: only called from functions with AVX2 enabled.
    unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), v) }
}

/// The largest `|x|` of a 32-value block (0 if all are 0 or NaN).
#[inline(always)]
fn amax(v: &[__m256; 4]) -> f32 {
    // Safety: only called from functions with AVX2 enabled.
    unsafe {
        let mut m = _mm256_setzero_ps();
        for &v in v {
            m = _mm256_max_ps(abs(v), m);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)))
    }
}

/// `f32::round` (half away from zero) of each lane.
#[inline(always)]
fn round_half_away(x: __m256) -> __m256 {
    // Safety: only called from functions with AVX2 enabled.
    unsafe {
        let t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        // `x − t` is exact (|x − t| < 1, same sign), so the comparison decides as `roundf` does.
        let up = _mm256_cmp_ps(abs(_mm256_sub_ps(x, t)), _mm256_set1_ps(0.5), _CMP_GE_OQ);
        let one = _mm256_or_ps(_mm256_and_ps(x, _mm256_set1_ps(-0.0)), _mm256_set1_ps(1.0));
        _mm256_add_ps(t, _mm256_and_ps(up, one))
    }
}

/// Integral lanes as i16 the way Rust's `as i16` casts them (NaN to 0, saturating at the i16
/// bounds), then the block's 32 values with their sums.
#[inline(always)]
fn block(d: f32, q: [__m256; 4]) -> ActBlock {
    // Safety: only called from functions with AVX2 enabled; `qs` is 64 bytes.
    unsafe {
        let (lo, hi) = (_mm256_set1_ps(i16::MIN as f32), _mm256_set1_ps(i16::MAX as f32));
        let mut i = [_mm256_setzero_si256(); 4];
        for (i, &q) in i.iter_mut().zip(&q) {
            let q = _mm256_and_ps(q, _mm256_cmp_ps(q, q, _CMP_ORD_Q));
            *i = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi));
        }
        let mut qs = [0i16; BLOCK];
        for (k, pair) in [(i[0], i[1]), (i[2], i[3])].into_iter().enumerate() {
            // `packs` interleaves 128-bit halves; the permute puts values back in order.
            let p = _mm256_permute4x64_epi64(_mm256_packs_epi32(pair.0, pair.1), 0b11_01_10_00);
            _mm256_storeu_si256(qs[16 * k..].as_mut_ptr() as *mut __m256i, p);
        }
        let sum_lo = hsum_epi32(_mm256_add_epi32(i[0], i[1]));
        ActBlock { d, sum: sum_lo + hsum_epi32(_mm256_add_epi32(i[2], i[3])), sum_lo, qs }
    }
}

/// The sum of the 8 lanes.
#[inline(always)]
fn hsum_epi32(s: __m256i) -> i32 {
    // Safety: only called from functions with AVX2 enabled.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
    }
}

/// A block's 32 values. (Loops rather than closures throughout this file: a closure is compiled
/// without its caller's target features, and the intrinsics inside it were not inlined.)
#[inline(always)]
fn load(b: &[f32]) -> [__m256; 4] {
    // Safety: only called from functions with AVX2 enabled; `b` is 32 values.
    unsafe {
        [
            _mm256_loadu_ps(b[..8].as_ptr()),
            _mm256_loadu_ps(b[8..16].as_ptr()),
            _mm256_loadu_ps(b[16..24].as_ptr()),
            _mm256_loadu_ps(b[24..32].as_ptr()),
        ]
    }
}

/// `activations::quantize_row` (16-bit blocks).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_row16(x: &[f32], qmax: f32, out: &mut Vec<ActBlock>) {
    out.clear();
    for b in x.chunks_exact(BLOCK) {
        let v = load(b);
        let d = amax(&v) / qmax;
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let (lo, hi) = (_mm256_set1_ps(-qmax), _mm256_set1_ps(qmax));
        let mut q = v;
        for q in q.iter_mut() {
            let r = round_half_away(_mm256_mul_ps(*q, id));
            // NaN to 0 before the clamp, whose `max_ps` would make it the lower bound.
            let r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));
            *q = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
        }
        out.push(block(d, q));
    }
}

/// `activations::quantize_row_q8_0` (llama.cpp's Q8_0 blocks, as 16-bit values).
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn quantize_row_q8_0(x: &[f32], out: &mut Vec<ActBlock>) {
    out.clear();
    for b in x.chunks_exact(BLOCK) {
        let v = load(b);
        let amax = amax(&v);
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph(_mm_set_ss(amax / 127.0), _MM_FROUND_TO_NEAREST_INT)));
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let mut q = v;
        for q in q.iter_mut() {
            *q = _mm256_round_ps(_mm256_mul_ps(*q, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        }
        out.push(block(d, q));
    }
}
