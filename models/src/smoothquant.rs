//! SmoothQuant's smoothing (Xiao et al., 2023) for `kiln quantize --method int8-sq`: before
//! INT8 weights and per-token INT8 activations, move the activations' outlier channels into
//! the weights. For a norm `n` feeding projections `W₁ … Wₖ` (a layer's q, k, v after its
//! attention norm; gate and up after its MLP norm), each input channel `j` gets
//!
//! `s_j = max|X_j|^α / max_i |W_ij|^(1−α)` (over the stacked `W₁ … Wₖ`),
//!
//! and `n_j ← n_j / s_j`, `W_ij ← W_ij · s_j`: the same function in exact arithmetic (the norm's
//! output column is divided by what the weights' column is multiplied by), with activations
//! whose channels span a narrower range. `max|X_j|` comes from a calibration pass
//! ([`crate::calibration`]). α = 0.5 is the paper's default.
//!
//! The MLP's last projection is smoothed the same way against `up_proj` (LLM Compressor's third
//! Llama mapping): its input is `silu(gate) ⊙ up`, linear in each row of `up_proj`, so dividing
//! `up_proj`'s row `j` by `s_j` divides input channel `j` of `down_proj`, whose column `j` is
//! multiplied by `s_j`. (Its factors come from the same pass, which saw the unsmoothed `up`.)
//!
//! Which models: the norm → projection pairs of [`crate::calibration::LAYOUTS`]: Llama's
//! (`input_layernorm` → `self_attn.{q,k,v}_proj`, `post_attention_layernorm` →
//! `mlp.{gate,up}_proj`), shared by Mistral, Qwen2 and Qwen3, and Gemma 2 / 3's (the MLP's
//! `pre_feedforward_layernorm`; a norm scales by `1 + w`, so `w ← (1 + w) / s − 1`; GeGLU's
//! `gelu(gate) ⊙ up` is linear in `up`'s rows as SwiGLU's is), and Phi-3's fused `qkv_proj` /
//! `gate_up_proj` (one tensor per mapping; `up` is the second half of `gate_up_proj`'s rows,
//! whose gate half keeps divisor 1). Other architectures (parallel branches, MoE) are refused
//! by name rather than smoothed wrongly.
//!
//! Invariants: a factor is positive and finite (a channel with no activation or no weight keeps
//! 1); smoothing never changes a tensor's shape or dtype; the weights are smoothed in f32 before
//! they are quantized, the norm is rounded once to its stored dtype.

use crate::calibration::{input_ranges, norm_layout};
use std::collections::HashMap;
use std::path::Path;

/// The factors of a checkpoint: a projection's weight columns are multiplied by
/// [`Smoothing::weight`], a norm's weight divided by [`Smoothing::norm`] (the same vector), and
/// `up_proj`'s rows divided by [`Smoothing::rows`] (`down_proj`'s column factors).
#[derive(Debug, Default)]
pub struct Smoothing {
    /// Projection name (`model.layers.N.self_attn.q_proj.weight`, …) → its column factors.
    columns: HashMap<String, Vec<f32>>,
    /// Norm name (`model.layers.N.input_layernorm.weight`) → its divisors.
    norms: HashMap<String, Vec<f32>>,
    /// `model.layers.N.mlp.up_proj.weight` → the divisor of each of its rows.
    rows: HashMap<String, Vec<f32>>,
    /// What a norm's stored weight is offset by before it multiplies (Gemma's `1 + w`).
    norm_offset: f32,
}

impl Smoothing {
    /// The factors a projection's columns are multiplied by, if it is smoothed.
    pub fn weight(&self, name: &str) -> Option<&[f32]> {
        self.columns.get(name).map(Vec::as_slice)
    }
    /// The factors a norm's weight is divided by, if it is smoothed.
    pub fn norm(&self, name: &str) -> Option<&[f32]> {
        self.norms.get(name).map(Vec::as_slice)
    }
    /// A norm's stored weight `w` divided by its factors `s` ([`Smoothing::norm`]): `(w + o) /
    /// s − o` with the architecture's offset `o` (0, or Gemma's 1), so the norm multiplies by
    /// `(w + o) / s`.
    pub fn divide_norm(&self, w: &[f32], s: &[f32]) -> Vec<f32> {
        let o = self.norm_offset;
        w.iter().zip(s).map(|(w, s)| (w + o) / s - o).collect()
    }
    /// The divisors of a projection's rows, if they are smoothed (`up_proj`).
    pub fn rows(&self, name: &str) -> Option<&[f32]> {
        self.rows.get(name).map(Vec::as_slice)
    }
}

/// `s_j = a_j^α / w_j^(1−α)`, 1 where either maximum is zero (or the result is not finite),
/// at least 1e-5 (as the reference implementation clamps).
pub fn factors(act_max: &[f32], weight_max: &[f32], alpha: f32) -> Vec<f32> {
    act_max
        .iter()
        .zip(weight_max)
        .map(|(&a, &w)| {
            if a <= 0.0 || w <= 0.0 {
                return 1.0;
            }
            let s = (a.powf(alpha) / w.powf(1.0 - alpha)).max(1e-5);
            if s.is_finite() {
                s
            } else {
                1.0
            }
        })
        .collect()
}

