//! Quantized weights held in their block format, from the file to the kernel.
//!
//! A [`QuantMatrix`] is a `[rows, cols]` matrix stored as GGML blocks of 32 values along each
//! row (a row is `cols / 32` blocks, rows back to back), exactly as a GGUF file stores it. The
//! formats ([`QuantFormat`]), with `d` and `m` IEEE f16:
//! - `Q4_0`: `d`, then 16 bytes; byte j holds value j in its low nibble and value j+16 in its
//!   high nibble; x = (q − 8)·d (18 bytes per block);
//! - `Q4_1`: `d`, `m`, then 16 bytes laid out as Q4_0; x = q·d + m (20 bytes);
//! - `Q8_0`: `d`, then 32 × i8 `q`; x = q·d (34 bytes).
//!
//! [`QuantFormat::dequantize`] is the one definition of each format's values (the GGUF loader's
//! dequantization calls it); the CPU kernels ([`cpu`]) compute `x · Wᵀ` from the blocks
//! directly and are checked against it.
//!
//! Invariants: a `QuantMatrix` always has `cols % 32 == 0` and exactly
//! `rows * cols / 32 * block_bytes` bytes (checked at construction); it lives in host memory.

pub mod cpu;

use std::sync::Arc;

/// Values per block, for every format here.
pub const BLOCK: usize = 32;

/// A GGML block format kept quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{format}: {cols} columns are not whole {BLOCK}-value blocks")]
    PartialBlock { format: QuantFormat, cols: usize },
    #[error("{format}: a {rows}×{cols} matrix needs {expected} bytes, got {got}")]
    Size { format: QuantFormat, rows: usize, cols: usize, expected: usize, got: usize },
    #[error("cannot stack {a} rows with {b} rows of another format or width")]
    Stack { a: String, b: String },
}

impl QuantFormat {
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q8_0 => 34,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q4_0 => "q4_0",
            QuantFormat::Q4_1 => "q4_1",
            QuantFormat::Q8_0 => "q8_0",
        }
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of [`BLOCK`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / BLOCK * self.block_bytes()
    }

    /// The values of whole blocks: `src` holds `out.len() / 32` blocks.
    pub fn dequantize(self, src: &[u8], out: &mut [f32]) {
        let bb = self.block_bytes();
        for (o, b) in out.chunks_exact_mut(BLOCK).zip(src.chunks_exact(bb)) {
            let d = f16_at(b, 0);
            match self {
                QuantFormat::Q8_0 => {
                    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
                        *x = (q as i8) as f32 * d;
                    }
                }
                QuantFormat::Q4_0 => {
                    let (lo, hi) = o.split_at_mut(16);
                    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..18]) {
                        *l = ((q & 0x0f) as i32 - 8) as f32 * d;
                        *h = ((q >> 4) as i32 - 8) as f32 * d;
                    }
                }
                QuantFormat::Q4_1 => {
                    let m = f16_at(b, 2);
                    let (lo, hi) = o.split_at_mut(16);
                    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..20]) {
                        *l = (q & 0x0f) as f32 * d + m;
                        *h = (q >> 4) as f32 * d + m;
                    }
                }
            }
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// A `[rows, cols]` matrix of quantized blocks in host memory; see the module header.
#[derive(Clone)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantMatrix({} {}×{})", self.format, self.rows, self.cols)
    }
}

impl QuantMatrix {
    pub fn new(format: QuantFormat, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<QuantMatrix, QuantError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(QuantError::PartialBlock { format, cols });
        }
        let expected = rows * format.row_bytes(cols);
        if bytes.len() != expected {
            return Err(QuantError::Size { format, rows, cols, expected, got: bytes.len() });
        }
        Ok(QuantMatrix { format, rows, cols, bytes: bytes.into() })
    }

    /// Matrices of one format and width stacked along rows (fused q/k/v, gate/up).
    pub fn stack(parts: &[QuantMatrix]) -> Result<QuantMatrix, QuantError> {
        let first = parts.first().ok_or(QuantError::Stack { a: "no".into(), b: "no".into() })?;
        let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.bytes.len()).sum());
        for p in parts {
            if p.format != first.format || p.cols != first.cols {
                return Err(QuantError::Stack { a: format!("{first:?}"), b: format!("{p:?}") });
            }
            bytes.extend_from_slice(&p.bytes);
        }
        QuantMatrix::new(first.format, parts.iter().map(|p| p.rows).sum(), first.cols, bytes)
    }

    pub fn format(&self) -> QuantFormat {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The blocks of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.format.row_bytes(self.cols);
        &self.bytes[r * rb..(r + 1) * rb]
    }

    /// Row `r`'s values.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.format.dequantize(self.row(r), out);
    }

    /// Every value, row-major (for references and tests).
    pub fn dequantize_all(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.format.dequantize(&self.bytes, &mut out);
        out
    }
}
