//! f32 values to blocks: ggml's reference quantizers (`quantize_row_*_ref` in `ggml-quants.c`,
//! which llama.cpp's `llama-quantize` uses when no importance matrix is given), evaluated with
//! the same f32 operations in the same order, so the bytes equal the `gguf` Python package's
//! `gguf.quants.quantize` (fixture test in runtime/tests/quant_blocks.rs).
//!
//! Per 32-value block:
//! - `Q8_0`: `d = max|x| / 127`, `q = round(x / d)` (half away from zero);
//! - `Q4_0` / `Q5_0`: `d = m / −8` (`/ −16`), `m` the value of largest magnitude (first one on
//!   ties), `q = min(15, trunc(x/d + 8.5))` (`min(31, trunc(x/d + 16.5))`);
//! - `Q4_1` / `Q5_1`: `d = (max − min) / 15` (`/ 31`), `m = min`, `q = trunc((x − min)/d + 0.5)`
//!   (capped at 15 for Q4_1).
//!
//! `x / d` is computed as `x · (1/d)` with `d` still in f32; `d` and `m` are then stored as
//! IEEE f16 (round to nearest even). The k-quants (Q2_K … Q6_K) are in `quantize_k.rs`.

use super::{QuantError, QuantFormat, BLOCK};
use half::f16;

/// Whether [`quantize`] can write `format`: every format kiln reads (the match is exhaustive so
/// that a format added to [`QuantFormat`] has to decide).
pub fn has_quantizer(format: QuantFormat) -> bool {
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q5_0 | QuantFormat::Q5_1 | QuantFormat::Q8_0 => true,
        QuantFormat::Q2_K | QuantFormat::Q3_K | QuantFormat::Q4_K | QuantFormat::Q5_K | QuantFormat::Q6_K => true,
    }
}

/// Appends the blocks of `x` (`x.len()` a multiple of the block length) in `format` to `out`.
pub fn quantize(format: QuantFormat, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
    if !x.len().is_multiple_of(format.block_len()) {
        return Err(QuantError::PartialBlock { format, cols: x.len() });
    }
    use super::quantize_k as k;
    match format {
        QuantFormat::Q2_K => k::quantize_q2_k(x, out),
        QuantFormat::Q3_K => k::quantize_q3_k(x, out),
        QuantFormat::Q4_K => k::quantize_q4_k(x, out),
        QuantFormat::Q5_K => k::quantize_q5_k(x, out),
        QuantFormat::Q6_K => k::quantize_q6_k(x, out),
        QuantFormat::Q8_0 => x.chunks_exact(BLOCK).for_each(|b| q8_0(b, out)),
        QuantFormat::Q4_0 => x.chunks_exact(BLOCK).for_each(|b| symmetric(b, 8.0, 15, out, false)),
        QuantFormat::Q5_0 => x.chunks_exact(BLOCK).for_each(|b| symmetric(b, 16.0, 31, out, true)),
        QuantFormat::Q4_1 => x.chunks_exact(BLOCK).for_each(|b| offset(b, 15, out, false)),
        QuantFormat::Q5_1 => x.chunks_exact(BLOCK).for_each(|b| offset(b, 31, out, true)),
    }
    Ok(())
}

fn put_half(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn q8_0(b: &[f32], out: &mut Vec<u8>) {
    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_half(out, d);
    out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// Q4_0 (`half` 8, `qmax` 15) and Q5_0 (`half` 16, `qmax` 31, with its 32 high bits).
fn symmetric(b: &[f32], half: f32, qmax: u8, out: &mut Vec<u8>, high_bits: bool) {
    // The value of largest magnitude, the first one on ties (ggml compares with `<`).
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in b {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -half;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_half(out, d);
    // ggml converts with a C cast to int8 (truncation toward zero), then caps.
    let q = |v: f32| ((v * id + (half + 0.5)) as i8 as u8).min(qmax);
    nibbles_and_high(b, q, high_bits, out);
}

/// Q4_1 (`qmax` 15) and Q5_1 (`qmax` 31, with its 32 high bits, no cap).
fn offset(b: &[f32], qmax: u8, out: &mut Vec<u8>, high_bits: bool) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in b {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / qmax as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_half(out, d);
    put_half(out, min);
    // Q4_1 goes through int8 and caps at 15; Q5_1 converts to uint8 uncapped (the value
    // never exceeds 31).
    let q = |v: f32| {
        let x = (v - min) * id + 0.5;
        if high_bits {
            x as u8
        } else {
            (x as i8 as u8).min(qmax)
        }
    };
    nibbles_and_high(b, q, high_bits, out);
}

/// The 16 nibble bytes (value j low, j + 16 high) and, for the 5-bit formats first, the 32
/// fifth bits as a little-endian u32.
fn nibbles_and_high(b: &[f32], q: impl Fn(f32) -> u8, high_bits: bool, out: &mut Vec<u8>) {
    let qs: Vec<u8> = b.iter().map(|&v| q(v)).collect();
    if high_bits {
        let qh = qs.iter().enumerate().fold(0u32, |h, (j, &v)| h | (((v as u32 & 0x10) >> 4) << j));
        out.extend_from_slice(&qh.to_le_bytes());
    }
    out.extend((0..16).map(|j| (qs[j] & 0x0f) | ((qs[j + 16] & 0x0f) << 4)));
}
