//! GGUF: the llama.cpp model container.
//!
//! `GgufFile::open` memory-maps a file and validates its whole header (every metadata value,
//! every tensor's type, shape and byte range) before returning, so later accessors cannot fail
//! on layout; `dequantize` turns F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensor data into f32;
//! `unpermute_qk_rows` undoes llama.cpp's reordering of Q/K projection rows; `GgufBuilder` writes
//! GGUF images (used by tests to build files with known contents).
//!
//! Shapes: GGUF stores dims innermost-first (`dims[0]` is contiguous). `GgufTensorInfo::hf_shape`
//! reverses them into the row-major shape PyTorch/HF use, and dequantized data is already in
//! that row-major order, so no transposition is ever needed.

mod cursor;
mod dequant;
mod error;
mod file;
mod parse;
mod permute;
mod types;
mod value;
mod writer;

pub use dequant::{dequantize, dequantize_into, DequantError};
pub use error::GgufError;
pub use file::GgufFile;
pub use parse::{GgufTensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
pub use permute::{permute_qk_rows, unpermute_qk_rows, PermuteError};
pub use types::GgmlType;
pub use value::{MetadataArray, MetadataValue, ValueType};
pub use writer::{GgufBuilder, GgufWriteError};

#[cfg(test)]
mod tests;
