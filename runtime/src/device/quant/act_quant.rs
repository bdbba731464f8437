//! How the CPU's W8A8 twin (`Weight::W8a8Cpu`) quantizes a product's activations before
//! multiplying: e4m3 as FP8 W8A8 does it on the GPU (`fp8_lt`), or int8 per token as INT8
//! W8A8 engines do it for SmoothQuant / `int-quantized` checkpoints (a scale per row
//! `s = max|x| / 127`, `q = round(x / s)` ties to even, clamped to ±127; vLLM's dynamic
//! per-token form). The twin then multiplies the values the codes stand for (`q · s`) by the
//! dequantized weight: the integer-domain product, up to f32 summation.
//!
//! Invariant: a zero row keeps scale 1 and stays zero; no code is outside its type's range.

use crate::device::quant::fp8_lt::ActScale;
use crate::device::quant::w8::{W8Elem, W8Matrix};
use crate::DType;

/// The activations' quantization of a W8A8 product on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuant {
    /// e4m3, per row or per 128 inputs ([`ActScale`]).
    E4m3(ActScale),
    /// int8, symmetric, one scale per row.
    Int8Row,
}

impl ActQuant {
    /// `x`'s row replaced by the values its codes stand for.
    pub fn fake_quantize(self, x: &mut [f32]) {
        match self {
            ActQuant::E4m3(a) => a.fake_quantize(x),
            ActQuant::Int8Row => {
                let (s, codes) = quantize_row_int8(x);
                x.iter_mut().zip(codes).for_each(|(v, q)| *v = q * s);
            }
        }
    }

    /// The code type of activations quantized per row with one scale a row (what a norm may
    /// write for such a product): e4m3 or int8; `None` for e4m3 per 128 inputs.
    pub fn row_codes(self) -> Option<DType> {
        match self {
            ActQuant::E4m3(ActScale::Row) => Some(DType::F8E4M3),
            ActQuant::Int8Row => Some(DType::I8),
            ActQuant::E4m3(ActScale::Group) => None,
        }
    }
}

/// Row `x` quantized to int8 as [`ActQuant::Int8Row`] does it: its scale `max|x| / 127` (1 for
/// a zero row) and its codes `round(x / s)` (ties to even, ±127), as f32.
pub fn quantize_row_int8(x: &[f32]) -> (f32, Vec<f32>) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
    (s, x.iter().map(|v| (v / s).round_ties_even().clamp(-127.0, 127.0)).collect())
}

/// Whether weights stacked from `parts` take INT8 W8A8 with per-token activations: every part
/// INT8 with a scale per output channel or tensor (one scale over all of a row's inputs).
pub fn int8_w8a8_form(parts: &[W8Matrix]) -> bool {
    !parts.is_empty() && parts.iter().all(|w| w.elem() == W8Elem::Int8 && w.block()[1] >= w.cols())
}

/// How weights stacked from `parts` quantize their activations as W8A8 — FP8 as
/// [`fp8_lt::w8a8_form`](crate::device::quant::fp8_lt::w8a8_form) says, else INT8 per row
/// ([`int8_w8a8_form`]) — the one verdict the CPU twin and the GPU upload share. `None`: the
/// parts multiply as W8A16.
pub fn w8a8_act(parts: &[W8Matrix]) -> Option<ActQuant> {
    match crate::device::quant::fp8_lt::w8a8_form(parts) {
        Some(a) => Some(ActQuant::E4m3(a)),
        None => int8_w8a8_form(parts).then_some(ActQuant::Int8Row),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_rows_take_their_own_scale_and_round_to_even() {
        // max 12.7 → s = 0.1: 1.25 / 0.1 = 12.5 → 12 (even), -12.7 → -127, 0.35 → 3.5 → 4.
        let mut x = [1.25f32, -12.7, 0.35, 0.0];
        ActQuant::Int8Row.fake_quantize(&mut x);
        let s = 12.7f32 / 127.0;
        let want = [12.0 * s, -127.0 * s, 4.0 * s, 0.0];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{x:?} against {want:?}");
        }
        let mut zero = [0f32; 3];
        ActQuant::Int8Row.fake_quantize(&mut zero);
        assert_eq!(zero, [0.0; 3]);
        // Per channel or tensor INT8 takes it; FP8 and groups of inputs do not.
        let m = |elem, block| W8Matrix::new((2, 4), elem, vec![1; 8], vec![1.0; 8 / block], [1, block]).unwrap();
        assert!(int8_w8a8_form(&[m(W8Elem::Int8, 4), m(W8Elem::Int8, 4)]));
        assert!(!int8_w8a8_form(&[m(W8Elem::Int8, 2)]));
        assert!(!int8_w8a8_form(&[m(W8Elem::Fp8E4M3, 4)]));
    }
}
