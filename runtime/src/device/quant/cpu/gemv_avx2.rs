//! The few-rows product (`gemv.rs`) on AVX2: eight weight rows at a time, read straight from
//! their blocks (no panel), each row's slice multiplied with each activation row into eight
//! partial i32 lanes, the eight rows' partials summed across lanes by a transpose-and-add into
//! one vector (lane = weight row), then the GEMM's f32 steps on that vector — so every sum and
//! every rounding is the GEMM's (`gemm.rs`) and a row's result is the same bits in any batch.
//!
//! Per slice and weight row: the slice's 32 values as bytes (`panel_avx2::slice_bytes`, the
//! 8-bit panel's `u = w + offset`), for 16-bit activations widened, then `madd_epi16` (16-bit;
//! `offset · Σq` comes off the rows' sums once per slice, giving `Σ w·q`) or `maddubs` + `madd`
//! (8-bit, Q8_0 by the sign trick); a block's scales are those
//! the panels hold, built the same way. Each block of the next eight rows is prefetched as the
//! same block of these is read: a decode step streams the weights from memory, and the rows
//! here advance side by side, so the one-row kernels' fixed distance ahead (2 KB) would land in
//! rows already being read.
//!
//! Loops, not closures, around intrinsics: a closure is compiled without its caller's target
//! features, and intrinsics inside one become calls.

use super::gemm::XMeta;
use super::kscales_avx2;
use super::panel::{pack_scales, Ints8, PanelInts, Scales, NR};
use super::panel_avx2::{block_scales32, slice_bytes};
use super::x86::block_halves;
use super::{ActBlock, ActBlock8};
use crate::device::quant::{QuantFormat, BLOCK};
use std::arch::x86_64::*;

/// Lane `r` of the result is the sum of the eight lanes of `p[r]`.
#[inline(always)]
fn reduce8(p: &[__m256i; NR]) -> __m256i {
    let (lo, hi) = reduce_halves(p);
    // Safety: only called from functions with AVX2 enabled.
    unsafe { _mm256_add_epi32(lo, hi) }
}

/// Lane `r` of the first result is the sum of lanes 0..4 of `p[r]`, of the second the sum of
/// lanes 4..8 (the two halves of a slice, for formats with a scale per 16 values).
#[inline(always)]
fn reduce_halves(p: &[__m256i; NR]) -> (__m256i, __m256i) {
    // Safety: only called from functions with AVX2 enabled.
    unsafe {
        // Pairs of rows: lanes {0, 2} and {1, 3} of each half summed, rows interleaved.
        let t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[0], p[1]), _mm256_unpackhi_epi32(p[0], p[1]));
        let t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2], p[3]), _mm256_unpackhi_epi32(p[2], p[3]));
        let t2 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[4], p[5]), _mm256_unpackhi_epi32(p[4], p[5]));
        let t3 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[6], p[7]), _mm256_unpackhi_epi32(p[6], p[7]));
        // Rows 0..4 (then 4..8): each half's four lanes summed, one lane per row.
        let u0 = _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
        let u1 = _mm256_add_epi32(_mm256_unpacklo_epi64(t2, t3), _mm256_unpackhi_epi64(t2, t3));
        (_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31))
    }
}

/// A slice's 32 bytes widened to i16 by unpacking within 128-bit lanes (two shuffles, where
/// widening in value order takes three): values 0..8 and 16..24 in the first vector, 8..16
/// and 24..32 in the second; sign-extended for Q8_0's signed bytes, else zero-extended.
#[inline(always)]
fn unpack_bytes(v: __m256i, signed: bool) -> (__m256i, __m256i) {
    // Safety: only called from functions with AVX2 enabled.
    unsafe {
        let top = if signed { _mm256_cmpgt_epi8(_mm256_setzero_si256(), v) } else { _mm256_setzero_si256() };
        (_mm256_unpacklo_epi8(v, top), _mm256_unpackhi_epi8(v, top))
    }
}

