//! Parsing of the GGUF header: magic, version, metadata key/values, tensor infos, and the
//! layout of the data section.
//!
//! Layout (all little-endian): `"GGUF"`, u32 version, u64 tensor count, u64 metadata count,
//! metadata (string key, u32 value type, value)*, tensor infos (string name, u32 n_dims,
//! u64 dims[n_dims] innermost first, u32 ggml type, u64 offset)*, padding to `alignment`,
//! then the data section; tensor offsets are relative to its start.
//!
//! Invariants of a parsed `Header`:
//! - every tensor's bytes `[data_offset + offset, + n_bytes)` lie inside the file, its offset is
//!   a multiple of `alignment`, its innermost dim is a multiple of its type's block length and
//!   its element count fits in usize;
//! - tensor names and metadata keys are unique;
//! - nothing was allocated in proportion to a count read from the file before checking that
//!   the rest of the file could hold that many items (a corrupt count cannot exhaust memory).

use std::collections::BTreeMap;
use std::path::Path;

use super::cursor::{Cursor, Short};
use super::error::GgufError;
use super::types::GgmlType;
use super::value::{MetadataArray, MetadataValue, ValueType};

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: u32 = 4;
/// Nested metadata arrays deeper than this are rejected, so crafted input cannot recurse
/// the stack away.
const MAX_ARRAY_DEPTH: u32 = 8;

/// Where and what one tensor is. `dims` are in GGUF order (innermost, i.e. contiguous, first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// The row-major (HF / PyTorch) shape: GGUF dims reversed, outermost first.
    pub fn hf_shape(&self) -> Vec<usize> {
        // Parse checked that n_elements fits in usize, so each non-zero dim does too.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> usize {
        self.n_elements as usize
    }
}

/// Everything in a GGUF file except the tensor data.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, MetadataValue>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

struct Ctx<'p> {
    path: &'p Path,
    file_len: u64,
}

impl Ctx<'_> {
    fn truncated(&self, s: Short, what: impl Into<String>) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.into(),
            offset: s.offset,
            needed: s.needed,
            file_len: self.file_len,
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> GgufError {
        GgufError::Malformed { path: self.path.to_path_buf(), reason: reason.into() }
    }

    fn bad_key(&self, key: &str, reason: impl Into<String>) -> GgufError {
        GgufError::BadMetadata { path: self.path.to_path_buf(), key: key.to_owned(), reason: reason.into() }
    }

    fn bad_tensor(&self, tensor: &str, reason: impl Into<String>) -> GgufError {
        GgufError::BadTensorInfo { path: self.path.to_path_buf(), tensor: tensor.to_owned(), reason: reason.into() }
    }
}

