//! 4-bit weights with a scale and an integer zero point per group of inputs — the form of
//! AWQ and GPTQ checkpoints — held packed and multiplied without a dense copy.
//!
//! Layout ([`Int4Matrix`]): row `r` (an output feature) is `cols / 8` little 32-bit words,
//! nibble `k` of word `j` holding input `8j + k` (GPTQ's packing, transposed to one row per
//! output so that a row's words are contiguous: what a GEMV reads); `scales[r * groups + g]`
//! (f32, widened exactly from the checkpoint's f16) and `zeros[r * groups + g]` (0..=15, or 16
//! for GPTQ's v1 "zero minus one" convention undone); the group of input `i` is `g_idx[i]`
//! when the checkpoint orders its groups by activation (GPTQ act-order), else `i / group`.
//! The value of `(r, i)` is `(q - zero) · scale`, exactly as the checkpoint defines it; the
//! loader (kiln-models' `weights::packed`) repacks AWQ's and GPTQ's words into this layout.
//!
//! Invariants (checked by [`Int4Matrix::new`]): `cols % 8 == 0`; contiguous groups tile the
//! inputs (`cols % group == 0`); every array has its stated length and every `g_idx` entry
//! names a group.

use crate::device::gemm_cpu::{big_m, Mat, SMALL_M};
use rayon::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Int4Error {
    #[error("int4: {0}")]
    Shape(String),
}

/// Which inputs share a scale and zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// Runs of `group` consecutive inputs.
    Contiguous(usize),
    /// Input `i` belongs to group `g_idx[i]` of `groups` (GPTQ act-order).
    Indexed { groups: usize, g_idx: Vec<u32> },
    /// Act-order with the inputs stored sorted by group ([`Int4Matrix::sorted_by_group`]):
    /// stored input `i` is input `perm[i]` of the checkpoint, and the stored inputs form runs of
    /// `group`, so the contiguous kernels run on activations read through `perm`.
    Sorted { group: usize, perm: Vec<u32> },
}

/// A packed 4-bit `[rows, cols]` weight (see the module header).
#[derive(Clone, Debug)]
pub struct Int4Matrix {
    rows: usize,
    cols: usize,
    grouping: Grouping,
    words: Vec<u32>,
    scales: Vec<f32>,
    zeros: Vec<u8>,
}