/// The scales and coefficients (per half) of slice `s` of the eight rows `rb`, as a panel of
/// form `I` holds them: a 32-value format's from its blocks (`panel_avx2::block_scales32`); a
/// k-quant's from `kq`, as [`KScales`] left them there.
#[inline(always)]
unsafe fn slice_scales<I: PanelInts>(
    format: QuantFormat,
    rb: &[&[u8]; NR],
    rows: usize,
    s: usize,
    kq: &[Scales],
    kscales: KScales,
) -> ([__m256; 2], [__m256; 2]) {
    // Safety (throughout): the caller's AVX2 and F16C; every range is one whole block; `Scales`
    // is 32-byte aligned.
    unsafe {
        if format.block_len() == BLOCK {
            let offset = _mm256_set1_ps(I::offset(format) as f32);
            let (d, coef) = block_scales32(format, rb, rows, s * format.block_bytes(), offset);
            return ([d, d], [coef, coef]);
        }
        let k = &kq[if kscales == KScales::PerBlock { s % (format.block_len() / BLOCK) } else { s }];
        let (s0, s1) = (_mm256_load_ps(k.scale[0].as_ptr()), _mm256_load_ps(k.scale[1].as_ptr()));
        ([s0, s1], [_mm256_load_ps(k.coef[0].as_ptr()), _mm256_load_ps(k.coef[1].as_ptr())])
    }
}

/// The byte of a block to prefetch at its slice `k`: one per 64-byte line the block can touch
/// (its last byte for the last line, as a block need not start on a line).
#[inline(always)]
fn prefetch_offset(k: usize, bb: usize) -> Option<usize> {
    let at = k * 64;
    (at < bb + 63).then(|| at.min(bb - 1))
}

/// Where a k-quant's scales come from, as the format allows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KScales {
    /// Not a k-quant: its blocks hold one scale each, read where used.
    None,
    /// Q4_K, Q5_K, Q6_K: each block's slices built as vectors (`kscales_avx2`) when the loop
    /// reaches the block, into `kq[..per]`: the scales are read with the block's values, in the
    /// one pass over the weights. (Built for the whole rows first, the pass over the scale
    /// bytes had waited on memory for every block: a third of a 1B-shape Q4_K_M decode step.)
    PerBlock,
    /// Q2_K, Q3_K: every slice's, once per group, by [`kquant_scales`].
    WholeRows,
}

impl KScales {
    fn of(format: QuantFormat) -> KScales {
        if format.block_len() == BLOCK {
            KScales::None
        } else if kscales_avx2::handles(format) {
            KScales::PerBlock
        } else {
            KScales::WholeRows
        }
    }

    /// Readies `kq` before the loop over slices (`WholeRows`: fills it).
    #[inline(always)]
    unsafe fn start<I: PanelInts, const F: usize>(self, rb: &[&[u8]; NR], rows: usize, kq: &mut Vec<Scales>) {
        let format = QuantFormat::ALL[F];
        match self {
            KScales::None => {}
            KScales::PerBlock => kq.resize(format.block_len() / BLOCK, Scales::default()),
            // Safety: the caller's.
            KScales::WholeRows => unsafe { kquant_scales::<I, F>(rb, rows, kq) },
        }
    }

    /// At slice `s`: builds its block's scales if it is the block's first slice (`PerBlock`).
    #[inline(always)]
    unsafe fn at_slice<I: PanelInts>(
        self,
        format: QuantFormat,
        rb: &[&[u8]; NR],
        rows: usize,
        s: usize,
        kq: &mut [Scales],
    ) {
        let per = format.block_len() / BLOCK;
        if self == KScales::PerBlock && s.is_multiple_of(per) {
            // Safety: the caller's AVX2/FMA/F16C; block `s / per` exists in every row.
            unsafe { kscales_avx2::pack::<I>(format, rb, rows, s / per..s / per + 1, kq) };
        }
    }
}

