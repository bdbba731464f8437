//! Dequantization of GGML tensor data to f32.
//!
//! Block formats (all little-endian, `d`/`m` are IEEE f16):
//! - `Q8_0`: 32 values = `d`, then 32 × i8 `q`;                       x = q·d
//! - `Q4_0`: 32 values = `d`, then 16 bytes; byte j holds value j in its low nibble and value
//!   j+16 in its high nibble;                                          x = (q − 8)·d
//! - `Q4_1`: 32 values = `d`, `m`, then 16 bytes laid out as Q4_0;     x = q·d + m
//! - `F32`, `F16`, `BF16`: one value per element.
//!
//! Invariants: `out.len()` equals the element count and `src.len()` equals the type's byte size
//! for it (checked, never assumed); the result is bit-identical to evaluating the formulas
//! above in f32 (`q·d` rounded, then `+ m` rounded), whatever the thread count, because each
//! element is computed independently. Work is split across rayon in chunks of whole blocks.

use half::f16;
use kiln_runtime::device::quant::QuantFormat;
use rayon::prelude::*;

use super::types::GgmlType;

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    #[error("type {0} cannot be dequantized (supported: f32, f16, bf16, q8_0, q4_0, q4_1)")]
    Unsupported(GgmlType),
    #[error("{ty}: {n_elements} elements is not a whole number of {block_len}-element blocks")]
    PartialBlock { ty: GgmlType, n_elements: usize, block_len: usize },
    #[error("{ty}: {n_elements} elements need {expected} bytes, got {got}")]
    SizeMismatch { ty: GgmlType, n_elements: usize, expected: usize, got: usize },
}

/// Elements handed to one rayon task: large enough to amortise scheduling, small enough to
/// balance a 2-core laptop and a 64-core server alike. A multiple of every block length.
const CHUNK_ELEMS: usize = 64 * 1024;

/// Dequantizes `src` (the raw bytes of `out.len()` elements of type `ty`) into `out`.
pub fn dequantize_into(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    if !ty.can_dequantize() {
        return Err(DequantError::Unsupported(ty));
    }
    let (block_len, block_bytes) = ty.block_layout();
    let (block_len, block_bytes) = (block_len as usize, block_bytes as usize);
    let n = out.len();
    if !n.is_multiple_of(block_len) {
        return Err(DequantError::PartialBlock { ty, n_elements: n, block_len });
    }
    let expected = n / block_len * block_bytes;
    if src.len() != expected {
        return Err(DequantError::SizeMismatch { ty, n_elements: n, expected, got: src.len() });
    }
    let src_chunk = CHUNK_ELEMS / block_len * block_bytes;
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => f32_chunk,
        GgmlType::F16 => f16_chunk,
        GgmlType::Bf16 => bf16_chunk,
        GgmlType::Q8_0 => q8_0_chunk,
        GgmlType::Q4_0 => q4_0_chunk,
        GgmlType::Q4_1 => q4_1_chunk,
        other => return Err(DequantError::Unsupported(other)),
    };
    out.par_chunks_mut(CHUNK_ELEMS).zip(src.par_chunks(src_chunk)).for_each(|(o, s)| kernel(s, o));
    Ok(())
}

/// Allocating form of [`dequantize_into`].
pub fn dequantize(ty: GgmlType, src: &[u8], n_elements: usize) -> Result<Vec<f32>, DequantError> {
    let mut out = vec![0f32; n_elements];
    dequantize_into(ty, src, &mut out)?;
    Ok(out)
}

fn f32_chunk(src: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn f16_chunk(src: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

fn bf16_chunk(src: &[u8], out: &mut [f32]) {
    // bf16 is the top half of an f32, so widening is a shift.
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

// The block formats kiln also multiplies without dequantizing are defined once, in the runtime.
fn q8_0_chunk(src: &[u8], out: &mut [f32]) {
    QuantFormat::Q8_0.dequantize(src, out);
}

fn q4_0_chunk(src: &[u8], out: &mut [f32]) {
    QuantFormat::Q4_0.dequantize(src, out);
}

fn q4_1_chunk(src: &[u8], out: &mut [f32]) {
    QuantFormat::Q4_1.dequantize(src, out);
}

#[cfg(test)]
mod tests;
