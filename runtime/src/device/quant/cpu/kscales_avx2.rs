//! The per-slice scales of eight rows of a k-quant (Q4_K, Q5_K, Q6_K), with AVX2: the same
//! values, in the same [`Scales`] layout, as the scalar `panel::pack_scales`, built a row at a
//! time as vectors (lane = the block's 32- or 16-value part) and moved to lane = row by an 8×8
//! transpose, instead of value by value into scattered lanes. The few-rows product builds them
//! for every group of eight rows in every decode step (one block at a time, inside its pass
//! over the weights), and the GEMM for every panel. Built by the scalar form for a group's whole
//! rows before that pass, they had taken a third of a 1B-shape Q4_K_M decode step (`perf`, one
//! thread), most of it waiting on the blocks' first lines.
//!
//! Bits: each value is the scalar form's operations on the same operands (`d · sc`,
//! `−(dmin · mn)`, then `min − scale · offset`, no fused multiply-add), so the result is the same
//! bits, which the tests of the few-rows product (against the portable GEMM) check. Rows past
//! `rows` get zero scales and coefficients, as the scalar path's zeroed scratch does.

use super::super::{QuantFormat, BLOCK};
use super::panel::{PanelInts, Scales, NR};
use super::panel_avx2::transpose8;
use super::x86::half;
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

/// Eight bytes as f32 lanes, unsigned or signed.
#[inline(always)]
unsafe fn bytes_f32(b: u64, signed: bool) -> __m256 {
    // Safety: the caller's AVX2.
    unsafe {
        let v = _mm_cvtsi64_si128(b as i64);
        _mm256_cvtepi32_ps(if signed { _mm256_cvtepi8_epi32(v) } else { _mm256_cvtepu8_epi32(v) })
    }
}

/// Stores the transposed rows `v` (lane = row) as the scale (or coefficient) of both halves of
/// slices `first..first + NR` (Q4_K, Q5_K: one scale per 32 values).
#[inline(always)]
unsafe fn store_both(v: [__m256; NR], out: &mut [Scales], first: usize, coef: bool) {
    for (sc, v) in out[first..first + NR].iter_mut().zip(v) {
        let pair = if coef { &mut sc.coef } else { &mut sc.scale };
        for dst in pair {
            // Safety: AVX per the caller; `Scales` is 32-byte aligned.
            unsafe { _mm256_store_ps(dst.as_mut_ptr(), v) };
        }
    }
}

/// `v[r]` lane `j` to lane `r` of `v[j]`.
#[inline(always)]
unsafe fn transpose_ps(v: [__m256; NR]) -> [__m256; NR] {
    // Safety: the caller's AVX2; bit casts.
    unsafe {
        let mut i = v.map(|x| _mm256_castps_si256(x));
        transpose8(&mut i);
        i.map(|x| _mm256_castsi256_ps(x))
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
    let (zero, sign) = (_mm256_setzero_ps(), _mm256_set1_ps(-0.0));
    let start = blocks.start;
    for i in blocks {
        // Row r's values by part `j` of the block: 32-value parts (Q4_K, Q5_K: `[scale, coef]`),
        // or the first and last eight 16-value parts (Q6_K: `[scale, coef]` of each).
        let mut parts = [[zero; NR]; 4];
        for r in 0..rows {
            let b = &rb[r][i * bb..][..bb];
            // Safety (throughout): AVX2/F16C per the caller; every offset inside the block.
            unsafe {
                if format == QuantFormat::Q6_K {
                    let d = _mm256_set1_ps(half(b, 208));
                    for (k, at) in [192, 200].into_iter().enumerate() {
                        let raw = u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
                        let scale = _mm256_mul_ps(bytes_f32(raw, true), d);
                        parts[2 * k][r] = scale;
                        parts[2 * k + 1][r] = _mm256_sub_ps(zero, _mm256_mul_ps(scale, offset));
                    }
                } else {
                    let (d, dmin) = (_mm256_set1_ps(half(b, 0)), _mm256_set1_ps(half(b, 2)));
                    let (sc, mn) = k4_scales_mins(&b[4..16]);
                    let scale = _mm256_mul_ps(bytes_f32(sc, false), d);
                    let min = _mm256_xor_ps(_mm256_mul_ps(bytes_f32(mn, false), dmin), sign);
                    parts[0][r] = scale;
                    parts[1][r] = _mm256_sub_ps(min, _mm256_mul_ps(scale, offset));
                }
            }
        }
        let first = (i - start) * per;
        // Safety: as above; the slices `first..first + per` exist in `out`.
        unsafe {
            if format == QuantFormat::Q6_K {
                // `parts[2 * k + c]` holds 16-value parts 8k..8k + 8; part p is half p % 2 of
                // slice p / 2.
                for (n, p) in parts.into_iter().enumerate() {
                    let (k, coef) = (n / 2, n % 2 == 1);
                    for (m, v) in transpose_ps(p).into_iter().enumerate() {
                        let sc = &mut out[first + (8 * k + m) / 2];
                        let dst = if coef { &mut sc.coef[m % 2] } else { &mut sc.scale[m % 2] };
                        _mm256_store_ps(dst.as_mut_ptr(), v);
                    }
                }
            } else {
                store_both(transpose_ps(parts[0]), out, first, false);
                store_both(transpose_ps(parts[1]), out, first, true);
            }
        }
    }
}
