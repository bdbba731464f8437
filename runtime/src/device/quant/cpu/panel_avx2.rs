//! The AVX2 packing of a panel (layout in `panel.rs`): each row's slice as 32 bytes (the
//! unpackers of `x86.rs`), widened to 16 bits for a 16-bit panel, then an 8×8 transpose of
//! 32-bit lanes puts the rows side by side; the 32-value formats' scales are one F16C conversion
//! of the eight rows' f16 fields. It writes the same bits as the portable packing, which the
//! tests check. A panel is packed once and shared by every activation row, but it is the part of
//! the GEMM that does not shrink with fewer rows (about a tenth of the time at 55 rows).

use super::super::blocks::{half_fields, slice_ints};
use super::super::{QuantFormat, QuantMatrix, BLOCK};
use super::kscales_avx2;
use super::panel::{pack_scales, Ints8, Panel, PanelInts, Scales, NR};
use super::x86::{block_halves, k_slice_bytes, nibbles32, q5_bytes, widen_signed, widen_unsigned};
use std::arch::x86_64::*;

/// Packs rows `r0 .. r0 + rows` (`rows ≤ NR`) of `w` into `panel`, whose vectors are sized for
/// `w`'s slices (and zeroed when `rows < NR`: the k-quants' scales of missing rows are not
/// written here).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn pack<I: PanelInts>(w: &QuantMatrix, r0: usize, rows: usize, panel: &mut Panel<I>) {
    let format = w.format();
    let (bb, per) = (format.block_bytes(), format.block_len() / BLOCK);
    let mut rb: [&[u8]; NR] = [&[]; NR];
    for (r, b) in rb.iter_mut().enumerate().take(rows) {
        *b = w.row(r0 + r);
    }
    if per == 1 {
        // Safety: the caller's.
        unsafe { scales32::<I>(format, &rb, rows, &mut panel.scales) };
    } else if kscales_avx2::handles(format) {
        // Safety: the caller's; the panel holds a `Scales` per slice.
        unsafe { kscales_avx2::pack::<I>(format, &rb, rows, 0..rb[0].len() / bb, &mut panel.scales) };
    } else {
        for (r, row) in rb.iter().enumerate().take(rows) {
            // Safety: F16C per the caller; `b` is one whole block.
            pack_scales::<I>(format, row, r, &mut panel.scales, |b| unsafe { block_halves(format, b) });
        }
    }
    let (signed, off8) = (format == QuantFormat::Q8_0, Ints8::offset(format));
    let zero = _mm256_setzero_si256();
    for (s, slot) in panel.ints.iter_mut().enumerate() {
        let mut v = [zero; NR];
        for (r, v) in v.iter_mut().enumerate().take(rows) {
            // Safety: AVX2 per the caller; the range is one whole block of row `r`.
            *v = unsafe { slice_bytes(format, &rb[r][s / per * bb..][..bb], s % per) };
        }
        let dst = slot as *mut I as *mut __m256i;
        // Safety (stores): `I` is 32-byte aligned and `size_of::<I>()` bytes, 16 vectors for
        // `WIDE` (512 B), 8 otherwise.
        unsafe {
            if I::WIDE {
                let (mut lo, mut hi) = ([zero; NR], [zero; NR]);
                let off = _mm256_set1_epi16(off8);
                for r in 0..rows {
                    let (l, h) = if signed { widen_signed(v[r]) } else { widen_unsigned(v[r]) };
                    (lo[r], hi[r]) = (_mm256_sub_epi16(l, off), _mm256_sub_epi16(h, off));
                }
                transpose8(&mut lo);
                transpose8(&mut hi);
                for g in 0..NR {
                    _mm256_store_si256(dst.add(g), lo[g]);
                    _mm256_store_si256(dst.add(NR + g), hi[g]);
                }
            } else {
                transpose8(&mut v);
                for (g, v) in v.iter().enumerate() {
                    _mm256_store_si256(dst.add(g), *v);
                }
            }
        }
    }
}

