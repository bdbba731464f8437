//! Normalisations: `rms_norm`, `add_rms_norm` (residual add fused with the norm of the sum),
//! `layer_norm` and `add2_layer_norm` (parallel-residual blocks). Each is one row kernel with
//! one read of the row: the reduction splits it into two stages and the row stays in registers
//! between them. The per-head q/k norm runs inside `qk_norm_rope` (with RoPE and the KV write);
//! its reference, `head_rms_norm_ref`, is here with the others.
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

/// `h = a + b + residual; y = layer_norm(h) * w + bias`: the block end of a parallel-residual
/// model (Falcon, GPT-NeoX: `x + attn(ln(x)) + mlp(ln(x))`) fused with the next block's norm.
#[fused]
pub fn add2_layer_norm(a: Row, b: Row, residual: Row, w: Bcast, bias: Bcast, #[comptime] eps: f32) -> (Row, Row) {
    let h = a + b + residual;
    let mu = mean(h);
    let d = h - mu;
    let inv = rsqrt(mean(d * d) + eps);
    let y = d * inv * w + bias;
    (h, y)
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

/// Returns `(h, y)`.
pub fn add2_layer_norm_ref(
    a: &[f64],
    b: &[f64],
    residual: &[f64],
    w: &[f64],
    bias: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let h: Vec<f64> = a.iter().zip(b).zip(residual).map(|((a, b), r)| a + b + r).collect();
    let y = layer_norm_ref(&h, w, bias, eps);
    (h, y)
}

/// Per-head RMSNorm of q and k: `kind` 0 a query head (normed with `wq`), 1 a key head (`wk`),
/// 2 a value head (unchanged).
pub fn head_rms_norm_ref(x: &[f64], wq: &[f64], wk: &[f64], kind: i32, eps: f64) -> Vec<f64> {
    match kind {
        0 => rms_norm_ref(x, wq, eps),
        1 => rms_norm_ref(x, wk, eps),
        _ => x.to_vec(),
    }
}

pub fn layer_norm_ref(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mu = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    x.iter().zip(w).zip(b).map(|((v, w), b)| (v - mu) * inv * w + b).collect()
}
