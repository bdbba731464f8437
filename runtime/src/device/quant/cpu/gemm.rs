//! `out = x · Wᵀ` for many activation rows (prefill): a blocked GEMM over quantized weights.
//!
//! The weight rows are cut into panels of [`NR`] rows, each unpacked once ([`super::panel`]:
//! small integers interleaved so that one vector lane is one weight row, and f32 scales per
//! lane), and every tile of up to [`MR`] activation rows is multiplied with the panel by a
//! micro-kernel whose accumulators are `MR` vectors of `NR` output columns, kept in registers
//! for the whole row. Panels are split across rayon tasks; each task writes its own columns.
//!
//! The arithmetic, which every path (portable and SIMD) computes to the same bits (the tests
//! compare them bit for bit): for activation row `i` and weight row `j`, starting from `acc = 0`, for each
//! 32-value slice `s` in order, with `isum_h = Σ w·q` over half `h` (exact integers; the panel's
//! `w`, `u` or Q8_0's signed byte times the activation's `q`), `d` the activation block's
//! scale and `dsum_h = d · Σq` over the half (f32, computed once per block):
//! - formats with a scale per 32 values: `acc = fma(isum, scale · d, acc)`, then, where the
//!   panel has a coefficient, `acc = fma(coef, dsum, acc)`;
//! - formats with a scale per 16 (Q2_K, Q3_K, Q6_K): the same per half, both scale terms first.
//!
//! This is not the bit pattern of the one-row kernels (`cpu.rs`, which sum eight partial lanes
//! per row), so a row's result depends, at rounding level, on whether `linear` chose this GEMM
//! for its batch (by the batch's row count); within this GEMM it does not depend on the other
//! rows. Only the activation quantization differs from the dequantize-then-f32 product.

use super::panel::{halves, has_coef, pack, prefetch, Ints16, Ints8, Panel, PanelInts, NR};
use super::{ActBlock, ActBlock8, Simd};
use crate::device::quant::{QuantFormat, QuantMatrix};
use rayon::prelude::*;

/// Activation rows per micro-kernel call: `MR` accumulators of `NR` lanes, `MR` integer sums and
/// a weight vector fit the 16 AVX2 registers.
pub const MR: usize = 4;

/// What the GEMM reads of an activation block besides its integers, once per block.
#[derive(Clone, Copy, Debug, Default)]
pub struct XMeta {
    pub d: f32,
    /// `d · Σq` over the first half, the second half, and the whole block.
    pub dsum: [f32; 3],
}

/// An activation block the GEMM multiplies: its integers and its [`XMeta`].
pub trait GemmAct: Copy + Sync {
    fn q(&self, l: usize) -> i32;
    fn meta(&self) -> XMeta;
}

fn meta(d: f32, sum: i32, sum_lo: i32) -> XMeta {
    XMeta { d, dsum: [d * sum_lo as f32, d * (sum - sum_lo) as f32, d * sum as f32] }
}

impl GemmAct for ActBlock {
    fn q(&self, l: usize) -> i32 {
        self.qs[l] as i32
    }
    fn meta(&self) -> XMeta {
        meta(self.d, self.sum, self.sum_lo)
    }
}

impl GemmAct for ActBlock8 {
    fn q(&self, l: usize) -> i32 {
        self.qs[l] as i32
    }
    fn meta(&self) -> XMeta {
        meta(self.d, self.sum, self.sum_lo)
    }
}

/// Which terms a format's panel has (the micro-kernels are instantiated per kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// A scale per 16 values.
    pub halves: bool,
    /// A `coef · dsum` term.
    pub coef: bool,
    /// Q8_0's signed bytes in an 8-bit panel.
    pub signed: bool,
}

impl Kind {
    pub fn of<I: PanelInts>(format: QuantFormat) -> Kind {
        Kind { halves: halves(format), coef: has_coef::<I>(format), signed: !I::WIDE && format == QuantFormat::Q8_0 }
    }
}

/// A panel form with its micro-kernels for activation blocks `X`.
pub trait Tile<X: GemmAct>: PanelInts {
    /// `out[i][r] = Σ` over the panel of activation row `xs[i]` with panel row `r`
    /// (`xs.len() == ms.len() == out.len() ≤ MR`; each row has the panel's slices).
    fn tile(simd: Simd, kind: Kind, panel: &Panel<Self>, xs: &[&[X]], ms: &[&[XMeta]], out: &mut [[f32; NR]]);
}

impl Tile<ActBlock> for Ints16 {
    fn tile(simd: Simd, kind: Kind, panel: &Panel<Self>, xs: &[&[ActBlock]], ms: &[&[XMeta]], out: &mut [[f32; NR]]) {
        check(panel.ints.len(), xs, ms, out);
        match simd {
            Simd::Portable => tile_portable(kind, panel, xs, ms, out),
            // Safety: `Avx2` is only constructed after detecting AVX2, FMA and F16C; the
            // shapes are checked above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { super::gemm_avx2::tile16(kind, panel, xs, ms, out) },
            // Safety: `Avx512Vnni` is only constructed after detecting AVX-512 F, BW, VL, VNNI too.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512Vnni => unsafe { super::gemm_vnni::tile16(kind, panel, xs, ms, out) },
        }
    }
}