/// A k-quant's scales of every slice of rows `rb` (the panel's own, `panel::pack_scales`), once
/// per group: built lane by lane, they are read as vectors long after the stores (one slice at a
/// time they had stalled each vector load on eight scalar stores). One instance per format
/// (`QuantFormat::ALL[F]`), so that the format's scale decoding is inlined without a match.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kquant_scales<I: PanelInts, const F: usize>(rb: &[&[u8]; NR], rows: usize, kq: &mut Vec<Scales>) {
    let format = QuantFormat::ALL[F];
    kq.resize(rb[0].len() / format.block_bytes() * (format.block_len() / BLOCK), Scales::default());
    if rows < NR {
        kq.fill(Scales::default());
    }
    for (r, row) in rb.iter().enumerate().take(rows) {
        // Safety: F16C per the caller; `b` is one whole block.
        pack_scales::<I>(format, row, r, kq, |b| unsafe { block_halves(format, b) });
    }
}

/// One activation row's slice terms from its integer sums (lane = weight row): the GEMM's
/// `scale_terms` then `coef_terms`, the same operations in the same order.
#[inline(always)]
fn terms<const HALVES: bool, const COEF: bool>(
    isum: [__m256i; 2],
    scale: &[__m256; 2],
    coef: &[__m256; 2],
    m: &XMeta,
    acc: __m256,
) -> __m256 {
    // Safety: only called from functions with AVX2 and FMA enabled.
    unsafe {
        let d = _mm256_set1_ps(m.d);
        let mut acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[0]), _mm256_mul_ps(scale[0], d), acc);
        if HALVES {
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[1]), _mm256_mul_ps(scale[1], d), acc);
        }
        if COEF {
            if HALVES {
                acc = _mm256_fmadd_ps(coef[0], _mm256_set1_ps(m.dsum[0]), acc);
                acc = _mm256_fmadd_ps(coef[1], _mm256_set1_ps(m.dsum[1]), acc);
            } else {
                acc = _mm256_fmadd_ps(coef[0], _mm256_set1_ps(m.dsum[2]), acc);
            }
        }
        acc
    }
}