impl Int4Matrix {
    pub fn new(
        (rows, cols): (usize, usize),
        grouping: Grouping,
        words: Vec<u32>,
        scales: Vec<f32>,
        zeros: Vec<u8>,
    ) -> Result<Int4Matrix, Int4Error> {
        let bad = |m: String| Err(Int4Error::Shape(m));
        let groups = match &grouping {
            Grouping::Contiguous(g) if cols % 8 == 0 && *g > 0 && cols % g == 0 => cols / g,
            Grouping::Contiguous(g) => return bad(format!("{cols} inputs are not whole words of 8 and groups of {g}")),
            Grouping::Indexed { groups, g_idx } => {
                if cols % 8 != 0 || g_idx.len() != cols || g_idx.iter().any(|&x| x as usize >= *groups) {
                    return bad(format!("g_idx of {} entries for {cols} inputs in {groups} groups", g_idx.len()));
                }
                *groups
            }
            Grouping::Sorted { group, perm } => {
                let mut seen = vec![false; cols];
                let is_perm = perm.len() == cols
                    && perm.iter().all(|&i| (i as usize) < cols && !std::mem::replace(&mut seen[i as usize], true));
                if cols % 8 != 0 || *group == 0 || cols % group != 0 || !is_perm {
                    return bad(format!(
                        "{cols} inputs sorted into groups of {group}: not a permutation of whole groups"
                    ));
                }
                cols / group
            }
        };
        if words.len() != rows * cols / 8 || scales.len() != rows * groups || zeros.len() != rows * groups {
            return bad(format!(
                "{rows}×{cols} in {groups} groups: {} words, {} scales, {} zeros",
                words.len(),
                scales.len(),
                zeros.len()
            ));
        }
        Ok(Int4Matrix { rows, cols, grouping, words, scales, zeros })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    fn groups(&self) -> usize {
        self.scales.len() / self.rows.max(1)
    }

    /// The group of stored input `i`.
    fn group_of(&self, i: usize) -> usize {
        match &self.grouping {
            Grouping::Indexed { g_idx, .. } => g_idx[i] as usize,
            Grouping::Contiguous(g) | Grouping::Sorted { group: g, .. } => i / g,
        }
    }

    /// Row `r` as f32 values, in the checkpoint's input order.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match &self.grouping {
            Grouping::Sorted { perm, .. } => self.stored_row(r, |i, v| out[perm[i] as usize] = v),
            _ => self.stored_row(r, |i, v| out[i] = v),
        }
    }

    /// Row `r`'s values in stored order: `put(i, value of stored input i)`.
    fn stored_row(&self, r: usize, mut put: impl FnMut(usize, f32)) {
        let (w, g) = (&self.words[r * self.cols / 8..(r + 1) * self.cols / 8], self.groups());
        for (j, &word) in w.iter().enumerate() {
            for k in 0..8 {
                let i = 8 * j + k;
                let gi = r * g + self.group_of(i);
                put(i, (((word >> (4 * k)) & 0xF) as i32 - self.zeros[gi] as i32) as f32 * self.scales[gi]);
            }
        }
    }

    /// This matrix for the CPU kernels: act-order groups of equal size stored sorted by group
    /// ([`Grouping::Sorted`]), so a row is read group by group like a contiguous one instead of
    /// looking up every input's group; any other matrix as it is.
    pub fn sorted_by_group(self) -> Int4Matrix {
        match self.group_order() {
            Ok(Some((group, perm, words))) => Int4Matrix { grouping: Grouping::Sorted { group, perm }, words, ..self },
            _ => self,
        }
    }

    /// For act-order grouping: the group size, the inputs sorted by group (stable: within a
    /// group the checkpoint's order) and the words repacked in that order; `None` for other
    /// groupings; an error when the groups are of unequal sizes.
    #[allow(clippy::type_complexity)]
    fn group_order(&self) -> Result<Option<(usize, Vec<u32>, Vec<u32>)>, Int4Error> {
        let Grouping::Indexed { g_idx, groups } = &self.grouping else { return Ok(None) };
        let cols = self.cols;
        let group = cols / (*groups).max(1);
        let mut perm: Vec<usize> = (0..cols).collect();
        perm.sort_by_key(|&i| g_idx[i]);
        if group == 0 || perm.iter().enumerate().any(|(at, &i)| g_idx[i] as usize != at / group) {
            return Err(Int4Error::Shape(format!("act-order groups of unequal sizes (not {group} inputs each)")));
        }
        let nibble = |r: usize, i: usize| (self.words[r * cols / 8 + i / 8] >> (4 * (i % 8))) & 0xF;
        let words = (0..self.rows)
            .flat_map(|r| {
                let perm = &perm;
                (0..cols / 8).map(move |j| (0..8).fold(0u32, |w, e| w | nibble(r, perm[8 * j + e]) << (4 * e)))
            })
            .collect();
        Ok(Some((group, perm.into_iter().map(|i| i as u32).collect(), words)))
    }

    /// Rows `range` (output features: a tensor-parallel rank's column-parallel part).
    pub fn row_part(&self, range: std::ops::Range<usize>) -> Result<Int4Matrix, Int4Error> {
        if range.start > range.end || range.end > self.rows {
            return Err(Int4Error::Shape(format!("rows {range:?} of {}", self.rows)));
        }
        let (wr, g) = (self.cols / 8, self.groups());
        Int4Matrix::new(
            (range.len(), self.cols),
            self.grouping.clone(),
            self.words[range.start * wr..range.end * wr].to_vec(),
            self.scales[range.start * g..range.end * g].to_vec(),
            self.zeros[range.start * g..range.end * g].to_vec(),
        )
    }

    /// Columns `range` (input features: a row-parallel part): whole words, and whole groups of
    /// contiguous grouping; with indexed groups every group's scale stays (any may be used).
    pub fn col_part(&self, range: std::ops::Range<usize>) -> Result<Int4Matrix, Int4Error> {
        let bad = |why: &str| Err(Int4Error::Shape(format!("columns {range:?} of {}: {why}", self.cols)));
        if !range.start.is_multiple_of(8) || !range.len().is_multiple_of(8) || range.end > self.cols {
            return bad("not whole words of 8 inputs");
        }
        let (wr, groups) = (self.cols / 8, self.groups());
        let (w0, w1) = (range.start / 8, range.end / 8);
        let (grouping, g0, g1) = match &self.grouping {
            Grouping::Contiguous(g) if range.start.is_multiple_of(*g) && range.len().is_multiple_of(*g) => {
                (Grouping::Contiguous(*g), range.start / g, range.end / g)
            }
            Grouping::Contiguous(g) => return bad(&format!("cuts a group of {g}")),
            Grouping::Indexed { groups, g_idx } => {
                (Grouping::Indexed { groups: *groups, g_idx: g_idx[range.clone()].to_vec() }, 0, *groups)
            }
            Grouping::Sorted { .. } => return bad("the inputs are stored reordered; take parts before sorting"),
        };
        let mut words = Vec::with_capacity(self.rows * (w1 - w0));
        let (mut scales, mut zeros) = (Vec::new(), Vec::new());
        for r in 0..self.rows {
            words.extend_from_slice(&self.words[r * wr + w0..r * wr + w1]);
            scales.extend_from_slice(&self.scales[r * groups + g0..r * groups + g1]);
            zeros.extend_from_slice(&self.zeros[r * groups + g0..r * groups + g1]);
        }
        Int4Matrix::new((self.rows, range.len()), grouping, words, scales, zeros)
    }

    /// Rows of several matrices of the same inputs and grouping, one after the other (a fused
    /// q/k/v or gate/up projection).
    pub fn stack(parts: &[Int4Matrix]) -> Result<Int4Matrix, Int4Error> {
        let first = parts.first().ok_or_else(|| Int4Error::Shape("nothing to stack".into()))?;
        if parts.iter().any(|p| p.cols != first.cols || p.grouping != first.grouping) {
            return Err(Int4Error::Shape("stacked parts differ in inputs, grouping or g_idx".into()));
        }
        let cat = |f: &dyn Fn(&Int4Matrix) -> usize| parts.iter().map(f).sum::<usize>();
        let mut words = Vec::with_capacity(cat(&|p| p.words.len()));
        let (mut scales, mut zeros) = (Vec::new(), Vec::new());
        for p in parts {
            words.extend_from_slice(&p.words);
            scales.extend_from_slice(&p.scales);
            zeros.extend_from_slice(&p.zeros);
        }
        Int4Matrix::new((cat(&|p| p.rows), first.cols), first.grouping.clone(), words, scales, zeros)
    }

    /// `x · Wᵀ` for `m` rows of `x` (`[m, cols]` row-major), `[m, rows]` row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let sorted_x: Vec<f32>;
        let x = match &self.grouping {
            Grouping::Sorted { perm, .. } => {
                sorted_x = x.chunks_exact(self.cols).flat_map(|r| perm.iter().map(|&i| r[i as usize])).collect();
                &sorted_x
            }
            _ => x,
        };
        if m > SMALL_M {
            return self.matmul_blocked(x, m);
        }
        // Weight rows in parallel; each word is unpacked once and applied to every row of `x`.
        let per_row: Vec<Vec<f32>> = match &self.grouping {
            Grouping::Contiguous(group) | Grouping::Sorted { group, .. } => {
                let xsum = group_sums(x, self.cols, *group);
                (0..self.rows).into_par_iter().map(|r| self.row_contiguous(r, *group, x, &xsum, m)).collect()
            }
            Grouping::Indexed { .. } => (0..self.rows).into_par_iter().map(|r| self.row_indexed(r, x, m)).collect(),
        };
        let mut out = vec![0f32; m * self.rows];
        for (r, acc) in per_row.into_iter().enumerate() {
            for (i, a) in acc.into_iter().enumerate() {
                out[i * self.rows + r] = a;
            }
        }
        out
    }

    /// Many rows of `x` (prefill): blocks of weight rows dequantized to f32 (one block at a
    /// time, `BLOCK_ROWS × cols`, never the whole matrix) and multiplied by the packed dense
    /// GEMM, which reuses each weight across every row of `x` from cache.
    fn matmul_blocked(&self, x: &[f32], m: usize) -> Vec<f32> {
        const BLOCK_ROWS: usize = 256;
        let (n, k) = (self.rows, self.cols);
        let mut out = vec![0f32; m * n];
        let mut w = vec![0f32; BLOCK_ROWS.min(n) * k];
        let a = Mat { data: x, rows: m, cols: k, stride: k };
        for r0 in (0..n).step_by(BLOCK_ROWS) {
            let nb = BLOCK_ROWS.min(n - r0);
            // Stored order: `x` arrives in it (permuted by `matmul` for sorted act-order).
            w[..nb * k].par_chunks_mut(k).enumerate().for_each(|(i, row)| self.stored_row(r0 + i, |c, v| row[c] = v));
            let b = Mat { data: &w[..nb * k], rows: nb, cols: k, stride: k };
            big_m(a, b, &mut out[r0..], m, nb, n);
        }
        out
    }

    /// Row `r` times every row of `x`, groups of `group` consecutive inputs: per group
    /// `scale · (Σ q·x − zero · Σ x)`, the integer part unpacked once per word.
    fn row_contiguous(&self, r: usize, group: usize, x: &[f32], xsum: &[f32], m: usize) -> Vec<f32> {
        let (cols, groups, per) = (self.cols, self.groups(), group / 8);
        let w = &self.words[r * cols / 8..(r + 1) * cols / 8];
        let (mut acc, mut dots) = (vec![0f32; m], vec![0f32; m]);
        for g in 0..groups {
            group_dots(&w[g * per..(g + 1) * per], x, cols, g * group, &mut dots);
            let (s, z) = (self.scales[r * groups + g], self.zeros[r * groups + g] as f32);
            for (i, (a, d)) in acc.iter_mut().zip(&dots).enumerate() {
                *a += s * (d - z * xsum[i * groups + g]);
            }
        }
        acc
    }

    /// Row `r` times every row of `x`, each input's group looked up (act-order).
    fn row_indexed(&self, r: usize, x: &[f32], m: usize) -> Vec<f32> {
        let (cols, groups) = (self.cols, self.groups());
        let w = &self.words[r * cols / 8..(r + 1) * cols / 8];
        let mut acc = vec![0f32; m];
        let mut vals = [0f32; 8];
        for (j, &word) in w.iter().enumerate() {
            for (k, v) in vals.iter_mut().enumerate() {
                let gi = r * groups + self.group_of(8 * j + k);
                *v = (((word >> (4 * k)) & 0xF) as i32 - self.zeros[gi] as i32) as f32 * self.scales[gi];
            }
            for (a, xr) in acc.iter_mut().zip(x.chunks_exact(cols)) {
                *a += vals.iter().zip(&xr[8 * j..8 * j + 8]).map(|(v, x)| v * x).sum::<f32>();
            }
        }
        acc
    }
}

