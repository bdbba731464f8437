//! Gated activations of MLP blocks: `silu_mul` (SwiGLU: Llama, Mistral, Qwen) and
//! `gelu_tanh_mul` (GeGLU with the tanh approximation: Gemma). `gate` and `up` are the two
//! halves of the up-projection; the result feeds the down-projection.
//!
//! The `*_ref` functions are the obviously-correct definitions (one row, f64).

use kiln_fusion_macros::fused;

/// `y = silu(gate) * up`, `silu(g) = g * sigmoid(g)`.
#[fused]
pub fn silu_mul(gate: Row, up: Row) -> Row {
    let y = gate * sigmoid(gate) * up;
    y
}

/// `y = gelu_tanh(gate) * up`, `gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/π) (g + 0.044715 g³)))`.
/// Written with the identity `0.5 (1 + tanh(u)) = sigmoid(2u)`: the same function, but
/// `1 + tanh(u)` cancels in f32 for negative `g` (relative error ~1 below g ≈ -5), the sigmoid
/// does not.
#[fused]
pub fn gelu_tanh_mul(gate: Row, up: Row) -> Row {
    let u2 = 1.5957691216057308 * (gate + 0.044715 * gate * gate * gate);
    let y = gate * sigmoid(u2) * up;
    y
}

pub fn silu_mul_ref(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}

pub fn gelu_tanh_mul_ref(gate: &[f64], up: &[f64]) -> Vec<f64> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    gate.iter().zip(up).map(|(g, u)| 0.5 * g * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh()) * u).collect()
}
