//! Quantized weights held in their block format, from the file to the kernel.
//!
//! A [`QuantMatrix`] is a `[rows, cols]` matrix stored as GGML blocks along each row (a row
//! is `cols / block_len` blocks, rows back to back), exactly as a GGUF file stores it. The
//! formats ([`QuantFormat`]): the 32-value `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0` and the
//! 256-value k-quants `Q2_K` … `Q6_K`; their layouts and values are defined once, in
//! [`blocks`], as 32-value slices of small integers with a scale (and a min) per 16 values.
//!
//! [`QuantFormat::dequantize`] is the one definition of each format's values (the GGUF loader's
//! dequantization calls it); the CPU kernels ([`cpu`]) compute `x · Wᵀ` from the blocks
//! directly and are checked against it.
//!
//! Invariants: a `QuantMatrix` always has `cols % block_len == 0` and exactly
//! `rows * cols / block_len * block_bytes` bytes (checked at construction); it lives in host
//! memory.

pub mod act_quant;
pub mod activations;
#[cfg(target_arch = "x86_64")]
mod activations_avx2;
pub mod blocks;
pub mod cpu;
pub mod fp8_lt;
mod gpu_product;
pub mod int4;
pub mod int4_cuda;
mod int4_mma;
mod int4_tc_gemv;
pub mod quantize;
mod quantize_k;
pub mod w8;
pub mod w8_cuda;

use std::sync::Arc;

use blocks::{unpack, Slice32};

/// Values per slice: the activation block of the CPU kernels, and the unit every format is cut
/// into (a 32-value format's block, an eighth of a k-quant super-block).
pub const BLOCK: usize = 32;

