//! The GEMM's micro-kernels on 256-bit vectors (`gemm.rs` states the arithmetic; these compute
//! it to the same bits as its portable form): up to `MR` activation rows against one panel, one
//! f32 accumulator vector of `NR` output columns per row, in registers across the whole row.
//!
//! Per group of values the panel holds one vector (lane = weight row); each activation row's
//! matching two (16-bit) or four (8-bit) values are broadcast to every lane and multiplied in by
//! the instruction set's [`Ops`]:
//! - AVX2 ([`Avx2`]): 16-bit `madd_epi16` (16 products) and an add; 8-bit `maddubs` (32
//!   products, paired into i16 without saturation: `u ≤ 63`, or Q8_0's `|w| ≤ 128` by the sign
//!   trick, against `|q| ≤ 127`), `madd` by ones, an add;
//! - AVX-512 VNNI (`gemm_vnni.rs`): one `vpdpwssd` / `vpdpbusd` for the same products.
//!
//! A slice's integer sums then meet the scales once: `fma(cvt(isum), scale · d, acc)`.

use super::gemm::{Kind, XMeta, MR};
use super::panel::{Ints16, Ints8, Panel, NR};
use super::{ActBlock, ActBlock8};
use std::arch::x86_64::*;

/// The integer products of one group, as an instruction set does them. Every method is inlined
/// into a kernel compiled with that instruction set's features.
pub(super) trait Ops {
    /// `acc + ` the lane-wise sums of pairs of 16-bit products `w · q`.
    unsafe fn dot16(acc: __m256i, w: __m256i, q: __m256i) -> __m256i;
    /// An 8-bit panel vector made ready for [`Ops::dot8`], once per group for every row.
    unsafe fn prepare8<const SIGNED: bool>(w: __m256i) -> [__m256i; 2];
    /// `acc + ` the lane-wise sums of four 8-bit products `w · q` (Q8_0's signed `w` when
    /// `SIGNED`, else unsigned bytes), up to what [`Ops::finish8`] corrects.
    unsafe fn dot8<const SIGNED: bool>(acc: __m256i, w: [__m256i; 2], q: __m256i) -> __m256i;
    /// A slice's sums from [`Ops::dot8`] made exact, given the activations' `Σq` over the slice.
    unsafe fn finish8<const SIGNED: bool>(isum: __m256i, sum: i32) -> __m256i;
}

/// AVX2 (see the module header).
pub(super) struct Avx2;

impl Ops for Avx2 {
    #[inline(always)]
    unsafe fn dot16(acc: __m256i, w: __m256i, q: __m256i) -> __m256i {
        // Safety: the kernel's AVX2.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(w, q)) }
    }

    #[inline(always)]
    unsafe fn prepare8<const SIGNED: bool>(w: __m256i) -> [__m256i; 2] {
        // Q8_0: |w| as the unsigned operand; `dot8` moves w's signs onto the activations.
        // Safety: the kernel's AVX2.
        if SIGNED {
            [unsafe { _mm256_sign_epi8(w, w) }, w]
        } else {
            [w, w]
        }
    }

    #[inline(always)]
    unsafe fn dot8<const SIGNED: bool>(acc: __m256i, [u, w]: [__m256i; 2], q: __m256i) -> __m256i {
        // Safety: the kernel's AVX2.
        unsafe {
            let q = if SIGNED { _mm256_sign_epi8(q, w) } else { q };
            let pairs = _mm256_maddubs_epi16(u, q);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    #[inline(always)]
    unsafe fn finish8<const SIGNED: bool>(isum: __m256i, _: i32) -> __m256i {
        isum
    }
}

/// The sum of each row's chains: `CH` independent integer sums per activation row, added up at
/// the end of each span, keep enough products in flight to cover the multiply's latency where
/// it accumulates in place (integer adds are exact: the result does not depend on `CH`).
#[inline(always)]
unsafe fn total<const R: usize, const C: usize>(chains: [[__m256i; C]; R]) -> [__m256i; R] {
    // Loops, not closures: a closure is compiled without the kernel's target features.
    let mut out = [chains[0][0]; R];
    for (o, c) in out.iter_mut().zip(&chains) {
        *o = c[0];
        for &v in &c[1..] {
            // Safety: the kernel's AVX2.
            *o = unsafe { _mm256_add_epi32(*o, v) };
        }
    }
    out
}

/// The four bytes (or two i16) of group `g` of an activation block's integers, in every lane.
#[inline(always)]
unsafe fn lane_group(qs: *const u8, g: usize) -> __m256i {
    // Safety: the caller's; `qs` points at a block's 32 integers and `g` is in range.
    unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(qs.add(4 * g) as *const i32)) }
}