/// An [`Int4Matrix`] in the form the GPU kernels read (`device::quant::int4_cuda`): every
/// group a run of `group` consecutive stored inputs, with `group` a multiple of 32 (a thread's
/// 16-byte load of four words then lies in one group), and `scale_bias` holding per group the
/// scale and `-zero · scale`, so a value is `q · scale + bias` — exactly `(q − zero) · scale`
/// in f32 when the scale is an f16 (both products are exact, and so is their sum).
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Layout {
    pub group: usize,
    /// `[rows, cols / 8]`: nibble `e` of word `j` is stored input `8j + e`.
    pub words: Vec<u32>,
    /// `[rows, groups, 2]`: scale, bias.
    pub scale_bias: Vec<f32>,
    /// Stored input `i` is input `perm[i]` of the checkpoint (act-order, sorted by group);
    /// `None`: the checkpoint's order.
    pub perm: Option<Vec<i32>>,
}

impl Int4Matrix {
    /// The GPU kernels' form of this matrix, or why it has none (groups not a multiple of 32
    /// inputs, or act-order groups of unequal sizes): such a weight is used dense instead.
    pub fn gpu_layout(&self) -> Result<Int4Layout, Int4Error> {
        let (rows, cols, groups) = (self.rows, self.cols, self.groups());
        let group = cols / groups.max(1);
        if groups == 0 || !cols.is_multiple_of(groups) || !group.is_multiple_of(32) {
            return Err(Int4Error::Shape(format!("{cols} inputs in {groups} groups: not runs of 32k inputs")));
        }
        let scale_bias = (0..rows * groups)
            .flat_map(|gi| {
                let s = self.scales[gi];
                [s, -(self.zeros[gi] as f32) * s]
            })
            .collect();
        let (words, perm) = match (self.group_order()?, &self.grouping) {
            (Some((_, perm, words)), _) => (words, Some(perm)),
            (None, Grouping::Sorted { perm, .. }) => (self.words.clone(), Some(perm.clone())),
            (None, _) => (self.words.clone(), None),
        };
        let perm = perm.map(|p| p.into_iter().map(|i| i as i32).collect());
        Ok(Int4Layout { group, words, scale_bias, perm })
    }
}

