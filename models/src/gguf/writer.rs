//! A minimal GGUF writer: metadata plus tensors given as already-encoded bytes.
//!
//! It exists so tests (and tools) can produce GGUF images with known contents without any
//! external converter. Invariants of its output: version as set (default 3), tensors in the
//! order added, each at the next multiple of the alignment (taken from `general.alignment`
//! when that key is set, else 32), the data section starting at an aligned offset, and each
//! tensor's byte length matching its dims and type (checked when it is added).

use std::io::Write;
use std::path::Path;

use super::parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use super::types::GgmlType;
use super::value::{MetadataArray, MetadataValue};

/// A tensor the writer cannot encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufWriteError {
    #[error("tensor '{name}': dims {dims:?} of type {ty} need {expected} bytes, got {got}")]
    SizeMismatch { name: String, dims: Vec<u64>, ty: GgmlType, expected: u64, got: usize },
    #[error("tensor '{name}': innermost dim of {dims:?} is not a multiple of the {ty} block length")]
    PartialBlock { name: String, dims: Vec<u64>, ty: GgmlType },
    #[error("'{0}' was added twice")]
    Duplicate(String),
    #[error("general.alignment must be a power of two")]
    BadAlignment,
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    bytes: Vec<u8>,
}

/// Builds a GGUF image in memory.
pub struct GgufBuilder {
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self { version: 3, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// Sets the header version (the format is the same for 2 and 3 on little-endian hosts).
    pub fn version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    pub fn metadata(&mut self, key: &str, value: MetadataValue) -> Result<&mut Self, GgufWriteError> {
        if self.metadata.iter().any(|(k, _)| k == key) {
            return Err(GgufWriteError::Duplicate(key.to_owned()));
        }
        if key == ALIGNMENT_KEY && !value.as_u64().is_some_and(u64::is_power_of_two) {
            return Err(GgufWriteError::BadAlignment);
        }
        self.metadata.push((key.to_owned(), value));
        Ok(self)
    }

    /// Adds a tensor; `dims` in GGUF order (innermost first), `bytes` already encoded as `ty`.
    pub fn tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<&mut Self, GgufWriteError> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufWriteError::Duplicate(name.to_owned()));
        }
        let (block_len, block_bytes) = ty.block_layout();
        let err_dims = || dims.to_vec();
        if dims.first().copied().unwrap_or(1) % block_len != 0 {
            return Err(GgufWriteError::PartialBlock { name: name.to_owned(), dims: err_dims(), ty });
        }
        let expected = dims.iter().product::<u64>() / block_len * block_bytes;
        if expected != bytes.len() as u64 {
            return Err(GgufWriteError::SizeMismatch {
                name: name.to_owned(),
                dims: err_dims(),
                ty,
                expected,
                got: bytes.len(),
            });
        }
        self.tensors.push(PendingTensor { name: name.to_owned(), dims: dims.to_vec(), ty, bytes });
        Ok(self)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == ALIGNMENT_KEY)
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The complete file image.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_into(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Writes the file to `w` (header, then each tensor's bytes in turn, no copy of the whole
    /// image) and returns the number of bytes written.
    pub fn write_into(&self, w: &mut impl Write) -> std::io::Result<u64> {
        let align = self.alignment();
        let pad = |n: u64| n.div_ceil(align) * align;
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&self.version.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = pad(offset + t.bytes.len() as u64);
        }
        let data_start = pad(head.len() as u64);
        head.resize(data_start as usize, 0);
        w.write_all(&head)?;
        let mut written = 0u64; // bytes of the data section so far
        for (t, off) in self.tensors.iter().zip(offsets) {
            w.write_all(&vec![0u8; (off - written) as usize])?;
            w.write_all(&t.bytes)?;
            written = off + t.bytes.len() as u64;
        }
        Ok(data_start + written)
    }

    /// Writes the file to `path` through a buffer (see [`Self::write_into`]).
    pub fn write_to(&self, path: &Path) -> std::io::Result<u64> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        let n = self.write_into(&mut w)?;
        w.flush()?;
        Ok(n)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetadataValue) {
    match v {
        MetadataValue::U8(x) => out.push(*x),
        MetadataValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::Bool(x) => out.push(u8::from(*x)),
        MetadataValue::String(s) => put_str(out, s),
        MetadataValue::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &MetadataArray) {
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        MetadataArray::U8(v) => out.extend_from_slice(v),
        MetadataArray::I8(v) => each!(v),
        MetadataArray::U16(v) => each!(v),
        MetadataArray::I16(v) => each!(v),
        MetadataArray::U32(v) => each!(v),
        MetadataArray::I32(v) => each!(v),
        MetadataArray::F32(v) => each!(v),
        MetadataArray::U64(v) => each!(v),
        MetadataArray::I64(v) => each!(v),
        MetadataArray::F64(v) => each!(v),
        MetadataArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        MetadataArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
        MetadataArray::Array(v) => v.iter().for_each(|x| put_array(out, x)),
    }
}