/// A GGML block format kept quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{format}: {cols} columns are not whole {}-value blocks", format.block_len())]
    PartialBlock { format: QuantFormat, cols: usize },
    #[error("{format}: a {rows}×{cols} matrix needs {expected} bytes, got {got}")]
    Size { format: QuantFormat, rows: usize, cols: usize, expected: usize, got: usize },
    #[error("kiln has no quantizer for {0} yet (it reads and multiplies it)")]
    NoQuantizer(QuantFormat),
    #[error("cannot stack {a} rows with {b} rows of another format or width")]
    Stack { a: String, b: String },
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 10] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q5_0,
        QuantFormat::Q5_1,
        QuantFormat::Q8_0,
        QuantFormat::Q2_K,
        QuantFormat::Q3_K,
        QuantFormat::Q4_K,
        QuantFormat::Q5_K,
        QuantFormat::Q6_K,
    ];

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q5_0 | QuantFormat::Q5_1 | QuantFormat::Q8_0 => 32,
            _ => 256,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q5_0 => 22,
            QuantFormat::Q5_1 => 24,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q2_K => 84,
            QuantFormat::Q3_K => 110,
            QuantFormat::Q4_K => 144,
            QuantFormat::Q5_K => 176,
            QuantFormat::Q6_K => 210,
        }
    }

    /// Whether values carry an offset (`scale · w + min`) rather than only a scale.
    pub fn has_min(self) -> bool {
        matches!(
            self,
            QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q2_K | QuantFormat::Q4_K | QuantFormat::Q5_K
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q4_0 => "q4_0",
            QuantFormat::Q4_1 => "q4_1",
            QuantFormat::Q5_0 => "q5_0",
            QuantFormat::Q5_1 => "q5_1",
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q2_K => "q2_K",
            QuantFormat::Q3_K => "q3_K",
            QuantFormat::Q4_K => "q4_K",
            QuantFormat::Q5_K => "q5_K",
            QuantFormat::Q6_K => "q6_K",
        }
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of [`Self::block_len`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// The values of whole blocks: `src` holds `out.len() / block_len` blocks. Bit-exact with
    /// ggml's `dequantize_row_*` (see [`blocks`]).
    pub fn dequantize(self, src: &[u8], out: &mut [f32]) {
        let (bl, bb) = (self.block_len(), self.block_bytes());
        let mut slice = Slice32::default();
        for (o, b) in out.chunks_exact_mut(bl).zip(src.chunks_exact(bb)) {
            for (s, o) in o.chunks_exact_mut(BLOCK).enumerate() {
                unpack(self, b, s, &mut slice);
                for (h, o) in o.chunks_exact_mut(16).enumerate() {
                    let (scale, min) = (slice.scale[h], slice.min[h]);
                    let w = &slice.w[16 * h..16 * h + 16];
                    if self.has_min() {
                        // `scale·w + min`, two roundings, as ggml (`min` is stored negated
                        // where ggml subtracts).
                        for (x, &w) in o.iter_mut().zip(w) {
                            *x = scale * w as f32 + min;
                        }
                    } else {
                        for (x, &w) in o.iter_mut().zip(w) {
                            *x = scale * w as f32;
                        }
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

/// Bytes kept alive by someone else that a matrix may borrow its blocks from (a memory-mapped
/// file: the blocks are then never copied).
pub trait SharedBytes: Send + Sync + std::fmt::Debug {
    fn shared_bytes(&self) -> &[u8];

    /// Asks for `shared_bytes()[start..start + len]` to be resident and mapped now rather than
    /// at first read (a hint: a mapped file prefaults its pages; errors are ignored). A matrix
    /// that borrows blocks calls it, since its first product reads every byte: faulting 35k
    /// pages of a 145 MB Q8_0 file in during the first prefill made it ~25% slower than the next.
    fn prefault(&self, _start: usize, _len: usize) {}
}

/// The blocks of consecutive rows: owned, or a range of a [`SharedBytes`].
#[derive(Clone)]
enum Segment {
    Owned(Arc<[u8]>),
    Shared { owner: Arc<dyn SharedBytes>, start: usize, len: usize },
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Owned(b) => b,
            Segment::Shared { owner, start, len } => &owner.shared_bytes()[*start..*start + *len],
        }
    }
}

/// A [`QuantMatrix`]'s rows, each segment's bytes resolved ([`QuantMatrix::rows_view`]).
pub struct RowsView<'a> {
    rb: usize,
    segments: Vec<(&'a [u8], usize)>,
}

impl<'a> RowsView<'a> {
    /// The blocks of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        row_in(self.segments.iter().copied(), self.rb, r)
    }
}

/// Row `r` (of `rb` bytes) of segments `(bytes, rows)` in row order.
fn row_in<'a>(segments: impl Iterator<Item = (&'a [u8], usize)>, rb: usize, mut r: usize) -> &'a [u8] {
    for (bytes, rows) in segments {
        if r < rows {
            return &bytes[r * rb..(r + 1) * rb];
        }
        r -= rows;
    }
    panic!("row {r} past the end of the matrix")
}

/// A `[rows, cols]` matrix of quantized blocks in host memory; see the module header. Its rows
/// may lie in several segments (a stacked q/k/v or gate/up borrowed from a file stays where it
/// is), each a whole number of rows.
#[derive(Clone)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    /// Segments and their row counts, in row order.
    segments: Arc<[(Segment, usize)]>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantMatrix({} {}×{})", self.format, self.rows, self.cols)
    }
}

impl QuantMatrix {
    fn checked(format: QuantFormat, rows: usize, cols: usize, len: usize) -> Result<(), QuantError> {
        if !cols.is_multiple_of(format.block_len()) {
            return Err(QuantError::PartialBlock { format, cols });
        }
        let expected = rows * format.row_bytes(cols);
        if len != expected {
            return Err(QuantError::Size { format, rows, cols, expected, got: len });
        }
        Ok(())
    }

