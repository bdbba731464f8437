//! Dequantization of GGML tensor data to f32.
//!
//! `F32`, `F16`, `BF16` are one value per element; the block formats (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, Q2_K … Q6_K) are defined once, in the runtime (`kiln_runtime::device::quant::blocks`),
//! which both this loader and the kernels that read the blocks directly use.
//!
//! Invariants: `out.len()` equals the element count and `src.len()` equals the type's byte size
//! for it (checked, never assumed); the result is bit-identical to ggml's dequantization
//! whatever the thread count, because each element is computed independently. Work is split
//! across rayon in chunks of whole blocks.

use half::f16;
use rayon::prelude::*;

use super::types::GgmlType;

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    #[error("type {0} cannot be dequantized (supported: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K)")]
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
    let chunks = out.par_chunks_mut(CHUNK_ELEMS).zip(src.par_chunks(src_chunk));
    if let Some(format) = ty.quant_format() {
        chunks.for_each(|(o, s)| format.dequantize(s, o));
        return Ok(());
    }
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => f32_chunk,
        GgmlType::F16 => f16_chunk,
        GgmlType::Bf16 => bf16_chunk,
        other => return Err(DequantError::Unsupported(other)),
    };
    chunks.for_each(|(o, s)| kernel(s, o));
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

#[cfg(test)]
mod tests;
