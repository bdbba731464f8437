//! `GgufFile`: a parsed GGUF file whose tensor data stays memory-mapped until dequantized.
//!
//! Invariants: the header was fully validated by `parse_header` before a `GgufFile` exists, so
//! `tensor_bytes` never reads out of bounds; the mapping is read-only and lives as long as the
//! `GgufFile`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dequant::{dequantize_into, DequantError};
use super::error::GgufError;
use super::parse::{parse_header, GgufTensorInfo, Header};
use super::value::MetadataValue;

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    header: Header,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("metadata_keys", &self.header.metadata.len())
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

/// The whole file image, for quantized matrices that borrow their blocks from the mapping.
impl kiln_runtime::device::quant::SharedBytes for GgufFile {
    fn shared_bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// `MADV_POPULATE_READ` on the range (Linux 5.14+; elsewhere, or on error, nothing): the
    /// pages are read in and mapped now, as llama.cpp's loader does for the whole file.
    fn prefault(&self, start: usize, len: usize) {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped(m) = &self.storage {
            let _ = m.advise_range(memmap2::Advice::PopulateRead, start, len);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (start, len);
    }
}

impl GgufFile {
    /// Opens and memory-maps `path`, and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        // Safety: the mapping is read-only; like every mmap-based loader we assume nobody
        // truncates or rewrites the model file while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::from_storage(path.to_path_buf(), Storage::Mapped(map))
    }

    /// Parses an in-memory GGUF image; `label` names it in error messages.
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::from_storage(label.into(), Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<Self, GgufError> {
        let header = parse_header(storage.bytes(), &path)?;
        let index = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Self { path, storage, header, index })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Byte offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.header.metadata.get(key)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.header.tensors
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn tensor_info(&self, name: &str) -> Result<&GgufTensorInfo, GgufError> {
        self.index
            .get(name)
            .map(|&i| &self.header.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor { path: self.path.clone(), tensor: name.to_owned() })
    }

    /// The raw stored bytes of a tensor of this file.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8], GgufError> {
        // Re-check against this file: `info` could come from another file's header.
        let start = self.header.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.n_bytes));
        let bytes = self.storage.bytes();
        match (start, end) {
            (Some(s), Some(e)) if e <= bytes.len() as u64 => Ok(&bytes[s as usize..e as usize]),
            _ => Err(GgufError::TensorOutOfBounds {
                path: self.path.clone(),
                tensor: info.name.clone(),
                start: start.unwrap_or(u64::MAX),
                end: end.unwrap_or(u64::MAX),
                file_len: bytes.len() as u64,
            }),
        }
    }

    /// Dequantizes the tensor `name` to f32, in GGUF element order (row-major over the
    /// reversed dims, i.e. the HF shape `info.hf_shape()`).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor_info(name)?;
        let mut out = vec![0f32; info.n_elements()];
        self.dequantize_into(info, &mut out)?;
        Ok(out)
    }

    /// Dequantizes `info`'s tensor into `out` (length: its element count).
    pub fn dequantize_into(&self, info: &GgufTensorInfo, out: &mut [f32]) -> Result<(), GgufError> {
        let bytes = self.tensor_bytes(info)?;
        dequantize_into(info.ggml_type, bytes, out).map_err(|e| match e {
            DequantError::Unsupported(ty) => {
                GgufError::UnsupportedType { path: self.path.clone(), tensor: info.name.clone(), ty }
            }
            other => GgufError::BadTensorInfo {
                path: self.path.clone(),
                tensor: info.name.clone(),
                reason: other.to_string(),
            },
        })
    }
}