    pub fn new(format: QuantFormat, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<QuantMatrix, QuantError> {
        QuantMatrix::checked(format, rows, cols, bytes.len())?;
        Ok(QuantMatrix { format, rows, cols, segments: Arc::new([(Segment::Owned(bytes.into()), rows)]) })
    }

    /// A matrix whose blocks are `owner.shared_bytes()[start..start + len]`, borrowed, not
    /// copied (an error if the range is outside the owner or the wrong size).
    pub fn shared(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        owner: Arc<dyn SharedBytes>,
        start: usize,
        len: usize,
    ) -> Result<QuantMatrix, QuantError> {
        QuantMatrix::checked(format, rows, cols, len)?;
        let total = owner.shared_bytes().len();
        if start.checked_add(len).is_none_or(|end| end > total) {
            return Err(QuantError::Size { format, rows, cols, expected: len, got: total.saturating_sub(start) });
        }
        owner.prefault(start, len);
        let seg = Segment::Shared { owner, start, len };
        Ok(QuantMatrix { format, rows, cols, segments: Arc::new([(seg, rows)]) })
    }

    /// Matrices of one format and width stacked along rows (fused q/k/v, gate/up); their
    /// blocks stay where they are.
    pub fn stack(parts: &[QuantMatrix]) -> Result<QuantMatrix, QuantError> {
        let first = parts.first().ok_or(QuantError::Stack { a: "no".into(), b: "no".into() })?;
        let mut segments = Vec::new();
        for p in parts {
            if p.format != first.format || p.cols != first.cols {
                return Err(QuantError::Stack { a: format!("{first:?}"), b: format!("{p:?}") });
            }
            segments.extend(p.segments.iter().cloned());
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        Ok(QuantMatrix { format: first.format, rows, cols: first.cols, segments: segments.into() })
    }

    /// Whether any block is borrowed rather than owned (for tests and reports).
    pub fn borrows(&self) -> bool {
        self.segments.iter().any(|(s, _)| matches!(s, Segment::Shared { .. }))
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
        // `bytes` only of the segments the walk reaches.
        row_in(self.segments.iter().map(|(seg, rows)| (seg.bytes(), *rows)), self.format.row_bytes(self.cols), r)
    }

    /// The rows with each segment's bytes looked up once: for loops over many rows (a product
    /// reads every row once per step; a borrowed segment's bytes are a call into its owner).
    pub fn rows_view(&self) -> RowsView<'_> {
        let rb = self.format.row_bytes(self.cols);
        RowsView { rb, segments: self.segments.iter().map(|(seg, rows)| (seg.bytes(), *rows)).collect() }
    }

    /// Row `r`'s 32-value slices in order, each unpacked ([`blocks::unpack`]): `f(s, slice)`,
    /// where slice `s` holds columns `32 s .. 32 s + 32` (for converting blocks to another
    /// kernel's layout without dequantizing).
    pub fn for_each_slice(&self, r: usize, mut f: impl FnMut(usize, &Slice32)) {
        let (bl, bb) = (self.format.block_len(), self.format.block_bytes());
        let mut slice = Slice32::default();
        for (b, block) in self.row(r).chunks_exact(bb).enumerate() {
            for s in 0..bl / BLOCK {
                unpack(self.format, block, s, &mut slice);
                f(b * bl / BLOCK + s, &slice);
            }
        }
    }

    /// Row `r`'s values.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.format.dequantize(self.row(r), out);
    }

    /// Every value, row-major (for references and tests).
    pub fn dequantize_all(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let mut at = 0;
        for (seg, rows) in self.segments.iter() {
            self.format.dequantize(seg.bytes(), &mut out[at..at + rows * self.cols]);
            at += rows * self.cols;
        }
        out
    }
}

/// A `rows × cols` matrix of `format` with random blocks whose f16 fields (`d`, `m` / `dmin`)
/// are finite, small and of either sign, as real blocks' are (for the layout tests).
#[cfg(test)]
pub(crate) fn random_blocks(format: QuantFormat, rows: usize, cols: usize, mut seed: u64) -> QuantMatrix {
    let mut byte = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 24) as u8
    };
    let mut bytes: Vec<u8> = (0..rows * format.row_bytes(cols)).map(|_| byte()).collect();
    for b in bytes.chunks_exact_mut(format.block_bytes()) {
        for &at in blocks::half_fields(format) {
            let h = half::f16::from_f32((b[at] as f32 - 128.0) / 4096.0).to_bits().to_le_bytes();
            b[at..at + 2].copy_from_slice(&h);
        }
    }
    QuantMatrix::new(format, rows, cols, bytes).expect("whole blocks")
}
