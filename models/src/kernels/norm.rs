//! Normalisations: `rms_norm`, `add_rms_norm` (residual add fused with the norm of the sum),
//! `layer_norm`. Each is one row kernel with one read of the row: the reduction splits it into
//! two stages and the row stays in registers between them.
//!
//! The `*_ref` functions are the obviously-correct definitions (one row, f64) the kernels are
//! tested against.

use kiln_fusion_macros::fused;

/// `y = x / sqrt(mean(x²) + eps) * w` (Llama, Mistral, Qwen).
#[fused]
pub fn rms_norm(x: Row, w: Bcast, #[comptime] eps: f32) -> Row {
    let inv = rsqrt(mean(x * x) + eps);
    let y = x * inv * w;
    y
}

/// `h = x + residual; y = rms_norm(h) * w`: the pre-norm of the next block, fused with the
/// residual add of the previous one. Both are written; `h` is the next residual.
#[fused]
pub fn add_rms_norm(x: Row, residual: Row, w: Bcast, #[comptime] eps: f32) -> (Row, Row) {
    let h = x + residual;
    let inv = rsqrt(mean(h * h) + eps);
    let y = h * inv * w;
    (h, y)
}

/// `y = (x - mean(x)) / sqrt(var(x) + eps) * w + b`, biased variance (as in PyTorch).
#[fused]
pub fn layer_norm(x: Row, w: Bcast, b: Bcast, #[comptime] eps: f32) -> Row {
    let mu = mean(x);
    let d = x - mu;
    let inv = rsqrt(mean(d * d) + eps);
    let y = d * inv * w + b;
    y
}

pub fn rms_norm_ref(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
}

/// Returns `(h, y)`.
pub fn add_rms_norm_ref(x: &[f64], residual: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let h: Vec<f64> = x.iter().zip(residual).map(|(a, b)| a + b).collect();
    let y = rms_norm_ref(&h, w, eps);
    (h, y)
}

pub fn layer_norm_ref(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mu = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    x.iter().zip(w).zip(b).map(|((v, w), b)| (v - mu) * inv * w + b).collect()
}
