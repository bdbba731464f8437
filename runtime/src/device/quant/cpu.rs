//! `out = x · Wᵀ` on the CPU for a quantized `W`, reading its blocks directly.
//!
//! Each activation row is quantized on the fly to blocks of 32 ([`ActBlock`], see
//! [`super::activations`]: 16-bit by default, or llama.cpp's 8-bit rules), and a weight
//! block's contribution is an integer dot product scaled once:
//! - Q4_0: `d_w·d_x·(Σ n·q − 8·Σq)` (nibbles `n` unsigned);
//! - Q4_1: `d_w·d_x·Σ n·q + m_w·d_x·Σq`;
//! - Q8_0: `d_w·d_x·Σ w·q`;
//! - every other format, through its 32-value slices ([`super::blocks`]): per half of 16,
//!   `scale·d_x·Σ w·q` (+ `min·d_x·Σq` for formats with a min). The AVX2 kernels unpack the
//!   32-value formats per block and Q4_K / Q5_K / Q6_K per slice with SIMD (Q2_K and Q3_K
//!   through the scalar slice form); the slice form is exact for every format.
//!
//! The integer sums are exact; only the f32 accumulation order differs between the portable
//! path and the AVX2 ones (`cpu/avx2.rs` on 16-bit activations, `cpu/avx2_q8.rs` on 8-bit;
//! chosen at run time with `is_x86_feature_detected!`; `KILN_CPU_SIMD=0` forces the portable
//! path, which the tests run too). Output rows are split across rayon tasks by weight rows,
//! each task passing its weight rows over tiles of 16 activation rows. Many rows (prefill) take
//! the blocked GEMM of [`gemm`] instead, which unpacks each weight block once for all of them
//! (`linear` chooses by the row count). Activation quantization is the only difference from the
//! dequantize-then-f32 reference.

pub use super::activations::{quantize_row, ActBlock, ActBlock8};
use super::blocks::{unpack, Slice32};
use super::{f16_at, QuantFormat, QuantMatrix, BLOCK};
use rayon::prelude::*;

/// Which dot-product implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Portable,
    /// AVX2, FMA and F16C. (An AVX-512 VNNI path — one `vpdpwssd` per 32 values — was
    /// measured 12% slower in decode on the 2-core CI-class machine, 69 against 78 tok/s on the
    /// default model, and removed.)
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2, FMA and F16C plus AVX-512 F, BW, VL and VNNI: the GEMM's micro-kernels multiply
    /// with `vpdpwssd` / `vpdpbusd` (`cpu/gemm_vnni.rs`); the one-row kernels are the AVX2 ones.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Simd {
    /// The fastest path this CPU supports (unless `KILN_CPU_SIMD=0`, which forces the portable
    /// path).
    pub fn detect() -> Simd {
        if std::env::var("KILN_CPU_SIMD").as_deref() == Ok("0") {
            return Simd::Portable;
        }
        *Simd::available().last().unwrap_or(&Simd::Portable)
    }

    /// Every path this CPU can run, slowest first (for tests).
    pub fn available() -> Vec<Simd> {
        let mut v = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            v.push(Simd::Avx2);
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                v.push(Simd::Avx512Vnni);
            }
        }
        v
    }
}

/// The dot product of one weight row (its blocks) with one quantized activation row.
pub fn dot_row(simd: Simd, format: QuantFormat, w: &[u8], x: &[ActBlock]) -> f32 {
    let mut out = [0f32];
    dot_rows(simd, format, w, &[x], &mut Scratch::default(), &mut out);
    out[0]
}

fn dot_portable(format: QuantFormat, w: &[u8], x: &[ActBlock]) -> f32 {
    let bb = format.block_bytes();
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(bb).zip(x) {
        let d = f16_at(b, 0) * a.d;
        match format {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                let qs = if format == QuantFormat::Q4_0 { &b[2..18] } else { &b[4..20] };
                let (lo, hi) = a.qs.split_at(16);
                let s: i32 = qs
                    .iter()
                    .zip(lo.iter().zip(hi))
                    .map(|(&n, (&l, &h))| (n & 0x0f) as i32 * l as i32 + (n >> 4) as i32 * h as i32)
                    .sum();
                if format == QuantFormat::Q4_0 {
                    acc += d * (s - 8 * a.sum) as f32;
                } else {
                    acc += d * s as f32 + f16_at(b, 2) * a.d * a.sum as f32;
                }
            }
            QuantFormat::Q8_0 => {
                let s: i32 = b[2..34].iter().zip(&a.qs).map(|(&w, &q)| (w as i8) as i32 * q as i32).sum();
                acc += d * s as f32;
            }
            _ => unreachable!("{format} goes through its slices"),
        }
    }
    acc
}

