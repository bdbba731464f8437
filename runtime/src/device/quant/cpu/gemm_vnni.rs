//! The GEMM's micro-kernels with AVX-512 VNNI (x86-64, chosen at run time): the bodies of
//! `gemm_avx2.rs` on the same 256-bit panels, each group's products and their sum one
//! instruction instead of two or three — `vpdpwssd` for 16-bit activations, `vpdpbusd` for 8-bit
//! (exact i32 sums, no i16 stage). Q8_0's signed bytes go in as `w + 128` (the top bit flipped)
//! and `128 · Σq` comes off the slice's sums, so the sums, and every bit after them, equal the
//! other paths'. 256-bit vectors rather than 512: the panels, tiles and tests stay those of AVX2,
//! and the narrower encoding avoids the 512-bit frequency licence on older Xeons.

use super::gemm::{Kind, XMeta};
use super::gemm_avx2::{by_kind, t16, t8, Ops};
use super::panel::{Ints16, Ints8, Panel, NR};
use super::{ActBlock, ActBlock8};
use std::arch::x86_64::*;

/// Independent sums per row (`gemm_avx2::total`): `vpdpwssd` / `vpdpbusd` accumulate in place,
/// so one chain per row waits on their latency; two were 2–8% faster at 55 rows, four ran out
/// of registers and spilled (6× slower).
const CHAINS: usize = 2;

/// AVX-512 VNNI on 256-bit vectors (with AVX-512 VL).
struct Vnni;

impl Ops for Vnni {
    #[inline(always)]
    unsafe fn dot16(acc: __m256i, w: __m256i, q: __m256i) -> __m256i {
        // Safety: the kernel's AVX-512 VNNI and VL.
        unsafe { _mm256_dpwssd_epi32(acc, w, q) }
    }

    #[inline(always)]
    unsafe fn prepare8<const SIGNED: bool>(w: __m256i) -> [__m256i; 2] {
        // Safety: the kernel's AVX2.
        if SIGNED {
            [unsafe { _mm256_xor_si256(w, _mm256_set1_epi8(-128)) }, w]
        } else {
            [w, w]
        }
    }

    #[inline(always)]
    unsafe fn dot8<const SIGNED: bool>(acc: __m256i, [u, _]: [__m256i; 2], q: __m256i) -> __m256i {
        // Safety: the kernel's AVX-512 VNNI and VL.
        unsafe { _mm256_dpbusd_epi32(acc, u, q) }
    }

    #[inline(always)]
    unsafe fn finish8<const SIGNED: bool>(isum: __m256i, sum: i32) -> __m256i {
        // Safety: the kernel's AVX2.
        if SIGNED {
            unsafe { _mm256_sub_epi32(isum, _mm256_set1_epi32(128 * sum)) }
        } else {
            isum
        }
    }
}

/// As `gemm_avx2::tile16`, with VNNI.
///
/// # Safety
/// The CPU must support AVX2, FMA and AVX-512 F, VL and VNNI; the shapes are those
/// `gemm::Tile::tile` checks.
pub unsafe fn tile16(kind: Kind, panel: &Panel<Ints16>, xs: &[&[ActBlock]], ms: &[&[XMeta]], out: &mut [[f32; NR]]) {
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    unsafe fn k<const R: usize, const H: bool, const C: bool>(
        p: &Panel<Ints16>,
        xs: &[&[ActBlock]],
        ms: &[&[XMeta]],
        out: &mut [[f32; NR]],
    ) {
        // Safety: the caller's.
        unsafe { t16::<R, H, C, CHAINS, Vnni>(p, xs, ms, out) }
    }
    // Safety: the caller's.
    unsafe { by_kind!(16, k, kind, xs.len(), panel, xs, ms, out) }
}

/// As `gemm_avx2::tile8`, with VNNI.
///
/// # Safety
/// As [`tile16`].
pub unsafe fn tile8(kind: Kind, panel: &Panel<Ints8>, xs: &[&[ActBlock8]], ms: &[&[XMeta]], out: &mut [[f32; NR]]) {
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    unsafe fn k<const R: usize, const H: bool, const C: bool, const S: bool>(
        p: &Panel<Ints8>,
        xs: &[&[ActBlock8]],
        ms: &[&[XMeta]],
        out: &mut [[f32; NR]],
    ) {
        // Safety: the caller's.
        unsafe { t8::<R, H, C, S, CHAINS, Vnni>(p, xs, ms, out) }
    }
    // Safety: the caller's.
    unsafe { by_kind!(8, k, kind, xs.len(), panel, xs, ms, out) }
}
