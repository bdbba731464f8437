//! The per-slice scales of eight rows of a k-quant (Q4_K, Q5_K, Q6_K), with AVX2: the same
//! values, in the same [`Scales`] layout, as the scalar `panel::pack_scales`, built with lane =
//! row from the start. The rows' f16 `d` (and `dmin`) are converted together, and their packed
//! small scales (Q4_K / Q5_K: the eight 6-bit scales and mins unpacked per row; Q6_K: sixteen
//! int8) move to lane = row as bytes, by an 8×8 byte transpose, before each slice's vector is
//! widened and scaled. The few-rows product builds them for every group of eight rows in every
//! decode step (one block at a time, inside its pass over the weights), and the GEMM for every
//! panel. (Built per row as f32 vectors and transposed as f32, with a scalar f16 conversion
//! per value, they took 26–29% of a 1B-shape Q4_K_M decode step, `perf`, one thread; 17–18%
//! now. Built by the scalar form for a group's whole rows before the pass, a third.)
//!
//! Bits: each value is the scalar form's operations on the same operands (`d · sc`,
//! `−(dmin · mn)`, then `min − scale · offset`, no fused multiply-add), so the result is the same
//! bits, which the tests of the few-rows product (against the portable GEMM) and of the panels
//! check. Rows past `rows` get +0 scales and coefficients, as the scalar path's zeroed scratch
//! does.

use super::super::{QuantFormat, BLOCK};
use super::panel::{PanelInts, Scales, NR};
use super::panel_avx2::half_pairs;
use std::arch::x86_64::*;

/// Whether [`pack`] builds `format`'s scales (Q2_K and Q3_K stay on the scalar form).
pub(super) const fn handles(format: QuantFormat) -> bool {
    matches!(format, QuantFormat::Q4_K | QuantFormat::Q5_K | QuantFormat::Q6_K)
}

