//! 8-bit weights with separate scales — FP8 E4M3 (compressed-tensors `float-quantized`,
//! DeepSeek-style 128×128 `weight_scale_inv` blocks) and symmetric INT8 (`int-quantized`) — in
//! host memory, as the GPU kernels of [`super::w8_cuda`] take them.
//!
//! A [`W8Matrix`] is `[rows, cols]` bytes (row-major, as the checkpoint stores `X.weight`) and
//! a scale per block of `block = [bo, bi]` values: the value of `(o, i)` is
//! `q(o, i) · scales[(o / bo) · scols + i / bi]` with `scols = ⌈cols / bi⌉`. Every layout a
//! checkpoint uses is one block shape: per tensor `[rows, cols]`, per output channel
//! `[1, cols]`, groups of `g` inputs `[1, g]`, 2-D blocks as they are.
//!
//! Invariants: `bytes.len() == rows · cols`, `scales.len() == ⌈rows / bo⌉ · ⌈cols / bi⌉`, both
//! checked at construction; [`W8Matrix::dequantize`] is the reference every kernel is checked
//! against (exact in f32: an e4m3 or int8 value times an f32 scale is one rounding).

use std::ops::Range;

/// The 8-bit element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum W8Elem {
    /// OCP FP8 E4M3 ("fn": no infinities, `S.1111.111` is NaN).
    Fp8E4M3,
    /// Two's-complement int8, symmetric (no zero point).
    Int8,
}

