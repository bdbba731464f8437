//! CPU GEMM in f32: `out = a · b_tᵀ`.
//!
//! Two paths:
//! - `m ≤ SMALL_M` (decode and small batches): weight-streaming. Weight rows are split into
//!   blocks (rayon tasks); each block stays in L2 while the rows of `a` pass over it four at a
//!   time, so the weights come from memory once and each loaded weight chunk feeds four dot
//!   products. For `m = 1` this is a matrix-vector product that runs at memory bandwidth.
//!   Dot products keep 16 partial sums in fixed-size chunks, so the compiler emits wide SIMD
//!   (AVX2 when the CPU has it, chosen at run time; SSE2 otherwise), without FMA contraction;
//!   a row's result is bit-identical whatever the batch around it and on either path.
//! - larger `m` (prefill): the `gemm` crate (packed, cache-blocked), parallel over rayon.
//!   Measured on 2 cores, the two paths are about even at m = 64.
//!
//! Locking: `a` and `b_t` are read-locked (once if they share storage), `out` write-locked;
//! `matmul` has already rejected `out` sharing storage with an input.

use crate::device::gemm::GemmError;
use crate::device::host_buf::HostRead;
use crate::device::tensor::Tensor;
use rayon::prelude::*;

/// Largest `m` served by the weight-streaming path; beyond it the packed GEMM is as fast.
pub(crate) const SMALL_M: usize = 64;

/// Partial sums per dot product: 16 floats = two AVX registers (four products in flight
/// use eight).
const LANES: usize = 16;

/// Weight bytes per block: stays in L2 while all rows of `a` pass over it.
const BLOCK_BYTES: usize = 256 * 1024;

/// Row-major f32 matrix view: element `(r, c)` at `data[r * stride + c]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> Mat<'a> {
    #[inline(always)]
    fn row(&self, r: usize) -> &'a [f32] {
        &self.data[r * self.stride..r * self.stride + self.cols]
    }
}

pub(crate) fn matmul_f32(a: &Tensor, b_t: &Tensor, out: &mut Tensor) -> Result<(), GemmError> {
    let ga = a.host_buf("matmul")?.read().map_err(crate::device::tensor::TensorError::from)?;
    let gb_own: Option<HostRead<'_>> = if b_t.shares_storage(a) {
        None
    } else {
        Some(b_t.host_buf("matmul")?.read().map_err(crate::device::tensor::TensorError::from)?)
    };
    let b_bytes = gb_own.as_ref().map_or(ga.bytes(), |g| g.bytes());
    let am = Mat { data: a.typed::<f32>(ga.bytes())?, rows: a.rows(), cols: a.cols(), stride: a.row_stride() };
    let bm = Mat { data: b_t.typed::<f32>(b_bytes)?, rows: b_t.rows(), cols: b_t.cols(), stride: b_t.row_stride() };
    let (rows, cols, stride) = (out.rows(), out.cols(), out.row_stride());
    out.with_host_mut::<f32, ()>(|o| {
        if am.rows <= SMALL_M {
            small_m(am, bm, o.data, stride)
        } else {
            big_m(am, bm, o.data, rows, cols, stride)
        }
    })?;
    Ok(())
}

/// The weight-streaming path. `out` is the view's data (row `i` at `i * out_stride`).
pub(crate) fn small_m(a: Mat<'_>, b: Mat<'_>, out: &mut [f32], out_stride: usize) {
    let (m, n, k) = (a.rows, b.rows, a.cols);
    // Blocks of weight rows: many (rayon balances them across threads; a thread slowed by other
    // load just takes fewer), each small enough to stay in L2 while every row of `a` passes
    // over it (so the weights come from memory once), at least 16 rows to amortise the task.
    let l2_rows = (BLOCK_BYTES / (k * 4).max(1)).max(16);
    let per_block = (n / (rayon::current_num_threads() * 16)).clamp(16, 128).min(l2_rows);
    if m == 1 {
        out[..n].par_chunks_mut(per_block).enumerate().for_each(|(bi, o)| block(a, b, bi * per_block, o));
        return;
    }
    // Several rows of `a`: compute `out` transposed per block (`t[j*m + i]`), then scatter.
    let mut t = vec![0f32; n * m];
    t.par_chunks_mut(per_block * m).enumerate().for_each(|(bi, o)| block(a, b, bi * per_block, o));
    for (j, col) in t.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            out[i * out_stride + j] = *v;
        }
    }
}