/// Slice `s` of block `b` as 32 bytes in the 8-bit panel form (`w + offset`; Q8_0's signed bytes).
#[inline(always)]
pub(super) unsafe fn slice_bytes(format: QuantFormat, b: &[u8], s: usize) -> __m256i {
    // Safety (AVX2, loads): the caller's; every range lies inside the block (`blocks.rs`).
    unsafe {
        match format {
            QuantFormat::Q4_0 => nibbles32(&b[2..18]),
            QuantFormat::Q4_1 => nibbles32(&b[4..20]),
            QuantFormat::Q5_0 => q5_bytes(b, 6),
            QuantFormat::Q5_1 => q5_bytes(b, 8),
            QuantFormat::Q8_0 => _mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i),
            QuantFormat::Q4_K | QuantFormat::Q5_K | QuantFormat::Q6_K => k_slice_bytes(format, b, s),
            QuantFormat::Q2_K | QuantFormat::Q3_K => {
                let mut ints = [0i16; BLOCK];
                slice_ints(format, b, s, &mut ints);
                let off = Ints8::offset(format);
                let bytes: [u8; BLOCK] = ints.map(|w| (w + off) as u8);
                _mm256_loadu_si256(bytes.as_ptr() as *const __m256i)
            }
        }
    }
}

/// The scales of a 32-value format (`d` at the start of each block, then `m` where it has one)
/// for every block of rows `rb` ([`block_scales32`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales32<I: PanelInts>(format: QuantFormat, rb: &[&[u8]; NR], rows: usize, out: &mut [Scales]) {
    let offset = _mm256_set1_ps(I::offset(format) as f32);
    for (i, sc) in out.iter_mut().enumerate() {
        // Safety: F16C/AVX2 per the caller; `Scales` is 32-byte aligned.
        unsafe {
            let (d, coef) = block_scales32(format, rb, rows, i * format.block_bytes(), offset);
            for h in 0..2 {
                _mm256_store_ps(sc.scale[h].as_mut_ptr(), d);
                _mm256_store_ps(sc.coef[h].as_mut_ptr(), coef);
            }
        }
    }
}

/// The two f16 fields of the word at byte `at` of each of the eight rows `rb` (those past
/// `rows` zero) as f32, lane = row: the rows' words gathered into one vector (no round trip
/// through memory) and converted together; the second field only when `second` (else zero).
///
/// # Safety
/// AVX2 and F16C; every row `< rows` holds 4 bytes at `at`.
#[inline(always)]
pub(super) unsafe fn half_pairs(rb: &[&[u8]; NR], rows: usize, at: usize, second: bool) -> (__m256, __m256) {
    let word = |r: usize| -> i32 {
        if r < rows {
            i32::from_le_bytes(rb[r][at..at + 4].try_into().expect("4 bytes"))
        } else {
            0
        }
    };
    let v = _mm256_setr_epi32(word(0), word(1), word(2), word(3), word(4), word(5), word(6), word(7));
    // Safety: the caller's.
    unsafe {
        // Words: first fields of rows 0..4, second of rows 0..4 | the same of rows 4..8; then the
        // first fields together and the second together.
        let dm = _mm256_packus_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0xffff)), _mm256_srli_epi32(v, 16));
        let dm = _mm256_permute4x64_epi64(dm, 0b11_01_10_00);
        let d = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
        (d, if second { _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1)) } else { _mm256_setzero_ps() })
    }
}

/// One block's scale `d` and coefficient `m − d · offset` for the eight rows `rb` (those past
/// `rows` zero), the block at byte `at` of each row ([`half_pairs`]); the same two roundings
/// as the scalar form.
///
/// # Safety
/// AVX2 and F16C; `format` has 32-value blocks.
#[inline(always)]
pub(super) unsafe fn block_scales32(
    format: QuantFormat,
    rb: &[&[u8]; NR],
    rows: usize,
    at: usize,
    offset: __m256,
) -> (__m256, __m256) {
    debug_assert_eq!(half_fields(format)[0], 0);
    // Safety: the caller's.
    unsafe {
        let (d, m) = half_pairs(rb, rows, at, half_fields(format).len() > 1);
        (d, _mm256_sub_ps(m, _mm256_mul_ps(d, offset)))
    }
}

/// `v[r]` lane `g` moves to `v[g]` lane `r` (an 8×8 transpose of 32-bit lanes).
#[inline(always)]
pub(super) fn transpose8(v: &mut [__m256i; NR]) {
    // Safety: only called from functions with AVX2 enabled.
    unsafe {
        let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
        let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
        let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
        let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
        let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
        let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
        let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
        let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
        // Lanes 0..4 of rows 0..4 (columns 0, 1, 2, 3 | 4, 5, 6, 7 per 128-bit half).
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        v[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
        v[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
        v[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
        v[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
        v[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
        v[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
        v[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
        v[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
    }
}