impl Int4Layout {
    /// The GPU int4 form of a GGUF matrix whose blocks hold 4-bit integers with one scale and
    /// one offset per 32 values — `Q4_0` (`d · (n − 8)`), `Q4_1` (`d · n + m`) and `Q4_K`
    /// (`d · sc · n − dmin · mn`) — as groups of 32 with `q = n` and (scale, bias) per group;
    /// `None` for every other format. Every value `q · scale + bias` equals the block's
    /// dequantized value bit for bit (the same products and sum as [`super::QuantFormat::dequantize`];
    /// for `Q4_0`, `d · n − 8d` is the exact `d · (n − 8)`, except that its zeros are +0). No value is dequantized: the
    /// nibbles move into the kernels' order (nibble `e` of word `j` is input `8j + e`).
    pub fn from_blocks(m: &super::QuantMatrix) -> Option<Int4Layout> {
        use super::QuantFormat;
        // The integer each stored value adds to `w` to make the nibble `n` (Q4_0's w is n − 8).
        let offset: i16 = match m.format() {
            QuantFormat::Q4_0 => 8,
            QuantFormat::Q4_1 | QuantFormat::Q4_K => 0,
            _ => return None,
        };
        let (rows, cols, groups) = (m.rows(), m.cols(), m.cols() / 32);
        let mut words = vec![0u32; rows * cols / 8];
        let mut scale_bias = vec![0f32; rows * groups * 2];
        words.par_chunks_mut(cols / 8).zip(scale_bias.par_chunks_mut(2 * groups)).enumerate().for_each(
            |(r, (wr, sr))| {
                m.for_each_slice(r, |g, slice| {
                    let scale = slice.scale[0];
                    sr[2 * g] = scale;
                    sr[2 * g + 1] = if offset == 0 { slice.min[0] } else { -(offset as f32) * scale };
                    for (j, w) in wr[4 * g..4 * g + 4].iter_mut().enumerate() {
                        *w =
                            (0..8).fold(0u32, |acc, e| acc | (((slice.w[8 * j + e] + offset) as u32 & 0xF) << (4 * e)));
                    }
                })
            },
        );
        Some(Int4Layout { group: 32, words, scale_bias, perm: None })
    }

