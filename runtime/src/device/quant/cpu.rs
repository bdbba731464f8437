//! `out = x · Wᵀ` on the CPU for a quantized `W`, reading its blocks directly.
//!
//! Each activation row is quantized on the fly to 16-bit blocks of 32 ([`ActBlock`]: scale
//! `d = max|x| / 32767`, `q = round(x / d)`, and `Σq`), and a weight block's contribution is an
//! integer dot product scaled once:
//! - Q4_0: `d_w·d_x·(Σ n·q − 8·Σq)` (nibbles `n` unsigned);
//! - Q4_1: `d_w·d_x·Σ n·q + m_w·d_x·Σq`;
//! - Q8_0: `d_w·d_x·Σ w·q`.
//!
//! The integer sums are exact; only the f32 accumulation order differs between the portable
//! path and the AVX2 one (chosen at run time with `is_x86_feature_detected!`; `KILN_CPU_SIMD=0`
//! forces the portable path, which the tests run too). Output rows are split across rayon
//! tasks by weight rows, each task reading its weight rows once for all activation rows.
//! Activation quantization is the only difference from the dequantize-then-f32 reference: a
//! relative error of at most 2⁻¹⁶ of the block's largest value. llama.cpp quantizes
//! activations to 8 bits instead; on the default model that moved logits by up to 7% of the
//! largest logit and changed chat answers, while 16 bits cost one more multiply-add
//! instruction per block here (`madd_epi16` on 16-bit lanes instead of `maddubs`).

use super::{f16_at, QuantFormat, QuantMatrix, BLOCK};
use rayon::prelude::*;

/// One activation block quantized to 16 bits.
#[derive(Clone, Copy, Debug)]
pub struct ActBlock {
    pub d: f32,
    /// `Σ q` over the block.
    pub sum: i32,
    pub qs: [i16; BLOCK],
}

/// The largest quantized activation magnitude.
const QMAX: f32 = 32767.0;

/// Quantizes one row (`x.len()` a multiple of 32) into `out` (`x.len() / 32` blocks).
pub fn quantize_row(x: &[f32], out: &mut Vec<ActBlock>) {
    out.clear();
    for b in x.chunks_exact(BLOCK) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / QMAX;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i16; BLOCK];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(b) {
            *q = (v * id).round().clamp(-QMAX, QMAX) as i16;
            sum += *q as i32;
        }
        out.push(ActBlock { d, sum, qs });
    }
}

/// Which dot-product implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Simd {
    /// The fastest path this CPU supports (unless `KILN_CPU_SIMD=0`).
    pub fn detect() -> Simd {
        if std::env::var("KILN_CPU_SIMD").as_deref() == Ok("0") {
            return Simd::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Simd::Avx2;
        }
        Simd::Portable
    }

    /// Every path this CPU can run (for tests).
    pub fn available() -> Vec<Simd> {
        let mut v = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(Simd::Avx2);
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
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{f16_at, ActBlock, QuantFormat};
    use std::arch::x86_64::*;

    /// `out[i] = w · xs[i]` for one weight row and every activation row: each weight block is
    /// unpacked once and used for all rows; per row, blocks accumulate in order, so a row's
    /// result does not depend on how many rows share the call.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_many(
        format: QuantFormat,
        w: &[u8],
        xs: &[&[ActBlock]],
        acc: &mut Vec<__m256>,
        extra: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let bb = format.block_bytes();
        let low4 = _mm_set1_epi8(0x0f);
        acc.clear();
        acc.resize(xs.len(), _mm256_setzero_ps());
        // Per-block scalar terms (Q4_0's −8·d·Σq, Q4_1's m·d_x·Σq).
        extra.clear();
        extra.resize(xs.len(), 0.0);
        for (j, b) in w.chunks_exact(bb).enumerate() {
            let dw = f16_at(b, 0);
            let (w_lo, w_hi) = match format {
                QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                    let off = if format == QuantFormat::Q4_0 { 2 } else { 4 };
                    // Safety: a block has 16 nibble bytes at `off`.
                    let packed = unsafe { _mm_loadu_si128(b[off..off + 16].as_ptr() as *const __m128i) };
                    // Values 0..15 are the low nibbles, 16..31 the high ones.
                    (
                        _mm256_cvtepu8_epi16(_mm_and_si128(packed, low4)),
                        _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low4)),
                    )
                }
                // Safety: a Q8_0 block has 32 value bytes at 2.
                QuantFormat::Q8_0 => unsafe {
                    (
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(b[2..18].as_ptr() as *const __m128i)),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(b[18..34].as_ptr() as *const __m128i)),
                    )
                },
            };
            let m = if format == QuantFormat::Q4_1 { f16_at(b, 2) } else { 0.0 };
            for ((x, a), e) in xs.iter().zip(acc.iter_mut()).zip(extra.iter_mut()) {
                let blk = &x[j];
                let d = dw * blk.d;
                match format {
                    QuantFormat::Q4_0 => *e -= 8.0 * d * blk.sum as f32,
                    QuantFormat::Q4_1 => *e += m * blk.d * blk.sum as f32,
                    QuantFormat::Q8_0 => {}
                }
                // Safety: `ActBlock::qs` is 32 i16 (64 bytes); loads are unaligned.
                let (q_lo, q_hi) = unsafe {
                    (
                        _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i),
                        _mm256_loadu_si256(blk.qs[16..].as_ptr() as *const __m256i),
                    )
                };
                let prod = _mm256_add_epi32(_mm256_madd_epi16(w_lo, q_lo), _mm256_madd_epi16(w_hi, q_hi));
                *a = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(prod), *a);
            }
        }
        for ((o, a), e) in out.iter_mut().zip(acc.iter()).zip(extra.iter()) {
            let hi = _mm256_extractf128_ps(*a, 1);
            let s4 = _mm_add_ps(_mm256_castps256_ps128(*a), hi);
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
            *o = _mm_cvtss_f32(s1) + e;
        }
    }

    /// Accumulators reused across weight rows.
    #[derive(Default)]
    pub struct Scratch {
        pub acc: Vec<__m256>,
        pub extra: Vec<f32>,
    }
}

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
            for (o, x) in out.iter_mut().zip(xs) {
                *o = dot_portable(format, w, x);
            }
        }
        // Safety: `Avx2` is only constructed after detecting AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe {
            let s = &mut scratch.avx2;
            avx2::dot_many(format, w, xs, &mut s.acc, &mut s.extra, out)
        },
    }
}

/// Weight rows per rayon task: a few dozen KB of blocks.
const ROWS_PER_TASK: usize = 64;

/// `out[i][j] = x_i · w_j` for the quantized activation rows `xq` (each `w.cols() / 32`
/// blocks): `out` is `xq.len()` rows of `w.rows()` values, row-major.
pub fn matmul_q16(simd: Simd, xq: &[Vec<ActBlock>], w: &QuantMatrix) -> Vec<f32> {
    let (m, n) = (xq.len(), w.rows());
    let parts: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|t| {
            let (r0, r1) = (t * ROWS_PER_TASK, ((t + 1) * ROWS_PER_TASK).min(n));
            // Row-major over weight rows here (`[r1 - r0, m]`), transposed when gathered.
            let mut part = vec![0f32; m * (r1 - r0)];
            let xs: Vec<&[ActBlock]> = xq.iter().map(Vec::as_slice).collect();
            let mut scratch = Scratch::default();
            for (r, o) in (r0..r1).zip(part.chunks_exact_mut(m.max(1))) {
                dot_rows(simd, w.format(), w.row(r), &xs, &mut scratch, o);
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