impl W8Elem {
    /// The exact value of one stored byte.
    pub fn value(self, b: u8) -> f32 {
        match self {
            W8Elem::Int8 => f32::from(b as i8),
            // The code generator's decoder: the one every e4m3 path (kernels' CPU twins too) uses.
            W8Elem::Fp8E4M3 => kiln_codegen::cpu::math::e4m3_to_f32(b),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            W8Elem::Fp8E4M3 => "fp8e4m3",
            W8Elem::Int8 => "int8",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum W8Error {
    #[error("8-bit weight: {0}")]
    Shape(String),
}

/// An 8-bit `[rows, cols]` weight with block scales (see the module header).
#[derive(Clone, Debug)]
pub struct W8Matrix {
    rows: usize,
    cols: usize,
    elem: W8Elem,
    bytes: Vec<u8>,
    scales: Vec<f32>,
    block: [usize; 2],
}

/// Where a cut `[s, e)` of `n` values in blocks of `b` lands: the cut's block length, first
/// block and block count; `None` when it splits a block. One block over everything (a
/// per-tensor or per-channel scale along that axis) is cut anywhere.
fn cut(n: usize, b: usize, r: &Range<usize>) -> Option<(usize, usize, usize)> {
    let len = r.end - r.start;
    if n.div_ceil(b) == 1 {
        return Some((len.max(1), 0, 1));
    }
    (r.start.is_multiple_of(b) && (r.end.is_multiple_of(b) || r.end == n)).then(|| (b, r.start / b, len.div_ceil(b)))
}

impl W8Matrix {
    pub fn new(
        (rows, cols): (usize, usize),
        elem: W8Elem,
        bytes: Vec<u8>,
        scales: Vec<f32>,
        block: [usize; 2],
    ) -> Result<W8Matrix, W8Error> {
        let [bo, bi] = block;
        if rows == 0 || cols == 0 || bo == 0 || bi == 0 {
            return Err(W8Error::Shape(format!("{rows}×{cols} in blocks of {bo}×{bi}")));
        }
        if bytes.len() != rows * cols {
            return Err(W8Error::Shape(format!("{} bytes for {rows}×{cols}", bytes.len())));
        }
        let want = rows.div_ceil(bo) * cols.div_ceil(bi);
        if scales.len() != want {
            return Err(W8Error::Shape(format!("{} scales for {rows}×{cols} in blocks of {bo}×{bi}", scales.len())));
        }
        Ok(W8Matrix { rows, cols, elem, bytes, scales, block })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn elem(&self) -> W8Elem {
        self.elem
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// `[⌈rows / bo⌉, ⌈cols / bi⌉]` scales, row-major.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// `[bo, bi]`: the values that share a scale.
    pub fn block(&self) -> [usize; 2] {
        self.block
    }
    /// Scale columns: `⌈cols / bi⌉`.
    pub fn scale_cols(&self) -> usize {
        self.cols.div_ceil(self.block[1])
    }

    /// The `[rows, cols]` f32 values (the reference of every kernel).
    pub fn dequantize(&self) -> Vec<f32> {
        let ([bo, bi], sc) = (self.block, self.scale_cols());
        let lut: Vec<f32> = (0..=255u8).map(|b| self.elem.value(b)).collect();
        let mut w = vec![0f32; self.rows * self.cols];
        for (o, row) in w.chunks_mut(self.cols).enumerate() {
            let q = &self.bytes[o * self.cols..(o + 1) * self.cols];
            let s = &self.scales[(o / bo) * sc..(o / bo + 1) * sc];
            for (i, (v, &b)) in row.iter_mut().zip(q).enumerate() {
                *v = lut[b as usize] * s[i / bi];
            }
        }
        w
    }

    /// Rows `r` (a tensor-parallel shard of a column-parallel projection), when `r` does not
    /// split a block of scales.
    pub fn row_part(&self, r: Range<usize>) -> Result<W8Matrix, W8Error> {
        let [bo, bi] = self.block;
        let bad = || W8Error::Shape(format!("rows {r:?} of {} split blocks of {bo}", self.rows));
        if r.start >= r.end || r.end > self.rows {
            return Err(bad());
        }
        let (bo2, first, n) = cut(self.rows, bo, &r).ok_or_else(bad)?;
        let sc = self.scale_cols();
        let bytes = self.bytes[r.start * self.cols..r.end * self.cols].to_vec();
        let scales = self.scales[first * sc..(first + n) * sc].to_vec();
        W8Matrix::new((r.len(), self.cols), self.elem, bytes, scales, [bo2, bi])
    }

    /// Columns `c` (a shard of a row-parallel projection), when `c` does not split a block.
    pub fn col_part(&self, c: Range<usize>) -> Result<W8Matrix, W8Error> {
        let [bo, bi] = self.block;
        let bad = || W8Error::Shape(format!("columns {c:?} of {} split blocks of {bi}", self.cols));
        if c.start >= c.end || c.end > self.cols {
            return Err(bad());
        }
        let (bi2, first, n) = cut(self.cols, bi, &c).ok_or_else(bad)?;
        let sc = self.scale_cols();
        let bytes = self.bytes.chunks(self.cols).flat_map(|row| row[c.clone()].iter().copied()).collect();
        let scales = self.scales.chunks(sc).flat_map(|row| row[first..first + n].iter().copied()).collect();
        W8Matrix::new((self.rows, c.len()), self.elem, bytes, scales, [bo, bi2])
    }
}

impl W8Matrix {
    /// The scales with one row of them per weight row (`[rows, ⌈cols / bi⌉]`) and `bi` capped
    /// at `cols`, when the scales do not differ within a block of rows some other way: a
    /// scale per output channel, per group of inputs of one row, or one block over all rows
    /// (per tensor). `None` for blocks of several rows (128×128).
    fn per_row_scales(&self) -> Option<(Vec<f32>, usize)> {
        let [bo, bi] = self.block;
        let bi = bi.min(self.cols);
        if bo == 1 {
            return Some((self.scales.clone(), bi));
        }
        (self.rows.div_ceil(bo) == 1).then(|| (self.scales.repeat(self.rows), bi))
    }

    /// Parts stacked along rows, the consecutive ones that can share one kernel launch joined:
    /// same element, same inputs, and scales that are per row (or per tensor, repeated per
    /// row) over the same input groups. A checkpoint's separate q, k and v (or gate and up)
    /// then multiply as one matrix of their summed rows — one product instead of three — with
    /// every value and scale as it was.
    pub fn join_stackable(parts: &[W8Matrix]) -> Vec<W8Matrix> {
        let mut out: Vec<W8Matrix> = Vec::with_capacity(parts.len());
        for w in parts {
            if let Some(last) = out.last_mut() {
                let joined = match (last.per_row_scales(), w.per_row_scales()) {
                    (Some((mut s, bi)), Some((s2, bi2))) if bi == bi2 && last.elem == w.elem && last.cols == w.cols => {
                        // Valid by construction: both parts' bytes, one scale row per byte row.
                        s.extend(s2);
                        Some((s, bi))
                    }
                    _ => None,
                };
                if let Some((scales, bi)) = joined {
                    last.bytes.extend_from_slice(&w.bytes);
                    (last.rows, last.scales, last.block) = (last.rows + w.rows, scales, [1, bi]);
                    continue;
                }
            }
            out.push(w.clone());
        }
        out
    }
}

impl W8Matrix {
    /// The INT8 form of a GGUF matrix whose blocks hold integers of at most 8 bits with one
    /// scale per 32 or 16 values and no offset — `Q8_0` (`d · q`), `Q5_0` (`d · (n − 16)`) in
    /// blocks of `[1, 32]`, `Q6_K` (`d · sc · (n − 32)`, a scale per 16) in blocks of `[1, 16]`
    /// — or `None` for every other format. Each value equals the block's dequantized value bit
    /// for bit (the same product, scale · integer, as [`super::QuantFormat::dequantize`]).
    pub fn from_blocks(m: &super::QuantMatrix) -> Option<W8Matrix> {
        use super::QuantFormat;
        use rayon::prelude::*;
        let per = match m.format() {
            QuantFormat::Q8_0 | QuantFormat::Q5_0 => 32,
            QuantFormat::Q6_K => 16,
            _ => return None,
        };
        let (rows, cols) = (m.rows(), m.cols());
        let mut bytes = vec![0u8; rows * cols];
        let mut scales = vec![0f32; rows * cols / per];
        bytes.par_chunks_mut(cols).zip(scales.par_chunks_mut(cols / per)).enumerate().for_each(|(r, (br, sr))| {
            m.for_each_slice(r, |s, slice| {
                for (o, &w) in br[32 * s..32 * s + 32].iter_mut().zip(&slice.w) {
                    *o = w as i8 as u8;
                }
                for h in 0..32 / per {
                    sr[32 / per * s + h] = slice.scale[h * per / 16];
                }
            })
        });
        W8Matrix::new((rows, cols), W8Elem::Int8, bytes, scales, [1, per]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GGUF Q8_0, Q5_0 and Q6_K blocks in the INT8 form hold the blocks' dequantized values bit
    /// for bit; other formats have none.
    #[test]
    fn gguf_8bit_blocks_keep_their_values_in_the_int8_form() {
        use crate::device::quant::{random_blocks, QuantFormat};
        for format in QuantFormat::ALL {
            let (rows, cols) = (5, 512);
            let q = random_blocks(format, rows, cols, 0x9e37_79b9_7f4a_7c15);
            let eight = matches!(format, QuantFormat::Q8_0 | QuantFormat::Q5_0 | QuantFormat::Q6_K);
            let Some(w) = W8Matrix::from_blocks(&q) else {
                assert!(!eight, "{format}");
                continue;
            };
            assert!(eight, "{format}");
            let (got, want) = (w.dequantize(), q.dequantize_all());
            for (i, (g, v)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), v.to_bits(), "{format} value {i}: {g} against {v}");
            }
        }
    }

    fn m(rows: usize, cols: usize, block: [usize; 2]) -> W8Matrix {
        let bytes = (0..rows * cols).map(|i| (i % 7) as u8).collect();
        let n = rows.div_ceil(block[0]) * cols.div_ceil(block[1]);
        W8Matrix::new((rows, cols), W8Elem::Int8, bytes, (1..=n).map(|s| s as f32).collect(), block).unwrap()
    }

    #[test]
    fn values_follow_their_encodings() {
        assert_eq!(W8Elem::Fp8E4M3.value(0x38), 1.0);
        assert_eq!(W8Elem::Fp8E4M3.value(0x7E), 448.0);
        assert_eq!(W8Elem::Fp8E4M3.value(0x81), -(2f32.powi(-9)));
        assert!(W8Elem::Fp8E4M3.value(0xFF).is_nan());
        assert_eq!(W8Elem::Int8.value(0x80), -128.0);
        assert_eq!(W8Elem::Int8.value(0x7F), 127.0);
    }

    #[test]
    fn each_value_takes_its_blocks_scale() {
        // 3×5 in blocks of 2×2: scales [[1, 2, 3], [4, 5, 6]].
        let w = m(3, 5, [2, 2]).dequantize();
        assert_eq!(w[0], 0.0); // q 0
        assert_eq!(w[4], 4.0 * 3.0); // (0, 4): q 4, block (0, 2)
        assert_eq!(w[2 * 5 + 3], (13 % 7) as f32 * 5.0); // (2, 3): block (1, 1)
        assert!(W8Matrix::new((3, 5), W8Elem::Int8, vec![0; 15], vec![1.0; 5], [2, 2]).is_err());
        assert!(W8Matrix::new((3, 5), W8Elem::Int8, vec![0; 14], vec![1.0; 6], [2, 2]).is_err());
    }

    #[test]
    fn parts_keep_their_values_and_refuse_to_split_a_block() {
        for (block, rows, cols) in [([4, 4], 4..8, 4..12), ([1, 12], 1..3, 0..12), ([8, 12], 3..7, 5..9)] {
            let w = m(8, 12, block);
            let full = w.dequantize();
            let r = w.row_part(rows.clone()).unwrap().dequantize();
            assert_eq!(r, full[rows.start * 12..rows.end * 12].to_vec(), "rows {rows:?} of {block:?}");
            if block[1] == 12 || cols.start % block[1] == 0 {
                let c = w.col_part(cols.clone()).unwrap().dequantize();
                let want: Vec<f32> = full.chunks(12).flat_map(|row| row[cols.clone()].to_vec()).collect();
                assert_eq!(c, want, "cols {cols:?} of {block:?}");
            }
        }
        assert!(m(8, 12, [4, 4]).row_part(2..6).is_err());
        assert!(m(8, 12, [4, 4]).col_part(0..6).is_err());
        // The last block may be cut short.
        assert!(m(10, 12, [4, 4]).row_part(8..10).is_ok());
    }

    /// Joined parts hold every value of the parts in order (one scale row per weight row);
    /// parts of other elements, inputs, input groups or with multi-row blocks stay apart.
    #[test]
    fn stackable_parts_join_with_their_values() {
        let fp8 = |rows, block| {
            let mut w = m(rows, 12, block);
            w.elem = W8Elem::Fp8E4M3;
            w
        };
        // q per channel, k per tensor (one block over everything), v per channel: one matrix.
        let parts = [fp8(4, [1, 12]), fp8(2, [2, 16]), fp8(3, [1, 12])];
        let joined = W8Matrix::join_stackable(&parts);
        assert_eq!(joined.len(), 1);
        assert_eq!((joined[0].rows(), joined[0].block()), (9, [1, 12]));
        let want: Vec<f32> = parts.iter().flat_map(W8Matrix::dequantize).collect();
        assert_eq!(joined[0].dequantize(), want);
        // Groups of 4 inputs per row join with the same groups only; 2-row blocks never (a
        // per-tensor part beside them takes the joined part's groups: 12 inputs, not 4).
        let parts = [fp8(2, [1, 4]), fp8(2, [1, 4]), fp8(4, [2, 4]), fp8(2, [1, 12]), m(2, 12, [1, 12])];
        let joined = W8Matrix::join_stackable(&parts);
        let shapes: Vec<_> = joined.iter().map(|w| (w.rows(), w.block(), w.elem())).collect();
        assert_eq!(
            shapes,
            [
                (4, [1, 4], W8Elem::Fp8E4M3),
                (4, [2, 4], W8Elem::Fp8E4M3),
                (2, [1, 12], W8Elem::Fp8E4M3),
                (2, [1, 12], W8Elem::Int8)
            ]
        );
        let want: Vec<f32> = parts.iter().flat_map(W8Matrix::dequantize).collect();
        assert_eq!(joined.iter().flat_map(W8Matrix::dequantize).collect::<Vec<_>>(), want);
    }
}
