//! RMSNorm fused with the per-token quantization of its output: the norm that feeds an 8-bit
//! W8A8 projection writes the quantized activations and their scale in the same kernel (one
//! read of the row, no bf16 copy of the normalised row, no second quantization pass), as
//! TensorRT-LLM's hand-written fused norm-quantize kernels do — here generated from the IR.
//!
//! Quantization (the W8A8 path's, `kiln_runtime::device::quant::fp8_lt::quantize_row_e4m3` for
//! FP8, `act_quant::ActQuant::Int8Row` for INT8): `s = max|y| / 448` over the row (1 for a
//! zero row), `q = e4m3(y / s)`, nearest even, saturating; or `s = max|y| / 127`, `q =
//! round(y / s)` ties to even, clamped to ±127 (SmoothQuant's INT8); `q · s` stands for `y`. `y` stays f32 here: one rounding fewer than writing the
//! norm's output in the storage dtype and quantizing that (the unfused path), so the two may
//! differ by an e4m3 step where the storage rounding moved a value across a rounding boundary.
//!
//! Invariant: `|y / s| ≤ 448` (127) up to the rounding of the division, and the cast
//! saturates, so no byte is NaN or out of range; a row of zeros (or a zero weight) gives zeros
//! and scale 1.

use kiln_fusion_macros::fused;

/// `y = rms_norm(x) * w` as `(q, s)`: e4m3 bytes and the row's scale.
#[fused]
pub fn rms_norm_quant_e4m3(x: Row, w: Bcast, #[comptime] eps: f32) -> (Row<e4m3>, PerRow<f32>) {
    let inv = rsqrt(mean(x * x) + eps);
    let y = x * inv * w;
    let amax = max(abs(y));
    let s = select(amax > 0.0, amax / 448.0, 1.0);
    (y / s, s)
}

/// `h = x + residual`, then `rms_norm_quant_e4m3(h)`: the next residual `h` and `(q, s)`.
#[fused]
pub fn add_rms_norm_quant_e4m3(x: Row, residual: Row, w: Bcast, #[comptime] eps: f32) -> (Row, Row<e4m3>, PerRow<f32>) {
    let h = x + residual;
    let inv = rsqrt(mean(h * h) + eps);
    let y = h * inv * w;
    let amax = max(abs(y));
    let s = select(amax > 0.0, amax / 448.0, 1.0);
    (h, y / s, s)
}

/// `y = rms_norm(x) * w` as `(q, s)`: int8 codes and the row's scale (INT8 W8A8).
#[fused]
pub fn rms_norm_quant_i8(x: Row, w: Bcast, #[comptime] eps: f32) -> (Row<i8>, PerRow<f32>) {
    let inv = rsqrt(mean(x * x) + eps);
    let y = x * inv * w;
    let amax = max(abs(y));
    let s = select(amax > 0.0, amax / 127.0, 1.0);
    (y / s, s)
}

/// `h = x + residual`, then `rms_norm_quant_i8(h)`: the next residual `h` and `(q, s)`.
#[fused]
pub fn add_rms_norm_quant_i8(x: Row, residual: Row, w: Bcast, #[comptime] eps: f32) -> (Row, Row<i8>, PerRow<f32>) {
    let h = x + residual;
    let inv = rsqrt(mean(h * h) + eps);
    let y = h * inv * w;
    let amax = max(abs(y));
    let s = select(amax > 0.0, amax / 127.0, 1.0);
    (h, y / s, s)
}

/// The normalised row and its scale, `(y, max|y| / top)` (1 for a zero row; `top` 448 for
/// e4m3, 127 for int8): what `q · s` must approximate to within one rounding of the code.
pub fn rms_norm_quant_ref(x: &[f64], w: &[f64], eps: f64, top: f64) -> (Vec<f64>, f64) {
    let y = super::norm::rms_norm_ref(x, w, eps);
    let amax = y.iter().fold(0f64, |a, v| a.max(v.abs()));
    let s = if amax > 0.0 { amax / top } else { 1.0 };
    (y, s)
}