/// `o[jj*m + i] = dot(a.row(i), b.row(j0 + jj))` for the weight rows of this block.
fn block(a: Mat<'_>, b: Mat<'_>, j0: usize, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { block_avx2(a, b, j0, o) };
            return;
        }
    }
    block_generic(a, b, j0, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(a: Mat<'_>, b: Mat<'_>, j0: usize, o: &mut [f32]) {
    // The same code, compiled with 256-bit vectors.
    block_generic(a, b, j0, o)
}

/// Rows of `a` go four at a time over each weight row, so one load of a weight chunk feeds
/// four dot products; the block's weight rows are reused from L2 by every group.
#[inline(always)]
fn block_generic(a: Mat<'_>, b: Mat<'_>, j0: usize, o: &mut [f32]) {
    let m = a.rows;
    let rows = o.len() / m;
    let mut i0 = 0;
    while i0 < m {
        let g = (m - i0).min(4);
        for jj in 0..rows {
            let w = b.row(j0 + jj);
            let cell = &mut o[jj * m + i0..jj * m + i0 + g];
            if g == 1 {
                cell[0] = dot1(a.row(i0), w);
            } else {
                // A short group (2 or 3 rows) repeats its last row; those results are dropped.
                let x = [0, 1, 2, 3].map(|r| a.row(i0 + r.min(g - 1)));
                cell.copy_from_slice(&dot4(x, w)[..g]);
            }
        }
        i0 += g;
    }
}

// `dot1` and `dot4` compute each dot product the same way — LANES partial sums advanced
// chunk by chunk, the tail summed in order, the lanes folded pairwise in a fixed order — so a
// token's result does not depend on which other rows share its batch. They are two functions
// (not one generic over the row count) because the compiler vectorises the four explicit
// accumulators and not a 2-D accumulator array.

/// One dot product (also attention's query · key on the CPU: its fixed order vectorises, a
/// sequential sum does not).
#[inline(always)]
pub(crate) fn dot1(x: &[f32], w: &[f32]) -> f32 {
    let (wc, w_tail) = w.as_chunks::<LANES>();
    let full = wc.len() * LANES;
    let xc = x[..full].as_chunks::<LANES>().0;
    let mut acc = [0f32; LANES];
    for (w, p) in wc.iter().zip(xc) {
        for l in 0..LANES {
            acc[l] += p[l] * w[l];
        }
    }
    finish(acc, &x[full..], w_tail)
}

/// Four dot products against one weight row: each weight chunk is loaded once.
#[inline(always)]
fn dot4(x: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    let (wc, w_tail) = w.as_chunks::<LANES>();
    let full = wc.len() * LANES;
    let [x0, x1, x2, x3] = x.map(|r| r[..full].as_chunks::<LANES>().0);
    let (mut a0, mut a1, mut a2, mut a3) = ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    for ((((w, p0), p1), p2), p3) in wc.iter().zip(x0).zip(x1).zip(x2).zip(x3) {
        for l in 0..LANES {
            a0[l] += p0[l] * w[l];
            a1[l] += p1[l] * w[l];
            a2[l] += p2[l] * w[l];
            a3[l] += p3[l] * w[l];
        }
    }
    [
        finish(a0, &x[0][full..], w_tail),
        finish(a1, &x[1][full..], w_tail),
        finish(a2, &x[2][full..], w_tail),
        finish(a3, &x[3][full..], w_tail),
    ]
}

/// Fold the partial sums pairwise (fixed order) and add the tail.
#[inline(always)]
fn finish(mut acc: [f32; LANES], x_tail: &[f32], w_tail: &[f32]) -> f32 {
    let mut tail = 0f32;
    for (p, q) in x_tail.iter().zip(w_tail) {
        tail += p * q;
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0] + tail
}

/// The packed path (`gemm` crate) for `m > SMALL_M`.
pub(crate) fn big_m(a: Mat<'_>, b: Mat<'_>, out: &mut [f32], m: usize, n: usize, out_stride: usize) {
    let k = a.cols;
    // SAFETY: every pointer/stride pair addresses only elements inside the borrowed slices:
    // a is m×k with row stride a.stride, b_t is n×k with row stride b.stride (read as the k×n
    // matrix b_tᵀ: row step 1, column step b.stride), out is m×n with row stride out_stride;
    // the slices were checked to span those views, and `out` does not overlap the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_stride as isize,
            false,
            a.data.as_ptr(),
            1,
            a.stride as isize,
            b.data.as_ptr(),
            b.stride as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }
}