/// The scale terms of one half (or whole slice) for every row: `acc = fma(cvt(isum), scale · d, acc)`.
#[inline(always)]
unsafe fn scale_terms<const R: usize>(isum: &[__m256i; R], scale: &[f32; NR], d: [f32; R], acc: &mut [__m256; R]) {
    // Safety: AVX2/FMA per the kernels; `scale` is 32-byte aligned (`Scales`).
    unsafe {
        let sc = _mm256_load_ps(scale.as_ptr());
        for i in 0..R {
            let t = _mm256_mul_ps(sc, _mm256_set1_ps(d[i]));
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), t, acc[i]);
        }
    }
}

/// The coefficient terms of the slice: `acc = fma(coef, dsum, acc)` per half, or once.
#[inline(always)]
unsafe fn coef_terms<const R: usize, const HALVES: bool>(coef: &[[f32; NR]; 2], m: &[XMeta; R], acc: &mut [__m256; R]) {
    // Safety: as `scale_terms`.
    unsafe {
        let terms: &[(usize, usize)] = if HALVES { &[(0, 0), (1, 1)] } else { &[(0, 2)] };
        for &(h, at) in terms {
            let c = _mm256_load_ps(coef[h].as_ptr());
            for i in 0..R {
                acc[i] = _mm256_fmadd_ps(c, _mm256_set1_ps(m[i].dsum[at]), acc[i]);
            }
        }
    }
}

/// The 16-bit micro-kernel (see the module header), with `CH` chains per row ([`total`]; one
/// for AVX2, whose `madd` results are independent and only the 1-cycle add is a chain); `O`
/// must be inlined into a function with
/// its instruction set (the entry points below and in `gemm_vnni.rs`).
#[inline(always)]
pub(super) unsafe fn t16<const R: usize, const HALVES: bool, const COEF: bool, const CH: usize, O: Ops>(
    panel: &Panel<Ints16>,
    xs: &[&[ActBlock]],
    ms: &[&[XMeta]],
    out: &mut [[f32; NR]],
) {
    // Safety (throughout): the caller's instruction set; `s` is below every row's length
    // (checked by `gemm::Tile::tile`); a panel slice is 16 aligned vectors (`Ints16`), an
    // activation block 32 i16.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for (s, (ints, sc)) in panel.ints.iter().zip(&panel.scales).enumerate() {
            let w = ints.0.as_ptr() as *const __m256i;
            let qs: [*const u8; R] = std::array::from_fn(|i| xs[i].get_unchecked(s).qs.as_ptr() as *const u8);
            let m: [XMeta; R] = std::array::from_fn(|i| *ms[i].get_unchecked(s));
            // One half (groups 0..8 and 8..16) at a time, or the whole slice.
            let spans: &[(usize, usize)] = if HALVES { &[(0, 8), (8, 16)] } else { &[(0, 16)] };
            for (h, &(g0, g1)) in spans.iter().enumerate() {
                let mut chains = [[_mm256_setzero_si256(); CH]; R];
                // Chain `c` takes groups `g0 + c`, `g0 + c + CH`, …: constant indices, so the
                // chains stay in registers.
                for g in (g0..g1).step_by(CH) {
                    for c in 0..CH {
                        let wv = _mm256_load_si256(w.add(g + c));
                        for (i, chain) in chains.iter_mut().enumerate() {
                            chain[c] = O::dot16(chain[c], wv, lane_group(qs[i], g + c));
                        }
                    }
                }
                scale_terms(&total(chains), &sc.scale[h], m.map(|m| m.d), &mut acc);
            }
            if COEF {
                coef_terms::<R, HALVES>(&sc.coef, &m, &mut acc);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            _mm256_storeu_ps(o.as_mut_ptr(), a);
        }
    }
}