/// Parses the header of the GGUF image `bytes`; `path` is only used in error messages.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<Header, GgufError> {
    let cx = Ctx { path, file_len: bytes.len() as u64 };
    let mut c = Cursor::new(bytes);

    let magic = c.take(4).map_err(|s| cx.truncated(s, "the magic bytes"))?;
    if magic != GGUF_MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(GgufError::BadMagic { path: path.to_path_buf(), found });
    }
    let version = c.u32().map_err(|s| cx.truncated(s, "the version"))?;
    if version != 2 && version != 3 {
        let hint = if version == 1 {
            "; version 1 files predate 64-bit counts: re-convert the model with a current llama.cpp"
        } else if matches!(version.swap_bytes(), 2 | 3) {
            "; this looks like a big-endian GGUF, which kiln does not read"
        } else {
            ""
        };
        return Err(GgufError::UnsupportedVersion { path: path.to_path_buf(), version, hint });
    }
    let n_tensors = c.u64().map_err(|s| cx.truncated(s, "the tensor count"))?;
    let n_kv = c.u64().map_err(|s| cx.truncated(s, "the metadata count"))?;

    // A key/value needs >= 8 (key length) + 4 (type) + 1 bytes; a tensor info >= 8 + 4 + 4 + 8.
    check_count_fits(&cx, &c, n_kv, 13, "metadata entries")?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = read_string(&cx, &mut c, || format!("the key of metadata entry {i}"))?;
        let type_id = c.u32().map_err(|s| cx.truncated(s, format!("the value type of metadata key '{key}'")))?;
        let Some(ty) = ValueType::from_id(type_id) else {
            return Err(GgufError::UnknownValueType { path: path.to_path_buf(), key, type_id });
        };
        let value = read_value(&cx, &mut c, &key, ty)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(cx.bad_key(&key, "appears more than once"));
        }
    }

    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= u32::MAX as u64 => a,
            _ => return Err(cx.bad_key(ALIGNMENT_KEY, format!("must be a power of two, found {v:?}"))),
        },
    };

    check_count_fits(&cx, &c, n_tensors, 24, "tensor infos")?;
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut seen = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let info = read_tensor_info(&cx, &mut c, i, alignment)?;
        if !seen.insert(info.name.clone()) {
            return Err(cx.bad_tensor(&info.name, "appears more than once"));
        }
        tensors.push(info);
    }

    let data_offset = c.pos().div_ceil(alignment) * alignment;
    for t in &tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(_), Some(end)) if end <= cx.file_len => {}
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    path: path.to_path_buf(),
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len: cx.file_len,
                })
            }
        }
    }
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

fn check_count_fits(cx: &Ctx, c: &Cursor, count: u64, min_each: u64, what: &str) -> Result<(), GgufError> {
    if count.checked_mul(min_each).is_none_or(|need| need > c.remaining()) {
        return Err(
            cx.truncated(Short { offset: c.pos(), needed: count.saturating_mul(min_each) }, format!("{count} {what}"))
        );
    }
    Ok(())
}

fn read_string(cx: &Ctx, c: &mut Cursor, what: impl Fn() -> String) -> Result<String, GgufError> {
    let bytes = c.string_bytes().map_err(|s| cx.truncated(s, what()))?;
    String::from_utf8(bytes.to_vec()).map_err(|e| cx.malformed(format!("{} is not valid UTF-8: {e}", what())))
}

fn read_value(cx: &Ctx, c: &mut Cursor, key: &str, ty: ValueType) -> Result<MetadataValue, GgufError> {
    let tr = |s| cx.truncated(s, format!("the value of metadata key '{key}'"));
    Ok(match ty {
        ValueType::U8 => MetadataValue::U8(c.u8().map_err(tr)?),
        ValueType::I8 => MetadataValue::I8(c.i8().map_err(tr)?),
        ValueType::U16 => MetadataValue::U16(c.u16().map_err(tr)?),
        ValueType::I16 => MetadataValue::I16(c.i16().map_err(tr)?),
        ValueType::U32 => MetadataValue::U32(c.u32().map_err(tr)?),
        ValueType::I32 => MetadataValue::I32(c.i32().map_err(tr)?),
        ValueType::F32 => MetadataValue::F32(c.f32().map_err(tr)?),
        ValueType::U64 => MetadataValue::U64(c.u64().map_err(tr)?),
        ValueType::I64 => MetadataValue::I64(c.i64().map_err(tr)?),
        ValueType::F64 => MetadataValue::F64(c.f64().map_err(tr)?),
        ValueType::Bool => MetadataValue::Bool(read_bool(cx, c, key)?),
        ValueType::String => {
            MetadataValue::String(read_string(cx, c, || format!("the value of metadata key '{key}'"))?)
        }
        ValueType::Array => MetadataValue::Array(read_array(cx, c, key, 0)?),
    })
}

fn read_bool(cx: &Ctx, c: &mut Cursor, key: &str) -> Result<bool, GgufError> {
    match c.u8().map_err(|s| cx.truncated(s, format!("a bool of metadata key '{key}'")))? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(cx.bad_key(key, format!("bool byte is {b}, expected 0 or 1"))),
    }
}

