//! Small elementwise kernels around GEMMs and dtype boundaries: `bias_add`, `residual_add`,
//! `cast_to_f32` (e.g. logits into f32 for sampling), `cast_from_f32`, `scale` (Gemma's
//! embedding × √hidden) and `softcap` (Gemma 2's final logits).
//!
//! The `*_ref` functions are the obviously-correct definitions (one row, f64).

use kiln_fusion_macros::fused;

/// `y = x + b`, `b` one bias vector for every row.
#[fused]
pub fn bias_add(x: Row, b: Bcast) -> Row {
    let y = x + b;
    y
}

/// `y = x + r`.
#[fused]
pub fn residual_add(x: Row, r: Row) -> Row {
    let y = x + r;
    y
}

/// `y = x` widened to f32 (exact).
#[fused]
pub fn cast_to_f32(x: Row) -> Row<f32> {
    let y = x;
    y
}

/// `y = x` rounded to the storage dtype (nearest-even).
#[fused]
pub fn cast_from_f32(x: Row<f32>) -> Row {
    let y = x;
    y
}

/// `y = x * s`.
#[fused]
pub fn scale(x: Row, #[comptime] s: f32) -> Row {
    let y = x * s;
    y
}

/// `y = cap * tanh(x / cap)`: values squashed into `(-cap, cap)`.
#[fused]
pub fn softcap(x: Row, #[comptime] cap: f32) -> Row {
    let y = cap * tanh(x / cap);
    y
}

pub fn bias_add_ref(x: &[f64], b: &[f64]) -> Vec<f64> {
    x.iter().zip(b).map(|(x, b)| x + b).collect()
}

pub fn residual_add_ref(x: &[f64], r: &[f64]) -> Vec<f64> {
    x.iter().zip(r).map(|(x, r)| x + r).collect()
}

pub fn cast_ref(x: &[f64]) -> Vec<f64> {
    x.to_vec()
}

pub fn scale_ref(x: &[f64], s: f64) -> Vec<f64> {
    x.iter().map(|x| x * s).collect()
}

pub fn softcap_ref(x: &[f64], cap: f64) -> Vec<f64> {
    x.iter().map(|x| cap * (x / cap).tanh()).collect()
}