/// Any format through its 32-value slices.
fn dot_portable_sliced(format: QuantFormat, w: &[u8], x: &[ActBlock]) -> f32 {
    let per = format.block_len() / BLOCK;
    let mut slice = Slice32::default();
    let mut acc = 0f32;
    for (b, xs) in w.chunks_exact(format.block_bytes()).zip(x.chunks_exact(per)) {
        for (s, a) in xs.iter().enumerate() {
            unpack(format, b, s, &mut slice);
            let half = |h: usize| -> i32 {
                slice.w[16 * h..16 * h + 16]
                    .iter()
                    .zip(&a.qs[16 * h..16 * h + 16])
                    .map(|(&w, &q)| w as i32 * q as i32)
                    .sum()
            };
            acc += a.d * (slice.scale[0] * half(0) as f32 + slice.scale[1] * half(1) as f32);
            if format.has_min() {
                acc += a.d * (slice.min[0] * a.sum_lo as f32 + slice.min[1] * (a.sum - a.sum_lo) as f32);
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_q8;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_avx2;
#[cfg(target_arch = "x86_64")]
mod gemm_vnni;
pub mod gemv;
#[cfg(target_arch = "x86_64")]
mod gemv_avx2;
#[cfg(target_arch = "x86_64")]
mod kscales_avx2;
pub mod panel;
#[cfg(target_arch = "x86_64")]
mod panel_avx2;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Scratch space of one task, reused across weight rows.
#[derive(Default)]
pub struct Scratch {
    #[cfg(target_arch = "x86_64")]
    avx2: avx2::Scratch,
}

/// `out[i] = w · xs[i]` for one weight row and every activation row (`out.len() == xs.len()`).
pub fn dot_rows(simd: Simd, format: QuantFormat, w: &[u8], xs: &[&[ActBlock]], scratch: &mut Scratch, out: &mut [f32]) {
    match simd {
        Simd::Portable => {
            let dot = match format {
                QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => dot_portable,
                _ => dot_portable_sliced,
            };
            for (o, x) in out.iter_mut().zip(xs) {
                *o = dot(format, w, x);
            }
        }
        // Safety: `Avx2` and `Avx512Vnni` are only constructed after detecting AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512Vnni => unsafe {
            let s = &mut scratch.avx2;
            avx2::dot_many(format, w, xs, &mut s.acc, &mut s.extra, out)
        },
    }
}

/// `out[i] = w · xs[i]` for 8-bit activation rows (`Activations::Ggml8`): the 8-bit AVX2
/// kernel, or the portable one on the same values widened to 16 bits (the integer sums are
/// the same; only the f32 accumulation order differs).
pub fn dot_rows8(
    simd: Simd,
    format: QuantFormat,
    w: &[u8],
    xs: &[&[ActBlock8]],
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    match simd {
        Simd::Portable => {
            let wide: Vec<Vec<ActBlock>> = xs.iter().map(|x| x.iter().map(ActBlock::from).collect()).collect();
            let wide: Vec<&[ActBlock]> = wide.iter().map(Vec::as_slice).collect();
            dot_rows(simd, format, w, &wide, scratch, out)
        }
        // Safety: `Avx2` and `Avx512Vnni` are only constructed after detecting AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512Vnni => unsafe {
            let s = &mut scratch.avx2;
            avx2_q8::dot_many(format, w, xs, &mut s.acc, &mut s.extra, out)
        },
    }
}

/// Weight rows per rayon task: at least this many (a few dozen KB of blocks), and no more
/// tasks than twice the threads (waking workers per task costs more than the work balances).
const MIN_ROWS_PER_TASK: usize = 64;

/// Activation rows multiplied with each weight row in one pass.
const M_TILE: usize = 16;

/// `out[i][j] = x_i · w_j` for the quantized activation rows `xq` (each `w.cols() / 32`
/// blocks): `out` is `xq.len()` rows of `w.rows()` values, row-major.
pub fn matmul_q16(simd: Simd, xq: &[Vec<ActBlock>], w: &QuantMatrix) -> Vec<f32> {
    matmul_tiled(xq, w, |xs, r, scratch, o| dot_rows(simd, w.format(), w.row(r), xs, scratch, o))
}

/// [`matmul_q16`] for 8-bit activation rows.
pub fn matmul_q8(simd: Simd, xq: &[Vec<ActBlock8>], w: &QuantMatrix) -> Vec<f32> {
    matmul_tiled(xq, w, |xs, r, scratch, o| dot_rows8(simd, w.format(), w.row(r), xs, scratch, o))
}

/// The weight rows split across rayon tasks, activation rows in tiles; `dot(tile, r, …)`
/// writes weight row `r`'s products with a tile of activation rows.
fn matmul_tiled<X: Sync>(
    xq: &[Vec<X>],
    w: &QuantMatrix,
    dot: impl Fn(&[&[X]], usize, &mut Scratch, &mut [f32]) + Sync,
) -> Vec<f32> {
    let (m, n) = (xq.len(), w.rows());
    let per_task = n.div_ceil(2 * rayon::current_num_threads()).max(MIN_ROWS_PER_TASK);
    let parts: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(per_task))
        .into_par_iter()
        .map(|t| {
            let (r0, r1) = (t * per_task, ((t + 1) * per_task).min(n));
            // Row-major over weight rows here (`[r1 - r0, m]`), transposed when gathered.
            let mut part = vec![0f32; m * (r1 - r0)];
            let xs: Vec<&[X]> = xq.iter().map(Vec::as_slice).collect();
            let mut scratch = Scratch::default();
            // Activation rows in tiles that stay in L1 while every weight row of the task passes
            // over them (all 512 rows of a long prefill are 660 KB for a 576-wide matrix: read
            // once per weight row, they made prefill 2.5x slower than the f32 GEMM).
            for i0 in (0..m).step_by(M_TILE) {
                let i1 = (i0 + M_TILE).min(m);
                for (k, r) in (r0..r1).enumerate() {
                    dot(&xs[i0..i1], r, &mut scratch, &mut part[k * m + i0..k * m + i1]);
                }
            }
            (r0, part)
        })
        .collect();
    let mut out = vec![0f32; m * n];
    for (r0, part) in parts {
        for (r, vals) in part.chunks_exact(m.max(1)).enumerate() {
            for (i, &v) in vals.iter().enumerate() {
                out[i * n + r0 + r] = v;
            }
        }
    }
    out
}