/// Per column, the largest |w| over `[rows, cols]` matrices stacked along rows.
pub fn column_max(matrices: &[(&[f32], usize)]) -> Vec<f32> {
    let cols = matrices.first().map_or(0, |m| m.1);
    let mut m = vec![0f32; cols];
    for (w, c) in matrices {
        for row in w.chunks_exact((*c).max(1)) {
            for (a, &x) in m.iter_mut().zip(row) {
                *a = a.max(x.abs());
            }
        }
    }
    m
}

/// The smoothing of the checkpoint in `dir` (`architecture` from its config), calibrated on
/// the CPU ([`crate::calibration`]); `weights(name)` reads a projection's `[rows, cols]` f32
/// values.
pub fn calibrate(
    dir: &Path,
    architecture: &str,
    alpha: f32,
    mut weights: impl FnMut(&str) -> Result<(Vec<f32>, usize), String>,
) -> Result<Smoothing, String> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(format!("SmoothQuant's alpha must be within 0..1, not {alpha}"));
    }
    let layout = norm_layout(architecture, "int8-sq")?;
    let ranges = input_ranges(dir, layout)?;
    let mut out = Smoothing { norm_offset: layout.norm_offset, ..Default::default() };
    // The projections a layer's two norms feed.
    let pairs = [(layout.attn_norm, layout.qkv), (layout.mlp_norm, layout.mlp_in)];
    for l in 0.. {
        let mut any = false;
        for (norm, projections) in pairs {
            let names: Vec<String> = projections.iter().map(|p| format!("model.layers.{l}.{p}.weight")).collect();
            let Some(act) = ranges.get(&names[0]) else { continue };
            any = true;
            let ws = names.iter().map(|n| weights(n)).collect::<Result<Vec<_>, _>>()?;
            if let Some((n, (_, c))) = names.iter().zip(&ws).find(|(_, (_, c))| *c != act.len()) {
                return Err(format!("{n} has {c} inputs where its norm's output has {}", act.len()));
            }
            let wmax = column_max(&ws.iter().map(|(w, c)| (w.as_slice(), *c)).collect::<Vec<_>>());
            let s = factors(act, &wmax, alpha);
            for n in names {
                out.columns.insert(n, s.clone());
            }
            out.norms.insert(format!("model.layers.{l}.{norm}.weight"), s);
        }
        let down = format!("model.layers.{l}.mlp.down_proj.weight");
        let up = match layout.fused_up {
            true => format!("model.layers.{l}.{}.weight", layout.mlp_in[0]),
            false => format!("model.layers.{l}.mlp.up_proj.weight"),
        };
        if let Some(act) = ranges.get(&down) {
            let (w, c) = weights(&down)?;
            if c != act.len() {
                return Err(format!("{down} has {c} inputs where up_proj writes {}", act.len()));
            }
            let s = factors(act, &column_max(&[(&w, c)]), alpha);
            out.columns.insert(down, s.clone());
            // A fused gate_up's gate rows (its first half) are not divided.
            let rows = if layout.fused_up { vec![1.0; s.len()].into_iter().chain(s).collect() } else { s };
            out.rows.insert(up, rows);
        }
        if !any {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smoothed pair computes the same product: (x / s) · (W · s)ᵀ = x · Wᵀ.
    #[test]
    fn smoothing_keeps_the_product_and_narrows_the_activations() {
        let (rows, cols) = (3, 4);
        let x = [0.5f32, -40.0, 0.25, 1.0]; // channel 1 is an outlier
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1).collect();
        let act: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let s = factors(&act, &column_max(&[(&w, cols)]), 0.5);
        let xs: Vec<f32> = x.iter().zip(&s).map(|(v, s)| v / s).collect();
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            let want: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
            let got: f32 = row.iter().zip(&s).zip(&xs).map(|((a, s), b)| a * s * b).sum();
            assert!((want - got).abs() < 1e-4, "row {r}: {got} against {want}");
        }
        let spread = |v: &[f32]| {
            let a: Vec<f32> = v.iter().map(|x| x.abs()).collect();
            a.iter().cloned().fold(0f32, f32::max) / a.iter().cloned().fold(f32::MAX, f32::min)
        };
        assert!(spread(&xs) < spread(&x) / 4.0, "{xs:?} against {x:?}");
        // No channel of zero activation or zero weight moves; 4^0.5 / 9^0.5 = 2/3.
        assert_eq!(factors(&[0.0, 2.0], &[1.0, 0.0], 0.5), vec![1.0, 1.0]);
        assert_eq!(factors(&[4.0], &[9.0], 0.5), vec![2.0 / 3.0]);
    }
}