    /// Layouts of one weight's stacked parts (`(rows, layout)`, in output order) with
    /// consecutive parts of the same group size and input order joined into one: their rows
    /// simply follow each other, so one kernel launch covers them (a q/k/v projection stored
    /// as three matrices becomes one of their summed rows; act-order parts with different
    /// permutations stay apart).
    pub fn join_stackable(parts: Vec<(usize, Int4Layout)>) -> Vec<(usize, Int4Layout)> {
        let mut out: Vec<(usize, Int4Layout)> = Vec::with_capacity(parts.len());
        for (rows, l) in parts {
            match out.last_mut() {
                Some((r, last)) if last.group == l.group && last.perm == l.perm => {
                    *r += rows;
                    last.words.extend_from_slice(&l.words);
                    last.scale_bias.extend_from_slice(&l.scale_bias);
                }
                _ => out.push((rows, l)),
            }
        }
        out
    }
}

/// `dots[i] = Σ_j Σ_k q(words[j], k) · x[i][col0 + 8j + k]` for every row `i` of `x`
/// (`[dots.len(), cols]` row-major): the integer part of one group of one weight row. AVX2 +
/// FMA when the CPU has them (`KILN_CPU_SIMD=0` forces the portable loop), which sums in
/// another order (eight lanes), so results differ from the portable loop by f32 rounding only.
fn group_dots(words: &[u32], x: &[f32], cols: usize, col0: usize, dots: &mut [f32]) {
    assert!(col0 + 8 * words.len() <= cols && x.len() >= dots.len() * cols, "group inside the rows of x");
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time); every load is inside `x`
        // (asserted above: row i's columns col0 .. col0 + 8·words.len() lie within its `cols`).
        unsafe { avx2::group_dots(words, x, cols, col0, dots) };
        return;
    }
    group_dots_portable(words, x, cols, col0, dots);
}

fn group_dots_portable(words: &[u32], x: &[f32], cols: usize, col0: usize, dots: &mut [f32]) {
    for (d, xr) in dots.iter_mut().zip(x.chunks_exact(cols)) {
        let mut sum = 0f32;
        for (j, &word) in words.iter().enumerate() {
            let xs = &xr[col0 + 8 * j..col0 + 8 * j + 8];
            sum += (0..8).map(|k| ((word >> (4 * k)) & 0xF) as f32 * xs[k]).sum::<f32>();
        }
        *d = sum;
    }
}

