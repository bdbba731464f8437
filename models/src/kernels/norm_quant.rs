//! RMSNorm fused with the per-token FP8 quantization of its output: the norm that feeds an
//! FP8 W8A8 projection writes the e4m3 activations and their scale in the same kernel (one read
//! of the row, no bf16 copy of the normalised row, no second quantization pass), as
//! TensorRT-LLM's hand-written fused norm-quantize kernels do — here generated from the IR.
//!
//! Quantization (the W8A8 path's, `kiln_runtime::device::quant::fp8_lt::quantize_row_e4m3`):
//! `s = max|y| / 448` over the row (1 for a zero row), `q = e4m3(y / s)`, nearest even,
//! saturating; `q · s` stands for `y`. `y` stays f32 here: one rounding fewer than writing the
//! norm's output in the storage dtype and quantizing that (the unfused path), so the two may
//! differ by an e4m3 step where the storage rounding moved a value across a rounding boundary.
//!
//! Invariant: `|y / s| ≤ 448` up to the rounding of the division, and the cast saturates, so
//! no byte is NaN or out of range; a row of zeros (or a zero weight) gives zeros and scale 1.

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

/// The normalised row and its scale, `(y, max|y| / 448)` (1 for a zero row): what `q · s`
/// must approximate to within an e4m3 rounding.
pub fn rms_norm_quant_ref(x: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, f64) {
    let y = super::norm::rms_norm_ref(x, w, eps);
    let amax = y.iter().fold(0f64, |a, v| a.max(v.abs()));
    let s = if amax > 0.0 { amax / 448.0 } else { 1.0 };
    (y, s)
}
