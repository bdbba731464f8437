//! The per-slice scales of eight rows of a k-quant (Q4_K, Q5_K, Q6_K), with AVX2: the same
//! values, in the same [`Scales`] layout, as the scalar `panel::pack_scales`, built with lane =
//! row from the start. The rows' f16 `d` (and `dmin`) are converted together, and their packed
//! small scales move to lane = row as bytes before each slice's vector is widened and scaled:
//! Q4_K / Q5_K's 6-bit scales and mins unpacked two rows a vector by shuffles and masks, then
//! transposed 8 × 16 bytes; Q6_K's sixteen int8 by the same transpose. The few-rows product
//! builds them for every group of eight rows in every decode step (one block at a time, inside
//! its pass over the weights), and the GEMM for every panel. (Built per row as f32 vectors and
//! transposed as f32, with a scalar f16 conversion per value, they took 26–29% of a 1B-shape
//! Q4_K_M decode step, `perf`, one thread; with the 6-bit values unpacked per row in scalar
//! code, 21%; 16% now. Built by the scalar form for a group's whole rows before the pass, a
//! third.)
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

/// Q4_K / Q5_K: the 6-bit scales and mins of the block at byte `at` of the eight rows `rb`
/// (rows from `rows` on zero), unpacked and moved to lane = row together: the result's vector
/// `v` holds, as its 64-bit element `e`, the eight rows' bytes of scale `4v + e` (`v` 0, 1) or
/// of min `4(v − 2) + e` (`v` 2, 3). (`blocks::k4_scale_min` for every `j` and row at once;
/// unpacked per row in scalar code and transposed from general registers, they had been about
/// half the cost of a block's scales.)
///
/// A row's 12 scale bytes `q`: for `j < 4` scale `j` is `q[j] & 63` and min `j` is
/// `q[j + 4] & 63`; for `j ≥ 4` scale `j` is `q[j + 4] & 15` with the top 2 bits of `q[j − 4]`
/// above it, and min `j` is `q[j + 4] >> 4` with the top 2 bits of `q[j]` above it.
#[inline(always)]
unsafe fn k4_scales_mins8(rb: &[&[u8]; NR], rows: usize, at: usize) -> [__m256i; 4] {
    // Safety: the caller's AVX2 (and its block). (Calls, not a closure over the pairs: see
    // `gemv_avx2`'s header.)
    unsafe {
        transpose_8x16([
            k4_unpack_pair(rb, rows, at, 0),
            k4_unpack_pair(rb, rows, at, 2),
            k4_unpack_pair(rb, rows, at, 4),
            k4_unpack_pair(rb, rows, at, 6),
        ])
    }
}

/// Eight rows of 16 bytes, rows `2k` and `2k + 1` in the two 128-bit lanes of `r[k]`, to 16
/// columns of 8: the result's vector `v` holds column `4v + e` as its 64-bit element `e`
/// (byte `i` of it from row `i`). Rows {0, 4}, {1, 5}, {2, 6}, {3, 7} are paired by lane,
/// interleaved as bytes and then words (per lane: rows 0..4, 4..8 of four columns), and each
/// column's two 4-byte halves brought together.
#[inline(always)]
unsafe fn transpose_8x16(r: [__m256i; 4]) -> [__m256i; 4] {
    // Safety: the caller's AVX2.
    unsafe {
        let p0 = _mm256_permute2x128_si256(r[0], r[2], 0x20);
        let p1 = _mm256_permute2x128_si256(r[0], r[2], 0x31);
        let p2 = _mm256_permute2x128_si256(r[1], r[3], 0x20);
        let p3 = _mm256_permute2x128_si256(r[1], r[3], 0x31);
        let (u0, u1) = (_mm256_unpacklo_epi8(p0, p1), _mm256_unpackhi_epi8(p0, p1));
        let (u2, u3) = (_mm256_unpacklo_epi8(p2, p3), _mm256_unpackhi_epi8(p2, p3));
        let halves = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        [
            _mm256_permutevar8x32_epi32(_mm256_unpacklo_epi16(u0, u2), halves),
            _mm256_permutevar8x32_epi32(_mm256_unpackhi_epi16(u0, u2), halves),
            _mm256_permutevar8x32_epi32(_mm256_unpacklo_epi16(u1, u3), halves),
            _mm256_permutevar8x32_epi32(_mm256_unpackhi_epi16(u1, u3), halves),
        ]
    }
}

/// Rows `lo` and `lo + 1`'s 16 bytes at byte `at` of their blocks, one row per 128-bit lane (a
/// row from `rows` on is zero).
#[inline(always)]
unsafe fn load_pair(rb: &[&[u8]; NR], rows: usize, at: usize, lo: usize) -> __m256i {
    // Safety: the caller's AVX2; the 16 bytes lie in each row's block.
    unsafe {
        // (A closure is compiled without the caller's target features: it holds only SSE2,
        // which every x86-64 has.)
        let row = |r: usize| {
            if r < rows {
                _mm_loadu_si128(rb[r][at..at + 16].as_ptr() as *const __m128i)
            } else {
                _mm_setzero_si128()
            }
        };
        _mm256_set_m128i(row(lo + 1), row(lo))
    }
}