/// `out[i][r]` = weight row `rb[r]` (`r < rows`) times 16-bit activation row `xs[i]`, the
/// format `QuantFormat::ALL[F]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows16<const F: usize, const R: usize, const HALVES: bool, const COEF: bool>(
    rb: &[&[u8]; NR],
    rows: usize,
    ahead: &[&[u8]; NR],
    kq: &mut Vec<Scales>,
    xs: &[&[ActBlock]],
    ms: &[&[XMeta]],
    out: &mut [[f32; NR]],
) {
    let format = QuantFormat::ALL[F];
    let (bb, per) = (format.block_bytes(), format.block_len() / BLOCK);
    // The bytes are `u = w + off`: the products are taken with `u`, and `off · Σq` of the
    // activation slice comes off the eight rows' sums at once (the same integers as `Σ w·q`,
    // with two subtractions per slice instead of two per row and slice).
    let (signed, off) = (format == QuantFormat::Q8_0, Ints8::offset(format) as i32);
    let kscales = KScales::of(format);
    // Safety: the caller's.
    unsafe { kscales.start::<super::panel::Ints16, F>(rb, rows, kq) };
    let mut acc = [_mm256_setzero_ps(); R];
    for s in 0..rb[0].len() / bb * per {
        // Safety (throughout): AVX2/FMA/F16C per the caller; `s` is below every activation row's
        // length (checked by `gemv`), every byte range one whole block of its row.
        unsafe {
            kscales.at_slice::<super::panel::Ints16>(format, rb, rows, s, kq);
            let (scale, coef) = slice_scales::<super::panel::Ints16>(format, rb, rows, s, kq, kscales);
            // The activations in the order `unpack_bytes` leaves a slice's values in: values
            // 0..8 and 16..24, then 8..16 and 24..32 (once per slice, not per weight row).
            let mut q = [[_mm256_setzero_si256(); 2]; R];
            for (q, x) in q.iter_mut().zip(xs) {
                let qs = x.get_unchecked(s).qs.as_ptr();
                let (q0, q1) =
                    (_mm256_loadu_si256(qs as *const __m256i), _mm256_loadu_si256(qs.add(16) as *const __m256i));
                *q = [_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31)];
            }
            let mut p = [[_mm256_setzero_si256(); NR]; R];
            for r in 0..rows {
                let b = &rb[r][s / per * bb..][..bb];
                // The same block of the next group's row, a group's time ahead of its use: a
                // line of it per slice (a k-quant's block spans three or four lines; its first
                // line alone had left the others to the hardware prefetcher).
                if let Some(at) = prefetch_offset(s % per, bb) {
                    if let Some(next) = ahead[r].get(s / per * bb + at) {
                        _mm_prefetch(next as *const u8 as *const i8, _MM_HINT_T0);
                    }
                }
                let (lo, hi) = unpack_bytes(slice_bytes(format, b, s % per), signed);
                for (p, q) in p.iter_mut().zip(&q) {
                    // Lanes 0..4 hold the first half's sums, 4..8 the second's (where the
                    // halves have their own scales, `reduce_halves` keeps them apart).
                    p[r] = _mm256_add_epi32(_mm256_madd_epi16(lo, q[0]), _mm256_madd_epi16(hi, q[1]));
                }
            }
            for i in 0..R {
                let mut isum = if HALVES {
                    let (h0, h1) = reduce_halves(&p[i]);
                    [h0, h1]
                } else {
                    [reduce8(&p[i]), _mm256_setzero_si256()]
                };
                if off != 0 {
                    // Lanes past `rows` take `−off · Σq` too; their scales are zero and their
                    // outputs discarded.
                    let x = xs[i].get_unchecked(s);
                    let parts = if HALVES { [x.sum_lo, x.sum - x.sum_lo] } else { [x.sum, 0] };
                    for (isum, part) in isum.iter_mut().zip(parts) {
                        *isum = _mm256_sub_epi32(*isum, _mm256_set1_epi32(off * part));
                    }
                }
                acc[i] = terms::<HALVES, COEF>(isum, &scale, &coef, ms[i].get_unchecked(s), acc[i]);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // Safety: AVX per the caller; `o` is 8 f32.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// As [`rows16`], for 8-bit activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows8<const F: usize, const R: usize, const HALVES: bool, const COEF: bool>(
    rb: &[&[u8]; NR],
    rows: usize,
    ahead: &[&[u8]; NR],
    kq: &mut Vec<Scales>,
    xs: &[&[ActBlock8]],
    ms: &[&[XMeta]],
    out: &mut [[f32; NR]],
) {
    let format = QuantFormat::ALL[F];
    let (bb, per) = (format.block_bytes(), format.block_len() / BLOCK);
    let signed = format == QuantFormat::Q8_0;
    let ones = _mm256_set1_epi16(1);
    let kscales = KScales::of(format);
    // Safety: the caller's.
    unsafe { kscales.start::<Ints8, F>(rb, rows, kq) };
    let mut acc = [_mm256_setzero_ps(); R];
    for s in 0..rb[0].len() / bb * per {
        // Safety (throughout): as in `rows16`; an `ActBlock8` starts with its 32 bytes, 32-byte
        // aligned.
        unsafe {
            kscales.at_slice::<Ints8>(format, rb, rows, s, kq);
            let (scale, coef) = slice_scales::<Ints8>(format, rb, rows, s, kq, kscales);
            let mut q = [_mm256_setzero_si256(); R];
            for (q, x) in q.iter_mut().zip(xs) {
                *q = _mm256_load_si256(x.get_unchecked(s).qs.as_ptr() as *const __m256i);
            }
            let mut p = [[_mm256_setzero_si256(); NR]; R];
            for r in 0..rows {
                let b = &rb[r][s / per * bb..][..bb];
                // The same block of the next group's row, a group's time ahead of its use: a
                // line of it per slice (a k-quant's block spans three or four lines; its first
                // line alone had left the others to the hardware prefetcher).
                if let Some(at) = prefetch_offset(s % per, bb) {
                    if let Some(next) = ahead[r].get(s / per * bb + at) {
                        _mm_prefetch(next as *const u8 as *const i8, _MM_HINT_T0);
                    }
                }
                let u = slice_bytes(format, b, s % per);
                // Q8_0: |w| as the unsigned operand, w's signs moved onto the activations.
                let au = if signed { _mm256_sign_epi8(u, u) } else { u };
                for (p, &q) in p.iter_mut().zip(&q) {
                    let q = if signed { _mm256_sign_epi8(q, u) } else { q };
                    // Lanes 0..4: the slice's first 16 values; 4..8: the rest.
                    p[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(au, q), ones);
                }
            }
            for i in 0..R {
                let isum = if HALVES {
                    let (h0, h1) = reduce_halves(&p[i]);
                    [h0, h1]
                } else {
                    [reduce8(&p[i]), _mm256_setzero_si256()]
                };
                acc[i] = terms::<HALVES, COEF>(isum, &scale, &coef, ms[i].get_unchecked(s), acc[i]);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // Safety: AVX per the caller; `o` is 8 f32.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// Instantiates `$f::<F, R, HALVES, COEF>` for the format index `$fi` (with its HALVES) and
/// `$r` rows, `COEF` from `$coef`.
macro_rules! by_format {
    ($f:ident, $fi:expr, $r:expr, $coef:expr, ($($arg:expr),*)) => {
        by_format!(@f $f, $fi, $r, $coef, ($($arg),*), [0 false, 1 false, 2 false, 3 false, 4 false, 5 true, 6 true, 7 false, 8 false, 9 true])
    };
    (@f $f:ident, $fi:expr, $r:expr, $coef:expr, $args:tt, [$($i:literal $h:literal),*]) => {
        match $fi {
            $( $i => by_format!(@r $f, $i, $h, $r, $coef, $args), )*
            _ => unreachable!("ten formats"),
        }
    };
    (@r $f:ident, $i:literal, $h:literal, $r:expr, $coef:expr, ($($arg:expr),*)) => {
        match ($r, $coef) {
            (1, false) => $f::<$i, 1, $h, false>($($arg),*),
            (2, false) => $f::<$i, 2, $h, false>($($arg),*),
            (3, false) => $f::<$i, 3, $h, false>($($arg),*),
            (4, false) => $f::<$i, 4, $h, false>($($arg),*),
            (1, true) => $f::<$i, 1, $h, true>($($arg),*),
            (2, true) => $f::<$i, 2, $h, true>($($arg),*),
            (3, true) => $f::<$i, 3, $h, true>($($arg),*),
            (4, true) => $f::<$i, 4, $h, true>($($arg),*),
            _ => unreachable!("1 to 4 rows"),
        }
    };
}

/// `out[i][r]` = weight row `rb[r]` (`r < rows ≤ NR`, all of format `format`, `rows ≥ 1`) times
/// 16-bit activation row `xs[i]` (`xs.len() ≤ 4`, each at least the rows' slices long);
/// `ahead` are the next rows to be multiplied (empty where there are none), prefetched; `kq`
/// is scratch for a k-quant's scales.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; the shapes as stated (`gemv` checks them).
#[allow(clippy::too_many_arguments)] // the kernel's operands, passed straight through
pub unsafe fn group16(
    format: QuantFormat,
    rb: &[&[u8]; NR],
    rows: usize,
    ahead: &[&[u8]; NR],
    kq: &mut Vec<Scales>,
    xs: &[&[ActBlock]],
    ms: &[&[XMeta]],
    out: &mut [[f32; NR]],
) {
    let fi = QuantFormat::ALL.iter().position(|&f| f == format).unwrap_or(0);
    // Safety: the caller's.
    unsafe { by_format!(rows16, fi, xs.len(), format.has_min(), (rb, rows, ahead, kq, xs, ms, out)) }
}

/// As [`group16`], for 8-bit activation rows.
///
/// # Safety
/// As [`group16`].
#[allow(clippy::too_many_arguments)] // the kernel's operands, passed straight through
pub unsafe fn group8(
    format: QuantFormat,
    rb: &[&[u8]; NR],
    rows: usize,
    ahead: &[&[u8]; NR],
    kq: &mut Vec<Scales>,
    xs: &[&[ActBlock8]],
    ms: &[&[XMeta]],
    out: &mut [[f32; NR]],
) {
    let fi = QuantFormat::ALL.iter().position(|&f| f == format).unwrap_or(0);
    let coef = super::panel::has_coef::<Ints8>(format);
    // Safety: the caller's.
    unsafe { by_format!(rows8, fi, xs.len(), coef, (rb, rows, ahead, kq, xs, ms, out)) }
}