/// The 8-bit micro-kernel; as [`t16`].
#[inline(always)]
pub(super) unsafe fn t8<
    const R: usize,
    const HALVES: bool,
    const COEF: bool,
    const SIGNED: bool,
    const CH: usize,
    O: Ops,
>(
    panel: &Panel<Ints8>,
    xs: &[&[ActBlock8]],
    ms: &[&[XMeta]],
    out: &mut [[f32; NR]],
) {
    // Safety (throughout): as in `t16`; a panel slice is 8 aligned vectors (`Ints8`), an
    // activation block 32 bytes.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for (s, (ints, sc)) in panel.ints.iter().zip(&panel.scales).enumerate() {
            let w = ints.0.as_ptr() as *const __m256i;
            let blocks: [&ActBlock8; R] = std::array::from_fn(|i| xs[i].get_unchecked(s));
            let m: [XMeta; R] = std::array::from_fn(|i| *ms[i].get_unchecked(s));
            let spans: &[(usize, usize)] = if HALVES { &[(0, 4), (4, 8)] } else { &[(0, 8)] };
            for (h, &(g0, g1)) in spans.iter().enumerate() {
                let mut chains = [[_mm256_setzero_si256(); CH]; R];
                for g in (g0..g1).step_by(CH) {
                    for c in 0..CH {
                        let wv = O::prepare8::<SIGNED>(_mm256_load_si256(w.add(g + c)));
                        for (i, chain) in chains.iter_mut().enumerate() {
                            let q = lane_group(blocks[i].qs.as_ptr() as *const u8, g + c);
                            chain[c] = O::dot8::<SIGNED>(chain[c], wv, q);
                        }
                    }
                }
                let mut isum = total(chains);
                if SIGNED {
                    // Q8_0 has one scale per block: this span is the whole slice.
                    for i in 0..R {
                        isum[i] = O::finish8::<SIGNED>(isum[i], blocks[i].sum);
                    }
                }
                scale_terms(&isum, &sc.scale[h], m.map(|m| m.d), &mut acc);
            }
            if COEF {
                coef_terms::<R, HALVES>(&sc.coef, &m, &mut acc);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            _mm256_storeu_ps(o.as_mut_ptr(), a);
        }
    }
}