fn read_array(cx: &Ctx, c: &mut Cursor, key: &str, depth: u32) -> Result<MetadataArray, GgufError> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(cx.bad_key(key, format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
    }
    let what = || format!("the array header of metadata key '{key}'");
    let type_id = c.u32().map_err(|s| cx.truncated(s, what()))?;
    let len = c.u64().map_err(|s| cx.truncated(s, what()))?;
    let Some(ty) = ValueType::from_id(type_id) else {
        return Err(GgufError::UnknownValueType { path: cx.path.to_path_buf(), key: key.to_owned(), type_id });
    };
    check_count_fits(cx, c, len, ty.min_encoded_len(), &format!("elements of metadata array '{key}'"))?;
    let n = len as usize; // fits: len * min_len <= remaining bytes
    let tr = |s| cx.truncated(s, format!("an element of metadata array '{key}'"));
    macro_rules! prim {
        ($variant:ident, $read:ident) => {{
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(c.$read().map_err(tr)?);
            }
            MetadataArray::$variant(v)
        }};
    }
    Ok(match ty {
        ValueType::U8 => MetadataArray::U8(c.take(len).map_err(tr)?.to_vec()),
        ValueType::I8 => prim!(I8, i8),
        ValueType::U16 => prim!(U16, u16),
        ValueType::I16 => prim!(I16, i16),
        ValueType::U32 => prim!(U32, u32),
        ValueType::I32 => prim!(I32, i32),
        ValueType::F32 => prim!(F32, f32),
        ValueType::U64 => prim!(U64, u64),
        ValueType::I64 => prim!(I64, i64),
        ValueType::F64 => prim!(F64, f64),
        ValueType::Bool => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_bool(cx, c, key)?);
            }
            MetadataArray::Bool(v)
        }
        ValueType::String => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_string(cx, c, || format!("element {i} of metadata array '{key}'"))?);
            }
            MetadataArray::String(v)
        }
        ValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(cx, c, key, depth + 1)?);
            }
            MetadataArray::Array(v)
        }
    })
}

fn read_tensor_info(cx: &Ctx, c: &mut Cursor, index: u64, alignment: u64) -> Result<GgufTensorInfo, GgufError> {
    let name = read_string(cx, c, || format!("the name of tensor info {index}"))?;
    let tr = |s| cx.truncated(s, format!("the info of tensor '{name}'"));
    let n_dims = c.u32().map_err(tr)?;
    if n_dims > MAX_DIMS {
        return Err(cx.bad_tensor(&name, format!("has {n_dims} dimensions, at most {MAX_DIMS} are allowed")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64().map_err(tr)?);
    }
    let type_id = c.u32().map_err(tr)?;
    let offset = c.u64().map_err(tr)?;
    let Some(ggml_type) = GgmlType::from_id(type_id) else {
        return Err(GgufError::UnknownTensorType { path: cx.path.to_path_buf(), tensor: name, type_id });
    };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| usize::try_from(n).is_ok())
        .ok_or_else(|| cx.bad_tensor(&name, format!("shape {dims:?} has too many elements")))?;
    let (block_len, block_bytes) = ggml_type.block_layout();
    let inner = dims.first().copied().unwrap_or(1);
    if inner % block_len != 0 {
        return Err(cx.bad_tensor(
            &name,
            format!("innermost dimension {inner} is not a multiple of the {ggml_type} block length {block_len}"),
        ));
    }
    let n_bytes = (n_elements / block_len)
        .checked_mul(block_bytes)
        .ok_or_else(|| cx.bad_tensor(&name, format!("shape {dims:?} is too large")))?;
    if offset % alignment != 0 {
        return Err(
            cx.bad_tensor(&name, format!("data offset {offset} is not a multiple of the alignment {alignment}"))
        );
    }
    Ok(GgufTensorInfo { name, dims, ggml_type, offset, n_elements, n_bytes })
}