impl Tile<ActBlock8> for Ints8 {
    fn tile(simd: Simd, kind: Kind, panel: &Panel<Self>, xs: &[&[ActBlock8]], ms: &[&[XMeta]], out: &mut [[f32; NR]]) {
        check(panel.ints.len(), xs, ms, out);
        match simd {
            Simd::Portable => tile_portable(kind, panel, xs, ms, out),
            // Safety: as for `Ints16`.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { super::gemm_avx2::tile8(kind, panel, xs, ms, out) },
            // Safety: as above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512Vnni => unsafe { super::gemm_vnni::tile8(kind, panel, xs, ms, out) },
        }
    }
}

/// The shapes the micro-kernels rely on (they read without bounds checks).
fn check<X>(slices: usize, xs: &[&[X]], ms: &[&[XMeta]], out: &[[f32; NR]]) {
    assert!(xs.len() <= MR && ms.len() == xs.len() && out.len() == xs.len());
    assert!(xs.iter().zip(ms).all(|(x, m)| x.len() >= slices && m.len() >= slices), "activation rows too short");
}

/// The arithmetic of the module header, one value at a time.
fn tile_portable<I: PanelInts, X: GemmAct>(
    kind: Kind,
    panel: &Panel<I>,
    xs: &[&[X]],
    ms: &[&[XMeta]],
    out: &mut [[f32; NR]],
) {
    for ((x, meta), acc) in xs.iter().zip(ms).zip(out.iter_mut()) {
        *acc = [0.0; NR];
        for (s, (ints, sc)) in panel.ints.iter().zip(&panel.scales).enumerate() {
            let (blk, m) = (&x[s], meta[s]);
            for (r, a) in acc.iter_mut().enumerate() {
                let isum = |h: std::ops::Range<usize>| h.map(|l| ints.get(r, l, kind.signed) * blk.q(l)).sum::<i32>();
                if kind.halves {
                    for h in 0..2 {
                        *a = (isum(16 * h..16 * h + 16) as f32).mul_add(sc.scale[h][r] * m.d, *a);
                    }
                    if kind.coef {
                        for h in 0..2 {
                            *a = sc.coef[h][r].mul_add(m.dsum[h], *a);
                        }
                    }
                } else {
                    *a = (isum(0..32) as f32).mul_add(sc.scale[0][r] * m.d, *a);
                    if kind.coef {
                        *a = sc.coef[0][r].mul_add(m.dsum[2], *a);
                    }
                }
            }
        }
    }
}

/// `x · wᵀ` for 16-bit activation rows (`[xq.len(), w.rows()]`, row-major).
pub fn gemm_q16(simd: Simd, xq: &[Vec<ActBlock>], w: &QuantMatrix) -> Vec<f32> {
    gemm::<Ints16, ActBlock>(simd, xq, w)
}

/// `x · wᵀ` for 8-bit activation rows (`Activations::Ggml8`).
pub fn gemm_q8(simd: Simd, xq: &[Vec<ActBlock8>], w: &QuantMatrix) -> Vec<f32> {
    gemm::<Ints8, ActBlock8>(simd, xq, w)
}

/// The output matrix, written by several rayon tasks at once, each into its own columns.
pub(super) struct Columns {
    ptr: *mut f32,
    len: usize,
}

// Safety: tasks only write through `write`, whose callers keep their column ranges disjoint.
unsafe impl Sync for Columns {}

impl Columns {
    pub(super) fn new(out: &mut [f32]) -> Columns {
        Columns { ptr: out.as_mut_ptr(), len: out.len() }
    }

    /// `out[at .. at + vals.len()] = vals`.
    ///
    /// # Safety
    /// No other task writes any of these elements while this one may.
    pub(super) unsafe fn write(&self, at: usize, vals: &[f32]) {
        assert!(at + vals.len() <= self.len, "a write past the output");
        // Safety: in bounds (above); exclusive per the caller.
        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), self.ptr.add(at), vals.len()) };
    }
}

fn gemm<I: Tile<X>, X: GemmAct>(simd: Simd, xq: &[Vec<X>], w: &QuantMatrix) -> Vec<f32> {
    let (m, n) = (xq.len(), w.rows());
    let metas: Vec<Vec<XMeta>> = xq.iter().map(|x| x.iter().map(X::meta).collect()).collect();
    let kind = Kind::of::<I>(w.format());
    let panels = n.div_ceil(NR);
    // No more tasks than twice the threads (as the one-row kernels: waking workers per task
    // costs more than finer balancing gains).
    let per_task = panels.div_ceil(2 * rayon::current_num_threads()).max(1);
    let mut out = vec![0f32; m * n];
    let cols = Columns::new(&mut out);
    (0..panels.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let xs: Vec<&[X]> = xq.iter().map(Vec::as_slice).collect();
        let ms: Vec<&[XMeta]> = metas.iter().map(Vec::as_slice).collect();
        let mut panel = Panel::<I>::new();
        let mut tile = [[0f32; NR]; MR];
        // Panels `p0 .. p1`: output columns `p0 · NR ..`, this task's alone.
        let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(panels));
        for p in p0..p1 {
            pack(simd, w, p * NR, &mut panel);
            if p + 1 < p1 {
                prefetch(w, (p + 1) * NR);
            }
            let valid = NR.min(n - p * NR);
            for i0 in (0..m).step_by(MR) {
                let i1 = (i0 + MR).min(m);
                I::tile(simd, kind, &panel, &xs[i0..i1], &ms[i0..i1], &mut tile[..i1 - i0]);
                for (i, o) in (i0..i1).zip(&tile) {
                    // Safety: columns `p · NR ..` of row `i` belong to this task only.
                    unsafe { cols.write(i * n + p * NR, &o[..valid]) };
                }
            }
        }
    });
    out
}
