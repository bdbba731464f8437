//! Errors of the GGUF reader. Invariant: every variant names the file (as given to `open`),
//! and every variant about one tensor or one metadata key names it too, so a user can tell
//! which file is bad and where without a debugger.

use std::path::PathBuf;

use super::types::GgmlType;

/// Anything that can go wrong while reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot read GGUF file: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{}: not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\" (47 47 55 46)", .path.display())]
    BadMagic { path: PathBuf, found: [u8; 4] },

    #[error("{}: GGUF version {version} is not supported (kiln reads versions 2 and 3{hint})", .path.display())]
    UnsupportedVersion { path: PathBuf, version: u32, hint: &'static str },

    #[error("{}: file is truncated: reading {what} needs {needed} bytes at offset {offset}, but the file has only {file_len} bytes", .path.display())]
    Truncated { path: PathBuf, what: String, offset: u64, needed: u64, file_len: u64 },

    #[error("{}: metadata key '{key}' has unknown value type id {type_id}", .path.display())]
    UnknownValueType { path: PathBuf, key: String, type_id: u32 },

    #[error("{}: metadata key '{key}': {reason}", .path.display())]
    BadMetadata { path: PathBuf, key: String, reason: String },

    #[error("{}: tensor '{tensor}' has unknown GGML type id {type_id}", .path.display())]
    UnknownTensorType { path: PathBuf, tensor: String, type_id: u32 },

    #[error("{}: tensor '{tensor}': {reason}", .path.display())]
    BadTensorInfo { path: PathBuf, tensor: String, reason: String },

    #[error("{}: tensor '{tensor}' data occupies bytes [{start}, {end}) but the file has only {file_len} bytes", .path.display())]
    TensorOutOfBounds { path: PathBuf, tensor: String, start: u64, end: u64, file_len: u64 },

    #[error("{}: malformed GGUF header: {reason}", .path.display())]
    Malformed { path: PathBuf, reason: String },

    #[error("{}: no tensor named '{tensor}' in this file", .path.display())]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{}: tensor '{tensor}' has type {ty}, which kiln cannot dequantize (supported: f32, f16, bf16, q8_0, q4_0, q4_1)", .path.display())]
    UnsupportedType { path: PathBuf, tensor: String, ty: GgmlType },
}
