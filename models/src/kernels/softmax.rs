//! Row softmax, written in f32 whatever the input dtype (probabilities for sampling).
//!
//! The `*_ref` function is the obviously-correct definition (one row, f64).

use kiln_fusion_macros::fused;

/// `y = exp(x - max(x)) / sum(exp(x - max(x)))` over the row.
#[fused]
pub fn softmax(x: Row) -> Row<f32> {
    let y = softmax(x);
    y
}

pub fn softmax_ref(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}