/// Rows `lo` and `lo + 1` of [`k4_scales_mins8`] unpacked, one per 128-bit lane: scales 0..8
/// in bytes 0..8, mins in 8..16 (a row from `rows` on is zero).
#[inline(always)]
unsafe fn k4_unpack_pair(rb: &[&[u8]; NR], rows: usize, at: usize, lo: usize) -> __m256i {
    // Safety (throughout): the caller's AVX2; each load reads 16 bytes of a block of at least
    // 144 (the scale bytes and the first values after them).
    unsafe {
        let q = load_pair(rb, rows, at + 4, lo);
        const Z: i8 = -128; // a shuffle index that writes zero
        const S6: i8 = 63;
        const S4: i8 = 15;
        const T2: i8 = 0x30;
        // Per lane (the same pattern in both): the bytes whose low bits give each output byte,
        // and those whose top 2 bits give its bits 4 and 5.
        let low_of = per_lane([0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11]);
        let high_of = per_lane([Z, Z, Z, Z, 0, 1, 2, 3, Z, Z, Z, Z, 4, 5, 6, 7]);
        let low_mask = per_lane([S6, S6, S6, S6, S4, S4, S4, S4, S6, S6, S6, S6, 0, 0, 0, 0]);
        let shifted_mask = per_lane([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, S4, S4, S4, S4]);
        let high_mask = per_lane([0, 0, 0, 0, T2, T2, T2, T2, 0, 0, 0, 0, T2, T2, T2, T2]);
        let (a, b) = (_mm256_shuffle_epi8(q, low_of), _mm256_shuffle_epi8(q, high_of));
        // Word shifts: the bits a neighbouring byte moves in are masked off.
        let low =
            _mm256_or_si256(_mm256_and_si256(a, low_mask), _mm256_and_si256(_mm256_srli_epi16(a, 4), shifted_mask));
        _mm256_or_si256(low, _mm256_and_si256(_mm256_srli_epi16(b, 2), high_mask))
    }
}

/// The 16 bytes `p` in both 128-bit lanes (a constant where `p` is one).
#[inline(always)]
unsafe fn per_lane(p: [i8; 16]) -> __m256i {
    // Safety: the caller's AVX2; `p` is 16 bytes.
    unsafe {
        let v = _mm_loadu_si128(p.as_ptr() as *const __m128i);
        _mm256_set_m128i(v, v)
    }
}

/// Column `c` of [`transpose_8x16`]'s result as f32 lanes, its bytes unsigned or signed.
#[inline(always)]
unsafe fn column_lanes(t: &[__m256i; 4], c: usize, signed: bool) -> __m256 {
    // Safety: the caller's AVX2.
    unsafe {
        let v = t[c / 4];
        let half = if (c % 4) < 2 { _mm256_castsi256_si128(v) } else { _mm256_extracti128_si256(v, 1) };
        let bytes = if c.is_multiple_of(2) { half } else { _mm_unpackhi_epi64(half, half) };
        _mm256_cvtepi32_ps(if signed { _mm256_cvtepi8_epi32(bytes) } else { _mm256_cvtepu8_epi32(bytes) })
    }
}

/// Q4_K / Q5_K: the eight 32-value slices' scales and coefficients of the block at byte `at`
/// of rows `rb[..rows]` (lanes past `rows` zero), built with lane = row from the start: the
/// rows' `d` / `dmin` words converted together, their 6-bit scales and mins unpacked and moved
/// to lane = row as bytes ([`k4_scales_mins8`]; fewer shuffles than moving the f32 results).
///
/// # Safety
/// AVX2 and F16C; the block exists in every row `< rows`; `out` holds its eight slices.
#[inline(always)]
unsafe fn k4_block(rb: &[&[u8]; NR], rows: usize, at: usize, offset: __m256, out: &mut [Scales]) {
    // Safety (throughout): the caller's AVX2 / F16C; `Scales` is 32-byte aligned.
    unsafe {
        let (d, dmin) = half_pairs(rb, rows, at, true);
        let t = k4_scales_mins8(rb, rows, at);
        let sign = _mm256_set1_ps(-0.0);
        // Lanes past `rows` are +0 as the scalar form leaves them (−0 would differ in bits).
        let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(rows as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        ));
        for (j, slice) in out.iter_mut().enumerate() {
            let scale = _mm256_mul_ps(column_lanes(&t, j, false), d);
            let min = _mm256_xor_ps(_mm256_mul_ps(column_lanes(&t, NR + j, false), dmin), sign);
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
    let mut dh = [0u16; NR];
    for r in 0..rows {
        dh[r] = u16::from_le_bytes([rb[r][at + 208], rb[r][at + 209]]);
    }
    // Safety (throughout): the caller's AVX2 / F16C; `dh` is 16 bytes; `Scales` is 32-byte
    // aligned; the sixteen int8 scales are bytes 192..208 of a 210-byte block.
    unsafe {
        let d = _mm256_cvtph_ps(_mm_loadu_si128(dh.as_ptr() as *const __m128i));
        let t = transpose_8x16([
            load_pair(rb, rows, at + 192, 0),
            load_pair(rb, rows, at + 192, 2),
            load_pair(rb, rows, at + 192, 4),
            load_pair(rb, rows, at + 192, 6),
        ]);
        for p in 0..2 * NR {
            let scale = _mm256_mul_ps(column_lanes(&t, p, true), d);
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
