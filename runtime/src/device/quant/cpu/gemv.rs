//! `out = x · Wᵀ` for a few activation rows (decode: 1 to [`GEMV_MAX_ROWS`]) with exactly the
//! GEMM's arithmetic (`gemm.rs`), so that a row's result is the same bits whichever of the two
//! its batch took: a sampled request reproduces whatever else is batched with it.
//!
//! The GEMM packs a panel of weight rows for many activation rows; for a few the packing would
//! cost as much as the products, so here each weight row's blocks are read once, straight from
//! the matrix, and every activation row is multiplied with them (AVX2: `gemv_avx2.rs`, eight
//! weight rows at a time). The portable path is the GEMM's own (the same bits by definition).
//! Weight rows are split across rayon tasks as the GEMM's panels are.

use super::gemm::{gemm_q16, gemm_q8, Columns, GemmAct, XMeta, MR};
use super::panel::{Scales, NR};
use super::{ActBlock, ActBlock8, Simd};
use crate::device::quant::{QuantFormat, QuantMatrix, BLOCK};
use rayon::prelude::*;

/// The most activation rows this product takes (the GEMM's tile height).
pub const GEMV_MAX_ROWS: usize = MR;

/// Weight rows per rayon task: at least this many (a few dozen KB of blocks), and no more tasks
/// than twice the threads (as the GEMM).
const MIN_ROWS_PER_TASK: usize = 64;

/// `x · wᵀ` for up to [`GEMV_MAX_ROWS`] 16-bit activation rows (`[xq.len(), w.rows()]`).
pub fn gemv_q16(simd: Simd, xq: &[Vec<ActBlock>], w: &QuantMatrix) -> Vec<f32> {
    match simd {
        Simd::Portable => gemm_q16(simd, xq, w),
        #[cfg(target_arch = "x86_64")]
        // Safety: every SIMD path implies AVX2, FMA and F16C (`Simd::available`).
        _ => gemv(xq, w, |f, rb, rows, ahead, kq, xs, ms, out| unsafe {
            super::gemv_avx2::group16(f, rb, rows, ahead, kq, xs, ms, out)
        }),
    }
}

/// `x · wᵀ` for up to [`GEMV_MAX_ROWS`] 8-bit activation rows.
pub fn gemv_q8(simd: Simd, xq: &[Vec<ActBlock8>], w: &QuantMatrix) -> Vec<f32> {
    match simd {
        Simd::Portable => gemm_q8(simd, xq, w),
        #[cfg(target_arch = "x86_64")]
        // Safety: as in `gemv_q16`.
        _ => gemv(xq, w, |f, rb, rows, ahead, kq, xs, ms, out| unsafe {
            super::gemv_avx2::group8(f, rb, rows, ahead, kq, xs, ms, out)
        }),
    }
}

/// One group of `NR` weight rows (`rb`, the first `rows` real; the next group's rows to
/// prefetch; scratch for scales) times every activation row.
type Group<X> =
    fn(QuantFormat, &[&[u8]; NR], usize, &[&[u8]; NR], &mut Vec<Scales>, &[&[X]], &[&[XMeta]], &mut [[f32; NR]]);

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn gemv<X: GemmAct>(xq: &[Vec<X>], w: &QuantMatrix, group: Group<X>) -> Vec<f32> {
    let (m, n) = (xq.len(), w.rows());
    let slices = w.cols() / BLOCK;
    assert!(m <= GEMV_MAX_ROWS, "{m} rows for the few-rows product");
    assert!(xq.iter().all(|x| x.len() >= slices), "activation rows too short");
    let metas: Vec<Vec<XMeta>> = xq.iter().map(|x| x.iter().map(X::meta).collect()).collect();
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let per_task = n.div_ceil(2 * rayon::current_num_threads()).max(MIN_ROWS_PER_TASK).next_multiple_of(NR);
    let cols = Columns::new(&mut out);
    let w_rows = w.rows_view();
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let xs: Vec<&[X]> = xq.iter().map(Vec::as_slice).collect();
        let ms: Vec<&[XMeta]> = metas.iter().map(Vec::as_slice).collect();
        let mut res = [[0f32; NR]; GEMV_MAX_ROWS];
        let mut kq = Vec::new();
        let end = ((t + 1) * per_task).min(n);
        let rows_from = |r0: usize| {
            let mut rb: [&[u8]; NR] = [&[]; NR];
            for (r, b) in rb.iter_mut().enumerate().take(end.saturating_sub(r0)) {
                *b = w_rows.row(r0 + r);
            }
            rb
        };
        let mut rb = rows_from(t * per_task);
        for r0 in (t * per_task..end).step_by(NR) {
            let rows = NR.min(end - r0);
            let ahead = rows_from(r0 + NR);
            group(w.format(), &rb, rows, &ahead, &mut kq, &xs, &ms, &mut res[..m]);
            for (i, o) in res[..m].iter().enumerate() {
                // Safety: columns `r0 .. r0 + rows` belong to this task only.
                unsafe { cols.write(i * n + r0, &o[..rows]) };
            }
            rb = ahead;
        }
    });
    out
}