/// A match from a call's row count and [`Kind`] to the kernel instance `$f::<rows, HALVES,
/// COEF>` (16-bit) or `$f::<rows, HALVES, COEF, SIGNED>` (8-bit) for rows 1 to `MR` (4).
macro_rules! by_kind {
    (16, $f:ident, $kind:expr, $n:expr, $($arg:expr),*) => {
        match ($n, $kind.halves, $kind.coef) {
            (1, false, false) => $f::<1, false, false>($($arg),*),
            (2, false, false) => $f::<2, false, false>($($arg),*),
            (3, false, false) => $f::<3, false, false>($($arg),*),
            (4, false, false) => $f::<4, false, false>($($arg),*),
            (1, false, true) => $f::<1, false, true>($($arg),*),
            (2, false, true) => $f::<2, false, true>($($arg),*),
            (3, false, true) => $f::<3, false, true>($($arg),*),
            (4, false, true) => $f::<4, false, true>($($arg),*),
            (1, true, false) => $f::<1, true, false>($($arg),*),
            (2, true, false) => $f::<2, true, false>($($arg),*),
            (3, true, false) => $f::<3, true, false>($($arg),*),
            (4, true, false) => $f::<4, true, false>($($arg),*),
            (1, true, true) => $f::<1, true, true>($($arg),*),
            (2, true, true) => $f::<2, true, true>($($arg),*),
            (3, true, true) => $f::<3, true, true>($($arg),*),
            (4, true, true) => $f::<4, true, true>($($arg),*),
            _ => unreachable!("at most {} rows", $crate::device::quant::cpu::gemm::MR),
        }
    };
    (8, $f:ident, $kind:expr, $n:expr, $($arg:expr),*) => {
        match ($n, $kind.halves, $kind.coef, $kind.signed) {
            (1, false, false, true) => $f::<1, false, false, true>($($arg),*),
            (2, false, false, true) => $f::<2, false, false, true>($($arg),*),
            (3, false, false, true) => $f::<3, false, false, true>($($arg),*),
            (4, false, false, true) => $f::<4, false, false, true>($($arg),*),
            (1, false, false, false) => $f::<1, false, false, false>($($arg),*),
            (2, false, false, false) => $f::<2, false, false, false>($($arg),*),
            (3, false, false, false) => $f::<3, false, false, false>($($arg),*),
            (4, false, false, false) => $f::<4, false, false, false>($($arg),*),
            (1, false, true, false) => $f::<1, false, true, false>($($arg),*),
            (2, false, true, false) => $f::<2, false, true, false>($($arg),*),
            (3, false, true, false) => $f::<3, false, true, false>($($arg),*),
            (4, false, true, false) => $f::<4, false, true, false>($($arg),*),
            (1, true, false, false) => $f::<1, true, false, false>($($arg),*),
            (2, true, false, false) => $f::<2, true, false, false>($($arg),*),
            (3, true, false, false) => $f::<3, true, false, false>($($arg),*),
            (4, true, false, false) => $f::<4, true, false, false>($($arg),*),
            (1, true, true, false) => $f::<1, true, true, false>($($arg),*),
            (2, true, true, false) => $f::<2, true, true, false>($($arg),*),
            (3, true, true, false) => $f::<3, true, true, false>($($arg),*),
            (4, true, true, false) => $f::<4, true, true, false>($($arg),*),
            _ => unreachable!("at most {} rows; Q8_0 (signed) has one scale and no coefficient",
                $crate::device::quant::cpu::gemm::MR),
        }
    };
}
pub(super) use by_kind;

/// `out[i]` = the products of activation rows `xs[i]` with the 16-bit panel (`gemm::Tile`).
///
/// # Safety
/// The CPU must support AVX2 and FMA; the shapes are those `gemm::Tile::tile` checks.
pub unsafe fn tile16(kind: Kind, panel: &Panel<Ints16>, xs: &[&[ActBlock]], ms: &[&[XMeta]], out: &mut [[f32; NR]]) {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn k<const R: usize, const H: bool, const C: bool>(
        p: &Panel<Ints16>,
        xs: &[&[ActBlock]],
        ms: &[&[XMeta]],
        out: &mut [[f32; NR]],
    ) {
        // Safety: the caller's.
        unsafe { t16::<R, H, C, 1, Avx2>(p, xs, ms, out) }
    }
    debug_assert!(xs.len() <= MR);
    // Safety: the caller's.
    unsafe { by_kind!(16, k, kind, xs.len(), panel, xs, ms, out) }
}

/// `out[i]` = the products of activation rows `xs[i]` with the 8-bit panel (`gemm::Tile`).
///
/// # Safety
/// As [`tile16`].
pub unsafe fn tile8(kind: Kind, panel: &Panel<Ints8>, xs: &[&[ActBlock8]], ms: &[&[XMeta]], out: &mut [[f32; NR]]) {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn k<const R: usize, const H: bool, const C: bool, const S: bool>(
        p: &Panel<Ints8>,
        xs: &[&[ActBlock8]],
        ms: &[&[XMeta]],
        out: &mut [[f32; NR]],
    ) {
        // Safety: the caller's.
        unsafe { t8::<R, H, C, S, 1, Avx2>(p, xs, ms, out) }
    }
    // Safety: the caller's.
    unsafe { by_kind!(8, k, kind, xs.len(), panel, xs, ms, out) }
}
