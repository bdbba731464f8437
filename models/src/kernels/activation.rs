//! Gated activations of MLP blocks: `silu_mul` (SwiGLU: Llama, Mistral, Qwen) and
//! `gelu_tanh_mul` (GeGLU with the tanh approximation: Gemma), and the non-gated `gelu` (erf
//! form: Falcon, GPT-NeoX). `gate` and `up` are the two
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

/// `y = 0.5 x (1 + erf(x / sqrt(2)))` (PyTorch's exact `GELU()`).
#[fused]
pub fn gelu(x: Row) -> Row {
    let y = 0.5 * x * (1.0 + erf(x * 0.7071067811865476));
    y
}

pub fn silu_mul_ref(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}

pub fn gelu_tanh_mul_ref(gate: &[f64], up: &[f64]) -> Vec<f64> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    gate.iter().zip(up).map(|(g, u)| 0.5 * g * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh()) * u).collect()
}

pub fn gelu_ref(x: &[f64]) -> Vec<f64> {
    x.iter().map(|x| 0.5 * x * (1.0 + libm_erf(x / std::f64::consts::SQRT_2))).collect()
}

/// erf to ~1e-15 (Abramowitz-Stegun would be 1e-7): the series for small |x|, the continued
/// fraction of erfc beyond.
fn libm_erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // erf(a) = 2/sqrt(pi) * sum (-1)^n a^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(-a^2)/sqrt(pi) * 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    };
    r.copysign(x)
}
