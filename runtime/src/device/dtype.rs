//! [`DType`]: the element types a tensor is stored in. The runtime owns them; the code
//! generator's IR has its own arithmetic types (`kiln_codegen::ir::DType`, which also has
//! `Bool`, a value that is never stored), and the conversion between the two is explicit
//! ([`DType::to_ir`], [`DType::from_ir`]) at the places a tensor meets a kernel's IR.
//! Quantized formats are not dtypes: a quantized weight is a [`super::linear::Weight`] kind.

use kiln_codegen::ir;
use std::fmt;

/// A tensor's storage element type.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    /// OCP FP8 e4m3, a byte an element: quantized activations written by a `#[fused]` kernel
    /// (values `byte × scale`, the scale kept beside them).
    F8E4M3,
    /// Signed int8 codes, a byte an element: INT8 W8A8's quantized activations written by a
    /// `#[fused]` kernel (values `code × scale`, ±127).
    I8,
}

impl DType {
    /// The float storage dtypes (the ones kernels are specialised for).
    pub const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 | DType::I8 => 1,
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32 | DType::I8)
    }

    pub fn is_half(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }

    pub fn name(self) -> &'static str {
        self.to_ir().name()
    }

    /// The IR type of the same name.
    pub fn to_ir(self) -> ir::DType {
        match self {
            DType::F32 => ir::DType::F32,
            DType::F16 => ir::DType::F16,
            DType::BF16 => ir::DType::BF16,
            DType::I32 => ir::DType::I32,
            DType::F8E4M3 => ir::DType::F8E4M3,
            DType::I8 => ir::DType::I8,
        }
    }

    /// The storage dtype of an IR type; `None` for `Bool` (never stored).
    pub fn from_ir(d: ir::DType) -> Option<DType> {
        match d {
            ir::DType::F32 => Some(DType::F32),
            ir::DType::F16 => Some(DType::F16),
            ir::DType::BF16 => Some(DType::BF16),
            ir::DType::I32 => Some(DType::I32),
            ir::DType::F8E4M3 => Some(DType::F8E4M3),
            ir::DType::I8 => Some(DType::I8),
            ir::DType::Bool => None,
        }
    }
}

impl From<DType> for ir::DType {
    fn from(d: DType) -> ir::DType {
        d.to_ir()
    }
}

impl PartialEq<ir::DType> for DType {
    fn eq(&self, other: &ir::DType) -> bool {
        self.to_ir() == *other
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
