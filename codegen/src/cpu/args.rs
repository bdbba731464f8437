//! The CPU backend's arguments and their validation.
//!
//! Parameters come in `Kernel::params` order, outputs in `Kernel::outputs` order, each in the
//! variant matching its kind. Lengths (for `rows` x `width`):
//! - `Row` tensors: `row_stride >= width` and `len >= (rows - 1) * row_stride + width`
//!   (a view into a larger buffer may be longer);
//! - `Bcast` tensors: `len == width`; `PerRow` tensors and outputs: `len == rows`.
//!
//! Validation runs before any work, so a mismatched call writes nothing.

use super::CpuError;
use crate::ir::{DType, Kernel, OutputKind, ParamKind};
use half::{bf16, f16};

/// A read-only tensor of one storage dtype.
#[derive(Copy, Clone, Debug)]
pub enum CpuIn<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    I32(&'a [i32]),
    /// OCP FP8 e4m3 bytes.
    E4M3(&'a [u8]),
    /// Signed int8 codes.
    I8(&'a [i8]),
}

impl CpuIn<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            CpuIn::F32(_) => DType::F32,
            CpuIn::F16(_) => DType::F16,
            CpuIn::BF16(_) => DType::BF16,
            CpuIn::I32(_) => DType::I32,
            CpuIn::E4M3(_) => DType::F8E4M3,
            CpuIn::I8(_) => DType::I8,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            CpuIn::F32(s) => s.len(),
            CpuIn::F16(s) => s.len(),
            CpuIn::BF16(s) => s.len(),
            CpuIn::I32(s) => s.len(),
            CpuIn::E4M3(s) => s.len(),
            CpuIn::I8(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [f32]> for CpuIn<'a> {
    fn from(s: &'a [f32]) -> Self {
        CpuIn::F32(s)
    }
}
impl<'a> From<&'a [f16]> for CpuIn<'a> {
    fn from(s: &'a [f16]) -> Self {
        CpuIn::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for CpuIn<'a> {
    fn from(s: &'a [bf16]) -> Self {
        CpuIn::BF16(s)
    }
}
impl<'a> From<&'a [i32]> for CpuIn<'a> {
    fn from(s: &'a [i32]) -> Self {
        CpuIn::I32(s)
    }
}

/// A comptime (launch-constant) scalar. A `Comptime(F16 | BF16)` parameter takes an `F32`
/// that is rounded to that dtype (nearest-even).
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum CpuScalar {
    F32(f32),
    I32(i32),
    Bool(bool),
}

/// One kernel parameter, in the variant of its [`ParamKind`].
#[derive(Copy, Clone, Debug)]
pub enum CpuParam<'a> {
    /// `[rows, width]`, row `r` starting at `r * row_stride`.
    Row {
        data: CpuIn<'a>,
        row_stride: usize,
    },
    /// `[width]`, shared by all rows.
    Bcast(CpuIn<'a>),
    /// `[rows]`, one value per row.
    PerRow(CpuIn<'a>),
    Comptime(CpuScalar),
}

impl<'a> CpuParam<'a> {
    pub fn row(data: impl Into<CpuIn<'a>>, row_stride: usize) -> Self {
        CpuParam::Row { data: data.into(), row_stride }
    }
    pub fn bcast(data: impl Into<CpuIn<'a>>) -> Self {
        CpuParam::Bcast(data.into())
    }
    pub fn per_row(data: impl Into<CpuIn<'a>>) -> Self {
        CpuParam::PerRow(data.into())
    }
}

/// A writable tensor of one storage dtype.
#[derive(Debug)]
pub enum CpuOut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
    I32(&'a mut [i32]),
    /// OCP FP8 e4m3 bytes.
    E4M3(&'a mut [u8]),
    /// Signed int8 codes.
    I8(&'a mut [i8]),
}

impl<'a> CpuOut<'a> {
    pub fn dtype(&self) -> DType {
        match self {
            CpuOut::F32(_) => DType::F32,
            CpuOut::F16(_) => DType::F16,
            CpuOut::BF16(_) => DType::BF16,
            CpuOut::I32(_) => DType::I32,
            CpuOut::E4M3(_) => DType::F8E4M3,
            CpuOut::I8(_) => DType::I8,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            CpuOut::F32(s) => s.len(),
            CpuOut::F16(s) => s.len(),
            CpuOut::BF16(s) => s.len(),
            CpuOut::I32(s) => s.len(),
            CpuOut::E4M3(s) => s.len(),
            CpuOut::I8(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A shorter-lived view of the same memory.
    pub fn reborrow(&mut self) -> CpuOut<'_> {
        match self {
            CpuOut::F32(s) => CpuOut::F32(s),
            CpuOut::F16(s) => CpuOut::F16(s),
            CpuOut::BF16(s) => CpuOut::BF16(s),
            CpuOut::I32(s) => CpuOut::I32(s),
            CpuOut::E4M3(s) => CpuOut::E4M3(s),
            CpuOut::I8(s) => CpuOut::I8(s),
        }
    }
    /// Split into consecutive pieces of `n` elements (the last may be shorter).
    pub(crate) fn chunks(self, n: usize) -> Vec<CpuOut<'a>> {
        match self {
            CpuOut::F32(s) => s.chunks_mut(n).map(CpuOut::F32).collect(),
            CpuOut::F16(s) => s.chunks_mut(n).map(CpuOut::F16).collect(),
            CpuOut::BF16(s) => s.chunks_mut(n).map(CpuOut::BF16).collect(),
            CpuOut::I32(s) => s.chunks_mut(n).map(CpuOut::I32).collect(),
            CpuOut::E4M3(s) => s.chunks_mut(n).map(CpuOut::E4M3).collect(),
            CpuOut::I8(s) => s.chunks_mut(n).map(CpuOut::I8).collect(),
        }
    }
}

impl<'a> From<&'a mut [f32]> for CpuOut<'a> {
    fn from(s: &'a mut [f32]) -> Self {
        CpuOut::F32(s)
    }
}
impl<'a> From<&'a mut [f16]> for CpuOut<'a> {
    fn from(s: &'a mut [f16]) -> Self {
        CpuOut::F16(s)
    }
}
impl<'a> From<&'a mut [bf16]> for CpuOut<'a> {
    fn from(s: &'a mut [bf16]) -> Self {
        CpuOut::BF16(s)
    }
}
impl<'a> From<&'a mut [i32]> for CpuOut<'a> {
    fn from(s: &'a mut [i32]) -> Self {
        CpuOut::I32(s)
    }
}

/// One kernel output, in the variant of its [`OutputKind`].
#[derive(Debug)]
pub enum CpuOutArg<'a> {
    Row { data: CpuOut<'a>, row_stride: usize },
    PerRow(CpuOut<'a>),
}

impl<'a> CpuOutArg<'a> {
    pub fn row(data: impl Into<CpuOut<'a>>, row_stride: usize) -> Self {
        CpuOutArg::Row { data: data.into(), row_stride }
    }
    pub fn per_row(data: impl Into<CpuOut<'a>>) -> Self {
        CpuOutArg::PerRow(data.into())
    }
}

fn row_len_ok(len: usize, stride: usize, rows: usize, width: usize) -> Option<usize> {
    let need = (rows - 1).checked_mul(stride)?.checked_add(width)?;
    (len >= need).then_some(need)
}

/// Check every argument against the kernel (see the module docs for the rules).
pub(crate) fn validate(
    k: &Kernel,
    params: &[CpuParam<'_>],
    outputs: &[CpuOutArg<'_>],
    rows: usize,
    width: usize,
) -> Result<(), CpuError> {
    if rows == 0 || width == 0 {
        return Err(CpuError::Empty { rows, width });
    }
    if params.len() != k.params.len() || outputs.len() != k.outputs.len() {
        return Err(CpuError::ArgCount {
            params: (k.params.len(), params.len()),
            outputs: (k.outputs.len(), outputs.len()),
        });
    }
    for (p, arg) in k.params.iter().zip(params) {
        let bad = |got: String| CpuError::ParamKind { name: p.name.clone(), want: kind_text(p.kind), got };
        let len_err = |len: usize, want: String| CpuError::Length { name: p.name.clone(), len, want };
        match (p.kind, arg) {
            (ParamKind::Row(d), CpuParam::Row { data, row_stride }) if data.dtype() == d => {
                if *row_stride < width {
                    return Err(CpuError::Stride { name: p.name.clone(), stride: *row_stride, width });
                }
                if let Some(i) = p.index {
                    let idx = index_data(k, params, i, rows)?;
                    check_indices(&p.name, idx, data.len(), *row_stride, width, false)?;
                } else if row_len_ok(data.len(), *row_stride, rows, width).is_none() {
                    let want = format!("at least (rows-1)*stride+width = {}*{}+{}", rows - 1, row_stride, width);
                    return Err(len_err(data.len(), want));
                }
            }
            (ParamKind::Bcast(d), CpuParam::Bcast(data)) if data.dtype() == d => {
                if data.len() != width {
                    return Err(len_err(data.len(), format!("width = {width}")));
                }
            }
            (ParamKind::PerRow(d), CpuParam::PerRow(data)) if data.dtype() == d => {
                if data.len() != rows {
                    return Err(len_err(data.len(), format!("rows = {rows}")));
                }
            }
            (ParamKind::Comptime(d), CpuParam::Comptime(s)) if scalar_fits(d, *s) => {}
            (_, got) => return Err(bad(param_text(got))),
        }
    }
    for (o, arg) in k.outputs.iter().zip(outputs) {
        let len_err = |len: usize, want: String| CpuError::Length { name: o.name.clone(), len, want };
        match (o.kind, arg) {
            (OutputKind::Row(d), CpuOutArg::Row { data, row_stride }) if data.dtype() == d => {
                if *row_stride < width {
                    return Err(CpuError::Stride { name: o.name.clone(), stride: *row_stride, width });
                }
                if let Some(i) = o.index {
                    let idx = index_data(k, params, i, rows)?;
                    check_indices(&o.name, idx, data.len(), *row_stride, width, true)?;
                } else if row_len_ok(data.len(), *row_stride, rows, width).is_none() {
                    let want = format!("at least (rows-1)*stride+width = {}*{}+{}", rows - 1, row_stride, width);
                    return Err(len_err(data.len(), want));
                }
            }
            (OutputKind::PerRow(d), CpuOutArg::PerRow(data)) if data.dtype() == d => {
                if data.len() != rows {
                    return Err(len_err(data.len(), format!("rows = {rows}")));
                }
            }
            (kind, got) => {
                let want = match kind {
                    OutputKind::Row(d) => format!("a row<{d}> tensor"),
                    OutputKind::PerRow(d) => format!("a per_row<{d}> tensor"),
                };
                let got = match got {
                    CpuOutArg::Row { data, .. } => format!("a row<{}> tensor", data.dtype()),
                    CpuOutArg::PerRow(data) => format!("a per_row<{}> tensor", data.dtype()),
                };
                return Err(CpuError::ParamKind { name: o.name.clone(), want, got });
            }
        }
    }
    Ok(())
}

/// The i32 data of index parameter `i` (the verifier made it a `PerRow(I32)`).
fn index_data<'a>(k: &Kernel, params: &[CpuParam<'a>], i: u32, rows: usize) -> Result<&'a [i32], CpuError> {
    let name = k.params.get(i as usize).map_or_else(|| format!("#{i}"), |p| p.name.clone());
    match params.get(i as usize) {
        Some(CpuParam::PerRow(CpuIn::I32(d))) if d.len() == rows => Ok(d),
        Some(got) => Err(CpuError::ParamKind {
            name,
            want: format!("a per_row<i32> tensor of {rows} rows"),
            got: param_text(got),
        }),
        None => Err(CpuError::ParamKind { name, want: "a per_row<i32> tensor".into(), got: "nothing".into() }),
    }
}

/// Every index names a row inside the tensor (`len` elements, rows `stride` apart); a negative
/// index is allowed only for a scatter (`skip_negative`), which then skips the row.
fn check_indices(
    name: &str,
    idx: &[i32],
    len: usize,
    stride: usize,
    width: usize,
    skip_negative: bool,
) -> Result<(), CpuError> {
    let rows_in = if len < width { 0 } else { (len - width) / stride + 1 };
    for &i in idx {
        if (i < 0 && !skip_negative) || (i >= 0 && i as usize >= rows_in) {
            return Err(CpuError::Length {
                name: name.to_string(),
                len,
                want: format!(
                    "row {i} (the tensor has {rows_in} rows{})",
                    if skip_negative { "; negative skips" } else { "" }
                ),
            });
        }
    }
    Ok(())
}

fn scalar_fits(d: DType, s: CpuScalar) -> bool {
    matches!(
        (d, s),
        (DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8, CpuScalar::F32(_))
            | (DType::I32, CpuScalar::I32(_))
            | (DType::Bool, CpuScalar::Bool(_))
    )
}

fn kind_text(k: ParamKind) -> String {
    match k {
        ParamKind::Row(d) => format!("a row<{d}> tensor"),
        ParamKind::Bcast(d) => format!("a bcast<{d}> tensor"),
        ParamKind::PerRow(d) => format!("a per_row<{d}> tensor"),
        ParamKind::Comptime(d) => format!("a comptime {d} scalar"),
    }
}

fn param_text(p: &CpuParam<'_>) -> String {
    match p {
        CpuParam::Row { data, .. } => format!("a row<{}> tensor", data.dtype()),
        CpuParam::Bcast(data) => format!("a bcast<{}> tensor", data.dtype()),
        CpuParam::PerRow(data) => format!("a per_row<{}> tensor", data.dtype()),
        CpuParam::Comptime(s) => format!("the scalar {s:?}"),
    }
}