/// Whether the AVX2 + FMA path runs (detected once; `KILN_CPU_SIMD=0` turns it off).
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("KILN_CPU_SIMD").as_deref() != Ok("0")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::group_dots`] in 8-lane f32: a word's eight nibbles become one vector (a
    /// variable shift, a mask, a conversion), multiplied into up to four rows of `x` at a time.
    ///
    /// # Safety
    /// AVX2 and FMA are available; row `i < dots.len()` of `x` holds columns
    /// `col0 .. col0 + 8 · words.len()` (within `cols`).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn group_dots(words: &[u32], x: &[f32], cols: usize, col0: usize, dots: &mut [f32]) {
        let mut i0 = 0;
        while i0 < dots.len() {
            let n = (dots.len() - i0).min(4);
            let base = x.as_ptr().add(i0 * cols + col0);
            let out = &mut dots[i0..i0 + n];
            match n {
                4 => rows::<4>(words, base, cols, out),
                3 => rows::<3>(words, base, cols, out),
                2 => rows::<2>(words, base, cols, out),
                _ => rows::<1>(words, base, cols, out),
            }
            i0 += n;
        }
    }

    /// `N` rows of `x` starting at `base` (row stride `cols`).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const N: usize>(words: &[u32], base: *const f32, cols: usize, out: &mut [f32]) {
        let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        let mask = _mm256_set1_epi32(0xF);
        let mut acc = [_mm256_setzero_ps(); N];
        for (j, &w) in words.iter().enumerate() {
            let q = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(w as i32), shifts), mask));
            for (t, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(q, _mm256_loadu_ps(base.add(t * cols + 8 * j)), *a);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            *o = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
        }
    }
}

/// `Σ x` over each group of `group` consecutive inputs of each row of `x` (`[m, groups]`).
fn group_sums(x: &[f32], cols: usize, group: usize) -> Vec<f32> {
    x.chunks_exact(cols).flat_map(|row| row.chunks_exact(group).map(|g| g.iter().sum::<f32>())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows: usize, cols: usize, group: usize, g_idx: Option<Vec<u32>>) -> Int4Matrix {
        let groups = cols / group;
        let words = (0..rows * cols / 8).map(|i| (i as u32).wrapping_mul(2_654_435_761)).collect();
        // Binary fractions, exact in f16 (as checkpoints' scales are).
        let scales = (0..rows * groups).map(|i| (3 + i % 50) as f32 / 1024.0).collect();
        let zeros = (0..rows * groups).map(|i| (i % 17) as u8).collect();
        let grouping = match g_idx {
            Some(g_idx) => Grouping::Indexed { groups, g_idx },
            None => Grouping::Contiguous(group),
        };
        Int4Matrix::new((rows, cols), grouping, words, scales, zeros).unwrap()
    }

    fn dense(w: &Int4Matrix) -> Vec<f32> {
        let mut d = vec![0f32; w.rows * w.cols];
        for r in 0..w.rows {
            w.dequantize_row(r, &mut d[r * w.cols..(r + 1) * w.cols]);
        }
        d
    }

    #[test]
    fn the_product_is_the_dequantized_weights_product() {
        let g_idx: Vec<u32> = (0..64).map(|i| (i * 7 % 64) / 16).collect();
        let act = sample(4, 64, 16, Some(g_idx));
        let sorted = act.clone().sorted_by_group();
        for w in [sample(5, 64, 16, None), sample(3, 64, 64, None), act, sorted] {
            let d = dense(&w);
            // 3 rows (the group-dot path) and 70 (blocks dequantized for the dense GEMM).
            for m in [3, SMALL_M + 6] {
                let x: Vec<f32> = (0..m * w.cols).map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1).collect();
                let y = w.matmul(&x, m);
                for i in 0..m {
                    for r in 0..w.rows {
                        let want: f32 = (0..w.cols).map(|c| d[r * w.cols + c] * x[i * w.cols + c]).sum();
                        assert!((y[i * w.rows + r] - want).abs() <= 1e-4 * want.abs().max(1.0), "m {m}: {i} {r}");
                    }
                }
            }
        }
    }

    /// The AVX2 group dot (when this CPU has it) equals the portable loop to f32 rounding, for
    /// every count of x rows (1 to 9: every chunk size of four) and a group not at column 0.
    #[test]
    fn simd_group_dots_match_the_portable_loop() {
        let (cols, words) = (96, 4);
        let w: Vec<u32> = (0..words as u32).map(|i| i.wrapping_mul(0x9E37_79B9) ^ 0x5A5A_1234).collect();
        for m in 1..=9 {
            let x: Vec<f32> = (0..m * cols).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.0625).collect();
            let (mut a, mut b) = (vec![0f32; m], vec![0f32; m]);
            group_dots(&w, &x, cols, 32, &mut a);
            group_dots_portable(&w, &x, cols, 32, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-5 * q.abs().max(1.0), "m {m}: {p} against {q}");
            }
        }
    }

    #[test]
    fn row_and_column_parts_are_parts_of_the_dequantized_matrix() {
        let w = sample(4, 64, 16, None);
        let d = dense(&w);
        assert_eq!(dense(&w.row_part(1..3).unwrap()), d[64..192].to_vec());
        let c = w.col_part(16..48).unwrap();
        let want: Vec<f32> = (0..4).flat_map(|r| d[r * 64 + 16..r * 64 + 48].to_vec()).collect();
        assert_eq!(dense(&c), want);
        assert!(w.col_part(8..40).is_err(), "cuts a group");
        // Act-order: a part of the inputs keeps every group's scale and its own g_idx.
        let act_order = sample(2, 32, 16, Some((0..32).map(|i| (i % 2) as u32).collect()));
        let d = dense(&act_order);
        let want: Vec<f32> = (0..2).flat_map(|r| d[r * 32 + 8..r * 32 + 24].to_vec()).collect();
        assert_eq!(dense(&act_order.col_part(8..24).unwrap()), want);
    }

    /// The GPU form's values, read back through its permutation, are the matrix's values
    /// bit for bit (f16-exact scales); groups the kernels cannot take are refused.
    #[test]
    fn the_gpu_layout_holds_the_same_values() {
        let act: Vec<u32> = (0..128).map(|i| ((i * 37) % 128 / 32) as u32).collect();
        for w in [sample(3, 128, 32, None), sample(2, 128, 64, None), sample(3, 128, 32, Some(act))] {
            let d = dense(&w);
            let l = w.gpu_layout().unwrap();
            let groups = w.cols / l.group;
            for r in 0..w.rows {
                for i in 0..w.cols {
                    let q = (l.words[r * w.cols / 8 + i / 8] >> (4 * (i % 8))) & 0xF;
                    let (s, b) = (
                        l.scale_bias[2 * (r * groups + i / l.group)],
                        l.scale_bias[2 * (r * groups + i / l.group) + 1],
                    );
                    let col = l.perm.as_ref().map_or(i, |p| p[i] as usize);
                    assert_eq!(q as f32 * s + b, d[r * w.cols + col], "({r}, {i})");
                }
            }
        }
        assert!(sample(2, 64, 16, None).gpu_layout().is_err(), "groups of 16");
        let uneven: Vec<u32> = (0..64).map(|i| u32::from(i < 8)).collect();
        assert!(sample(2, 64, 32, Some(uneven)).gpu_layout().is_err(), "groups of 8 and 56");
    }

    /// Stacked parts of one group size and input order join into one layout whose rows are
    /// theirs in order (the layout of the stacked matrix); a part with another group size or
    /// permutation starts a new layout.
    #[test]
    fn stackable_parts_join_in_order() {
        let act: Vec<u32> = (0..128).map(|i| ((i * 37) % 128 / 32) as u32).collect();
        let parts = [
            sample(3, 128, 32, None),
            sample(2, 128, 32, None),
            sample(1, 128, 64, None),
            sample(2, 128, 64, None),
            sample(2, 128, 32, Some(act.clone())),
            sample(1, 128, 32, Some(act)),
        ];
        let layouts: Vec<(usize, Int4Layout)> = parts.iter().map(|w| (w.rows, w.gpu_layout().unwrap())).collect();
        let joined = Int4Layout::join_stackable(layouts.clone());
        assert_eq!(joined.iter().map(|(r, l)| (*r, l.group)).collect::<Vec<_>>(), [(5, 32), (3, 64), (3, 32)]);
        for (j, (rows, l)) in joined.iter().enumerate() {
            let from = [0..2, 2..4, 4..6][j].clone();
            let words: Vec<u32> = layouts[from.clone()].iter().flat_map(|(_, l)| l.words.clone()).collect();
            let sb: Vec<f32> = layouts[from.clone()].iter().flat_map(|(_, l)| l.scale_bias.clone()).collect();
            assert_eq!((l.words.len(), l.scale_bias.len()), (rows * 128 / 8, rows * 2 * 128 / l.group));
            assert_eq!((&l.words, &l.scale_bias, &l.perm), (&words, &sb, &layouts[from.start].1.perm));
        }
        // Different permutations of the same group size stay apart.
        let a = sample(1, 64, 32, Some((0..64).map(|i| u32::from(i % 2 == 0)).collect()));
        let b = sample(1, 64, 32, Some((0..64).map(|i| u32::from(i < 32)).collect()));
        let ab = [(1, a.gpu_layout().unwrap()), (1, b.gpu_layout().unwrap())];
        assert_eq!(Int4Layout::join_stackable(ab.to_vec()).len(), 2);
    }

    /// GGUF Q4_0, Q4_1 and Q4_K blocks in the int4 form hold the blocks' dequantized values bit
    /// for bit (random blocks, an odd row count, a Q/K-sized matrix); other formats have none.
    #[test]
    fn gguf_4bit_blocks_keep_their_values_in_the_int4_form() {
        use crate::device::quant::{random_blocks, QuantFormat};
        for format in QuantFormat::ALL {
            let (rows, cols) = (7, 512);
            let m = random_blocks(format, rows, cols, 0x2545_f491_4f6c_dd1d);
            let Some(l) = Int4Layout::from_blocks(&m) else {
                assert!(!matches!(format, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q4_K), "{format}");
                continue;
            };
            assert!(matches!(format, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q4_K), "{format}");
            let want = m.dequantize_all();
            for r in 0..rows {
                for i in 0..cols {
                    let q = (l.words[r * cols / 8 + i / 8] >> (4 * (i % 8))) & 0xF;
                    let g = r * cols / 32 + i / 32;
                    let got = q as f32 * l.scale_bias[2 * g] + l.scale_bias[2 * g + 1];
                    let w = want[r * cols + i];
                    // Bit for bit; Q4_0's `d · n − 8d` gives +0 where `d · 0` with d < 0 is −0.
                    let same = got.to_bits() == w.to_bits() || (format == QuantFormat::Q4_0 && got == w);
                    assert!(same, "{format} ({r}, {i}): {got} against {w}");
                }
            }
        }
    }

    /// Act-order sorted for the CPU: the same values in the checkpoint's order, the same GPU
    /// form; unequal groups stay indexed; a sorted matrix refuses column parts and a grouping
    /// that is not a permutation of whole groups is refused.
    #[test]
    fn sorting_act_order_by_group_keeps_the_matrix() {
        let act: Vec<u32> = (0..128).map(|i| ((i * 37) % 128 / 32) as u32).collect();
        let w = sample(3, 128, 32, Some(act));
        let s = w.clone().sorted_by_group();
        assert!(matches!(s.grouping, Grouping::Sorted { group: 32, .. }));
        assert_eq!(dense(&s), dense(&w));
        assert_eq!(s.gpu_layout().unwrap(), w.gpu_layout().unwrap());
        assert!(s.col_part(0..32).is_err());
        assert_eq!(dense(&s.row_part(1..3).unwrap()), dense(&w.row_part(1..3).unwrap()));
        let uneven: Vec<u32> = (0..64).map(|i| u32::from(i < 8)).collect();
        assert!(matches!(sample(2, 64, 32, Some(uneven)).sorted_by_group().grouping, Grouping::Indexed { .. }));
        let not_perm = Grouping::Sorted { group: 8, perm: vec![0; 16] };
        assert!(Int4Matrix::new((1, 16), not_perm, vec![0; 2], vec![1.0; 2], vec![0; 2]).is_err());
    }

    #[test]
    fn stacking_keeps_each_parts_rows_and_bad_shapes_are_refused() {
        let (a, b) = (sample(2, 32, 16, None), sample(3, 32, 16, None));
        let s = Int4Matrix::stack(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(dense(&s), [dense(&a), dense(&b)].concat());
        assert!(Int4Matrix::stack(&[a, sample(1, 64, 16, None)]).is_err());
        assert!(Int4Matrix::new((1, 12), Grouping::Contiguous(4), vec![0; 1], vec![1.0; 3], vec![0; 3]).is_err());
        let bad_idx = Grouping::Indexed { groups: 2, g_idx: vec![5; 16] };
        assert!(Int4Matrix::new((1, 16), bad_idx, vec![0; 2], vec![1.0; 2], vec![0; 2]).is_err());
    }
}