/// Q4_K / Q5_K: the eight 6-bit scales and the eight 6-bit mins of a block's 12 packed bytes
/// (`blocks::k4_scale_min` for every `j` at once), byte `j` of each word.
#[inline(always)]
fn k4_scales_mins(q: &[u8]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes(q[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let (u0, u1, u2) = (word(0), word(1), word(2));
    let (low6, low4, low2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    // j < 4: the low 6 bits of bytes j (scales) and j + 4 (mins); j ≥ 4: a nibble of byte
    // j + 4 with the top 2 bits of byte j − 4 (scales) or j (mins) above it.
    let scales_hi = (u2 & low4) | (((u0 >> 6) & low2) << 4);
    let mins_hi = ((u2 >> 4) & low4) | (((u1 >> 6) & low2) << 4);
    (u64::from(u0 & low6) | (u64::from(scales_hi) << 32), u64::from(u1 & low6) | (u64::from(mins_hi) << 32))
}

/// `x[r]` byte `j` to byte `r` of slice `j`'s eight: slices `2t` and `2t + 1` are the low and
/// high halves of the `t`-th vector (an 8×8 byte transpose in three rounds of unpacks).
#[inline(always)]
unsafe fn transpose_bytes8(x: &[u64; NR]) -> [__m128i; 4] {
    // Safety: the caller's AVX2 (SSE2 unpacks).
    unsafe {
        let r = x.map(|v| _mm_cvtsi64_si128(v as i64));
        // Rows interleaved in pairs (r0 b0, r1 b0, r0 b1, …), then in fours (bytes 0..4 and 4..8).
        let a = [0, 2, 4, 6].map(|k| _mm_unpacklo_epi8(r[k], r[k + 1]));
        let (lo0, hi0) = (_mm_unpacklo_epi16(a[0], a[1]), _mm_unpackhi_epi16(a[0], a[1]));
        let (lo1, hi1) = (_mm_unpacklo_epi16(a[2], a[3]), _mm_unpackhi_epi16(a[2], a[3]));
        [
            _mm_unpacklo_epi32(lo0, lo1),
            _mm_unpackhi_epi32(lo0, lo1),
            _mm_unpacklo_epi32(hi0, hi1),
            _mm_unpackhi_epi32(hi0, hi1),
        ]
    }
}

/// Slice `j`'s eight bytes of [`transpose_bytes8`]'s result as f32 lanes, unsigned or signed.
#[inline(always)]
unsafe fn slice_lanes(t: &[__m128i; 4], j: usize, signed: bool) -> __m256 {
    // Safety: the caller's AVX2.
    unsafe {
        let v = if j.is_multiple_of(2) { t[j / 2] } else { _mm_unpackhi_epi64(t[j / 2], t[j / 2]) };
        _mm256_cvtepi32_ps(if signed { _mm256_cvtepi8_epi32(v) } else { _mm256_cvtepu8_epi32(v) })
    }
}

/// Q4_K / Q5_K: the eight 32-value slices' scales and coefficients of the block at byte `at`
/// of rows `rb[..rows]` (lanes past `rows` zero), built with lane = row from the start: the
/// rows' `d` / `dmin` words converted together, their 6-bit scales and mins unpacked per row
/// and moved to lane = row as bytes (fewer shuffles than moving the f32 results).
///
/// # Safety
/// AVX2 and F16C; the block exists in every row `< rows`; `out` holds its eight slices.
#[inline(always)]
unsafe fn k4_block(rb: &[&[u8]; NR], rows: usize, at: usize, offset: __m256, out: &mut [Scales]) {
    let (mut sc, mut mn) = ([0u64; NR], [0u64; NR]);
    for r in 0..rows {
        (sc[r], mn[r]) = k4_scales_mins(&rb[r][at + 4..at + 16]);
    }
    // Safety (throughout): the caller's AVX2 / F16C; `Scales` is 32-byte aligned.
    unsafe {
        let (d, dmin) = half_pairs(rb, rows, at, true);
        let (st, mt) = (transpose_bytes8(&sc), transpose_bytes8(&mn));
        let sign = _mm256_set1_ps(-0.0);
        // Lanes past `rows` are +0 as the scalar form leaves them (−0 would differ in bits).
        let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(rows as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        ));
        for (j, slice) in out.iter_mut().enumerate() {
            let scale = _mm256_mul_ps(slice_lanes(&st, j, false), d);
            let min = _mm256_xor_ps(_mm256_mul_ps(slice_lanes(&mt, j, false), dmin), sign);
            let coef = _mm256_and_ps(_mm256_sub_ps(min, _mm256_mul_ps(scale, offset)), keep);
            for h in 0..2 {
                _mm256_store_ps(slice.scale[h].as_mut_ptr(), scale);
                _mm256_store_ps(slice.coef[h].as_mut_ptr(), coef);
            }
        }
    }
}

/// Q6_K: the sixteen 16-value parts' scales and coefficients (`−scale · offset`) of the block
/// at byte `at` of rows `rb[..rows]` (lanes past `rows` zero), lane = row as in [`k4_block`]:
/// part `p` is half `p % 2` of slice `p / 2`.
///
/// # Safety
/// As [`k4_block`].
#[inline(always)]
unsafe fn k6_block(rb: &[&[u8]; NR], rows: usize, at: usize, offset: __m256, out: &mut [Scales]) {
    let (mut lo, mut hi, mut dh) = ([0u64; NR], [0u64; NR], [0u16; NR]);
    for r in 0..rows {
        let b = &rb[r][at..at + QuantFormat::Q6_K.block_bytes()];
        lo[r] = u64::from_le_bytes(b[192..200].try_into().expect("8 bytes"));
        hi[r] = u64::from_le_bytes(b[200..208].try_into().expect("8 bytes"));
        dh[r] = u16::from_le_bytes([b[208], b[209]]);
    }
    // Safety (throughout): the caller's AVX2 / F16C; `dh` is 16 bytes; `Scales` is 32-byte aligned.
    unsafe {
        let d = _mm256_cvtph_ps(_mm_loadu_si128(dh.as_ptr() as *const __m128i));
        let parts = [transpose_bytes8(&lo), transpose_bytes8(&hi)];
        for p in 0..2 * NR {
            let scale = _mm256_mul_ps(slice_lanes(&parts[p / NR], p % NR, true), d);
            let coef = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(scale, offset));
            let slice = &mut out[p / 2];
            _mm256_store_ps(slice.scale[p % 2].as_mut_ptr(), scale);
            _mm256_store_ps(slice.coef[p % 2].as_mut_ptr(), coef);
        }
    }
}

/// The scales of the slices of blocks `blocks` of rows `rb[..rows]` (blocks of `format`) into
/// `out`, from `out[0]` on (the first block's first slice), in form `I`.
///
/// # Safety
/// AVX2, FMA and F16C; `handles(format)`; `rows ≥ 1`; the blocks exist in every row `< rows`;
/// `out` holds a `Scales` per slice of them.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pack<I: PanelInts>(
    format: QuantFormat,
    rb: &[&[u8]; NR],
    rows: usize,
    blocks: std::ops::Range<usize>,
    out: &mut [Scales],
) {
    debug_assert!(handles(format));
    let (bb, per) = (format.block_bytes(), format.block_len() / BLOCK);
    let offset = _mm256_set1_ps(I::offset(format) as f32);
    let start = blocks.start;
    for i in blocks {
        let slices = &mut out[(i - start) * per..][..per];
        // Safety: the caller's; the block exists in every row `< rows`.
        unsafe {
            if format == QuantFormat::Q6_K {
                k6_block(rb, rows, i * bb, offset, slices)
            } else {
                k4_block(rb, rows, i * bb, offset, slices)
            }
        }
    }
}
