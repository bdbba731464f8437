//! `out = x · Wᵀ` on the CPU for a quantized `W`, reading its blocks directly.
//!
//! Each activation row is quantized on the fly to 16-bit blocks of 32 ([`ActBlock`]: scale
//! `d = max|x| / 32767`, `q = round(x / d)`, and `Σq`), and a weight block's contribution is an
//! integer dot product scaled once:
//! - Q4_0: `d_w·d_x·(Σ n·q − 8·Σq)` (nibbles `n` unsigned);
//! - Q4_1: `d_w·d_x·Σ n·q + m_w·d_x·Σq`;
//! - Q8_0: `d_w·d_x·Σ w·q`;
//! - every other format, through its 32-value slices ([`super::blocks`]): per half of 16,
//!   `scale·d_x·Σ w·q` (+ `min·d_x·Σq` for formats with a min). Q4_0, Q4_1 and Q8_0 have their
//!   own unpacking (the default model's formats); the slice form is exact for them too.
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

use super::blocks::{unpack, Slice32};
use super::{f16_at, QuantFormat, QuantMatrix, BLOCK};
use rayon::prelude::*;

/// One activation block quantized to 16 bits.
#[derive(Clone, Copy, Debug)]
pub struct ActBlock {
    pub d: f32,
    /// `Σ q` over the block.
    pub sum: i32,
    /// `Σ q` over its first 16 values (formats with a min per 16 values need both halves).
    pub sum_lo: i32,
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
        for (q, &v) in qs.iter_mut().zip(b) {
            *q = (v * id).round().clamp(-QMAX, QMAX) as i16;
        }
        let sum_lo = qs[..16].iter().map(|&q| q as i32).sum();
        let sum = sum_lo + qs[16..].iter().map(|&q| q as i32).sum::<i32>();
        out.push(ActBlock { d, sum, sum_lo, qs });
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
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            return Simd::Avx2;
        }
        Simd::Portable
    }

    /// Every path this CPU can run (for tests).
    pub fn available() -> Vec<Simd> {
        let mut v = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
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
mod avx2 {
    use super::{ActBlock, QuantFormat, Slice32, BLOCK};
    use crate::device::quant::blocks::{slice_ints, slice_scales};
    use std::arch::x86_64::*;

    /// An IEEE half at `b[i..i + 2]` as f32, by the F16C instruction.
    #[inline(always)]
    unsafe fn half(b: &[u8], i: usize) -> f32 {
        let bits = u16::from_le_bytes([b[i], b[i + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// One block's 32 weights as two vectors of 16 i16 (values 0..15, then 16..31): Q4 nibbles
    /// raw (0..15; Q4_0's −8 is applied through Σq), Q5_0 as its signed values, Q5_1 raw
    /// (0..31), Q8_0 signed.
    #[inline(always)]
    unsafe fn unpack<const F: u8>(b: &[u8]) -> (__m256i, __m256i) {
        // Safety (loads): a Q4_0 block has 16 nibble bytes at 2, Q4_1 at 4, Q5_0 at 6 (high bits
        // at 2), Q5_1 at 8 (high bits at 4), Q8_0 32 bytes at 2.
        unsafe {
            if F == Q8 {
                return (
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(b[2..18].as_ptr() as *const __m128i)),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(b[18..34].as_ptr() as *const __m128i)),
                );
            }
            let off = [2, 4, 0, 6, 8][F as usize];
            let packed = _mm_loadu_si128(b[off..off + 16].as_ptr() as *const __m128i);
            let low4 = _mm_set1_epi8(0x0f);
            let lo = _mm256_cvtepu8_epi16(_mm_and_si128(packed, low4));
            let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low4));
            if F == Q40 || F == Q41 {
                return (lo, hi);
            }
            // Q5: bit j of the 32 high bits is the fifth bit of value j.
            let qh = u32::from_le_bytes([b[off - 4], b[off - 3], b[off - 2], b[off - 1]]);
            let lane_bits =
                _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, i16::MIN);
            let fifth = |bits: u32| {
                let set = _mm256_and_si256(_mm256_set1_epi16(bits as u16 as i16), lane_bits);
                _mm256_and_si256(_mm256_cmpeq_epi16(set, lane_bits), _mm256_set1_epi16(16))
            };
            let (lo, hi) = (_mm256_or_si256(lo, fifth(qh)), _mm256_or_si256(hi, fifth(qh >> 16)));
            if F == Q50 {
                let sixteen = _mm256_set1_epi16(16);
                (_mm256_sub_epi16(lo, sixteen), _mm256_sub_epi16(hi, sixteen))
            } else {
                (lo, hi)
            }
        }
    }

    /// Slice `s` of a Q4_K, Q5_K or Q6_K super-block as two vectors of 16 i16 (its `w`, see
    /// `blocks`).
    #[inline(always)]
    unsafe fn k_slice_ints(format: QuantFormat, b: &[u8], s: usize) -> (__m256i, __m256i) {
        // Safety (loads): every range below lies inside one whole super-block (see `blocks`).
        unsafe {
            let load = |at: usize| _mm256_loadu_si256(b[at..at + 32].as_ptr() as *const __m256i);
            let shift = |v: __m256i, n: usize| _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32));
            let low4 = _mm256_set1_epi8(0x0f);
            let bytes = match format {
                QuantFormat::Q6_K => {
                    let (n, k) = (s / 4, s % 4);
                    let l = _mm256_and_si256(shift(load(64 * n + 32 * (k % 2)), 4 * (k / 2)), low4);
                    let h = _mm256_and_si256(shift(load(128 + 32 * n), 2 * k), _mm256_set1_epi8(3));
                    let v = _mm256_sub_epi8(_mm256_or_si256(l, _mm256_slli_epi16(h, 4)), _mm256_set1_epi8(32));
                    return (
                        _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)),
                        _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)),
                    );
                }
                QuantFormat::Q4_K => _mm256_and_si256(shift(load(16 + 32 * (s / 2)), 4 * (s % 2)), low4),
                _ => {
                    let v = _mm256_and_si256(shift(load(48 + 32 * (s / 2)), 4 * (s % 2)), low4);
                    let h = _mm256_and_si256(shift(load(16), s), _mm256_set1_epi8(1));
                    _mm256_or_si256(v, _mm256_slli_epi16(h, 4))
                }
            };
            (
                _mm256_cvtepu8_epi16(_mm256_castsi256_si128(bytes)),
                _mm256_cvtepu8_epi16(_mm256_extracti128_si256(bytes, 1)),
            )
        }
    }

    /// Bytes ahead of the current block to prefetch.
    const PREFETCH: usize = 2048;

    const Q40: u8 = 0;
    const Q41: u8 = 1;
    const Q8: u8 = 2;
    const Q50: u8 = 3;
    const Q51: u8 = 4;

    /// `out[i] = w · xs[i]` for one weight row and every activation row: each weight block is
    /// unpacked once and used for all rows; per row, blocks accumulate in order, so a row's
    /// result does not depend on how many rows share the call.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_many(
        format: QuantFormat,
        w: &[u8],
        xs: &[&[ActBlock]],
        acc: &mut Vec<__m256>,
        extra: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        // Safety: the caller's guarantee, passed on.
        unsafe {
            match format {
                QuantFormat::Q4_0 => dot_many_in::<Q40>(w, xs, acc, extra, out),
                QuantFormat::Q4_1 => dot_many_in::<Q41>(w, xs, acc, extra, out),
                QuantFormat::Q8_0 => dot_many_in::<Q8>(w, xs, acc, extra, out),
                QuantFormat::Q5_0 => dot_many_in::<Q50>(w, xs, acc, extra, out),
                QuantFormat::Q5_1 => dot_many_in::<Q51>(w, xs, acc, extra, out),
                other => dot_many_sliced(other, w, xs, acc, extra, out),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_many_in<const F: u8>(
        w: &[u8],
        xs: &[&[ActBlock]],
        acc: &mut Vec<__m256>,
        extra: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let bb = [18, 20, 34, 22, 24][F as usize];
        if let [x] = xs {
            // One row (decode): accumulators in registers.
            let (mut a, mut e) = (_mm256_setzero_ps(), 0f32);
            for (b, blk) in w.chunks_exact(bb).zip(x.iter()) {
                // A hint only (prefetching past the row's end is harmless): the hardware
                // prefetcher alone left this loop waiting on memory (decode 40 tok/s on the default
                // model against 72 with 2 KB ahead; 0.5, 1 and 4 KB were slower).
                _mm_prefetch(b.as_ptr().wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
                // Safety: AVX2/F16C per the caller; `b` is one whole block.
                let ((w_lo, w_hi), dw) = unsafe { (unpack::<F>(b), half(b, 0)) };
                let d = dw * blk.d;
                if F == Q40 {
                    e -= 8.0 * d * blk.sum as f32;
                } else if F == Q41 || F == Q51 {
                    // Safety: as above.
                    e += unsafe { half(b, 2) } * blk.d * blk.sum as f32;
                }
                a = fma_block(a, d, w_lo, w_hi, blk);
            }
            out[0] = hsum(a) + e;
            return;
        }
        acc.clear();
        acc.resize(xs.len(), _mm256_setzero_ps());
        // Per-block scalar terms (Q4_0's −8·d·Σq, Q4_1's m·d_x·Σq).
        extra.clear();
        extra.resize(xs.len(), 0.0);
        for (j, b) in w.chunks_exact(bb).enumerate() {
            // Safety: AVX2/F16C per the caller; `b` is one whole block.
            let ((w_lo, w_hi), dw) = unsafe { (unpack::<F>(b), half(b, 0)) };
            // Safety: as above.
            let m = if F == Q41 || F == Q51 { unsafe { half(b, 2) } } else { 0.0 };
            for ((x, a), e) in xs.iter().zip(acc.iter_mut()).zip(extra.iter_mut()) {
                let blk = &x[j];
                let d = dw * blk.d;
                if F == Q40 {
                    *e -= 8.0 * d * blk.sum as f32;
                } else if F == Q41 || F == Q51 {
                    *e += m * blk.d * blk.sum as f32;
                }
                *a = fma_block(*a, d, w_lo, w_hi, blk);
            }
        }
        for ((o, a), e) in out.iter_mut().zip(acc.iter()).zip(extra.iter()) {
            *o = hsum(*a) + e;
        }
    }

    /// Any format through its 32-value slices ([`super::blocks`]): each slice is unpacked to
    /// 16-bit integers once and used for every activation row; per row, slices accumulate in
    /// order, as in [`dot_many_in`].
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_many_sliced(
        format: QuantFormat,
        w: &[u8],
        xs: &[&[ActBlock]],
        acc: &mut Vec<__m256>,
        extra: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let per = format.block_len() / BLOCK;
        acc.clear();
        acc.resize(xs.len(), _mm256_setzero_ps());
        extra.clear();
        extra.resize(xs.len(), 0.0);
        let mut slice = Slice32::default();
        for (i, b) in w.chunks_exact(format.block_bytes()).enumerate() {
            _mm_prefetch(b.as_ptr().wrapping_add(PREFETCH) as *const i8, _MM_HINT_T0);
            for s in 0..per {
                (slice.scale, slice.min) = slice_scales(format, b, s);
                // Safety: AVX2 per the caller; `b` is one whole block, `slice.w` 32 i16 (loads
                // unaligned).
                let (w_lo, w_hi) = unsafe {
                    match format {
                        QuantFormat::Q4_K | QuantFormat::Q5_K | QuantFormat::Q6_K => k_slice_ints(format, b, s),
                        _ => {
                            slice_ints(format, b, s, &mut slice.w);
                            (
                                _mm256_loadu_si256(slice.w.as_ptr() as *const __m256i),
                                _mm256_loadu_si256(slice.w[16..].as_ptr() as *const __m256i),
                            )
                        }
                    }
                };
                for ((x, a), e) in xs.iter().zip(acc.iter_mut()).zip(extra.iter_mut()) {
                    let blk = &x[i * per + s];
                    *a = fma_halves(*a, blk.d * slice.scale[0], blk.d * slice.scale[1], w_lo, w_hi, blk);
                    if format.has_min() {
                        *e += blk.d * (slice.min[0] * blk.sum_lo as f32 + slice.min[1] * (blk.sum - blk.sum_lo) as f32);
                    }
                }
            }
        }
        for ((o, a), e) in out.iter_mut().zip(acc.iter()).zip(extra.iter()) {
            *o = hsum(*a) + e;
        }
    }

    /// `a + d_lo · Σ (w · q)` over the first 16 values plus `d_hi · Σ (w · q)` over the rest,
    /// as 8 partial sums.
    #[inline(always)]
    fn fma_halves(a: __m256, d_lo: f32, d_hi: f32, w_lo: __m256i, w_hi: __m256i, blk: &ActBlock) -> __m256 {
        // Safety: only called from `dot_many_sliced` (AVX2/FMA enabled); `qs` is 32 i16, loads
        // unaligned.
        unsafe {
            let q_lo = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
            let q_hi = _mm256_loadu_si256(blk.qs[16..].as_ptr() as *const __m256i);
            let lo = _mm256_cvtepi32_ps(_mm256_madd_epi16(w_lo, q_lo));
            let hi = _mm256_cvtepi32_ps(_mm256_madd_epi16(w_hi, q_hi));
            _mm256_fmadd_ps(_mm256_set1_ps(d_hi), hi, _mm256_fmadd_ps(_mm256_set1_ps(d_lo), lo, a))
        }
    }

    /// `a + d · Σ (w · q)` over one block, as 8 partial sums.
    #[inline(always)]
    fn fma_block(a: __m256, d: f32, w_lo: __m256i, w_hi: __m256i, blk: &ActBlock) -> __m256 {
        // Safety: only called from `dot_many_in` (AVX2/FMA enabled); `qs` is 32 i16, loads
        // unaligned.
        unsafe {
            let q_lo = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
            let q_hi = _mm256_loadu_si256(blk.qs[16..].as_ptr() as *const __m256i);
            let prod = _mm256_add_epi32(_mm256_madd_epi16(w_lo, q_lo), _mm256_madd_epi16(w_hi, q_hi));
            _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(prod), a)
        }
    }

    #[inline(always)]
    fn hsum(a: __m256) -> f32 {
        // Safety: only called from `dot_many_in` (AVX2 enabled).
        unsafe {
            let hi = _mm256_extractf128_ps(a, 1);
            let s4 = _mm_add_ps(_mm256_castps256_ps128(a), hi);
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
            _mm_cvtss_f32(s1)
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
            let dot = match format {
                QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => dot_portable,
                _ => dot_portable_sliced,
            };
            for (o, x) in out.iter_mut().zip(xs) {
                *o = dot(format, w, x);
            }
        }
        // Safety: `Avx2` is only constructed after detecting AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe {
            let s = &mut scratch.avx2;
            avx2::dot_many(format, w, xs, &mut s.acc, &mut s.extra, out)
        },
    }
}

/// Weight rows per rayon task: at least this many (a few dozen KB of blocks), and no more
/// tasks than twice the threads (waking workers per task costs more than the work balances).
const MIN_ROWS_PER_TASK: usize = 64;

/// `out[i][j] = x_i · w_j` for the quantized activation rows `xq` (each `w.cols() / 32`
/// blocks): `out` is `xq.len()` rows of `w.rows()` values, row-major.
pub fn matmul_q16(simd: Simd, xq: &[Vec<ActBlock>], w: &QuantMatrix) -> Vec<f32> {
    let (m, n) = (xq.len(), w.rows());
    let per_task = n.div_ceil(2 * rayon::current_num_threads()).max(MIN_ROWS_PER_TASK);
    let parts: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(per_task))
        .into_par_iter()
        .map(|t| {
            let (r0, r1) = (t * per_task, ((t + 1) * per_task).min(n));
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
