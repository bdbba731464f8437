//! A calibration pass over a full-precision checkpoint directory, for the `kiln quantize`
//! methods that need activation statistics (`int8-sq`'s smoothing, `fp8`'s static activation
//! scales): the model loads dense in f32 on the CPU, every dense layer projection is observed
//! (`CausalLm::observe_projection_inputs`), and one prefill of kiln's calibration text
//! ([`CALIBRATION_TEXT`], at most 1,024 tokens; without a tokenizer, fixed ids) runs through
//! it. The result is, per projection named as Hugging Face's Llama layout names it, the
//! largest |x| of each input column.
//!
//! Which models: those listed in [`LAYOUTS`], with the names of their norm-fed projections —
//! Llama, Mistral, Qwen2, Qwen3 (`self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`), Gemma
//! 2 / 3 (the same projections; sandwich norms: the MLP reads `pre_feedforward_layernorm`, and
//! every norm multiplies by `1 + w`) and Phi-3 / Phi-4-mini (fused `self_attn.qkv_proj` and
//! `mlp.gate_up_proj`, gate rows first); others are refused by name rather than calibrated
//! under the wrong names.
//!
//! [`CALIBRATION_TEXT`]: crate::kv_fp8::CALIBRATION_TEXT

use crate::arch::WeightMode;
use crate::kv_fp8::calibration_tokens;
use crate::loader::load_weights_only_with;
use crate::tokenizer::Tokenizer;
use kiln_runtime::model::kv_fp8::calibration_prefill;
use kiln_runtime::{DType, Device};
use std::collections::HashMap;
use std::path::Path;

/// Where an architecture's projections read their input (HF's names, under
/// `model.layers.N.`): the norm before the attention's input projections `qkv` and the one
/// before the MLP's `mlp_in`; what a norm's stored weight `w` multiplies by (`w +
/// norm_offset`: 0 for Llama's, 1 for Gemma's `1 + w`); whether `up` is the second half of
/// the rows of `mlp_in`'s one fused tensor (Phi-3) rather than `mlp.up_proj`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormLayout {
    pub attn_norm: &'static str,
    pub qkv: &'static [&'static str],
    pub mlp_norm: &'static str,
    pub mlp_in: &'static [&'static str],
    pub norm_offset: f32,
    pub fused_up: bool,
}

const QKV: &[&str] = &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"];
const GATE_UP: &[&str] = &["mlp.gate_proj", "mlp.up_proj"];
const LLAMA: NormLayout = NormLayout {
    attn_norm: "input_layernorm",
    qkv: QKV,
    mlp_norm: "post_attention_layernorm",
    mlp_in: GATE_UP,
    norm_offset: 0.0,
    fused_up: false,
};
const GEMMA: NormLayout = NormLayout { mlp_norm: "pre_feedforward_layernorm", norm_offset: 1.0, ..LLAMA };
const PHI3: NormLayout =
    NormLayout { qkv: &["self_attn.qkv_proj"], mlp_in: &["mlp.gate_up_proj"], fused_up: true, ..LLAMA };

/// The architectures the calibration pass reads, with their norms (see the module header).
pub const LAYOUTS: [(&str, NormLayout); 7] = [
    ("LlamaForCausalLM", LLAMA),
    ("MistralForCausalLM", LLAMA),
    ("Qwen2ForCausalLM", LLAMA),
    ("Qwen3ForCausalLM", LLAMA),
    ("Gemma2ForCausalLM", GEMMA),
    ("Gemma3ForCausalLM", GEMMA),
    ("Phi3ForCausalLM", PHI3),
];

/// The norm layout of `architecture`; the refusal names `method` and the architectures read.
pub fn norm_layout(architecture: &str, method: &str) -> Result<NormLayout, String> {
    LAYOUTS.iter().find(|(a, _)| *a == architecture).map(|(_, l)| *l).ok_or_else(|| {
        let known: Vec<&str> = LAYOUTS.iter().map(|(a, _)| *a).collect();
        format!("{method} calibrates {} only; this checkpoint is `{architecture}`", known.join(", "))
    })
}

/// Per projection weight name (`model.layers.N.self_attn.q_proj.weight`, …), the largest |x| of
/// each input column over the calibration text.
pub type InputRanges = HashMap<String, Vec<f32>>;

/// The calibration pass over the checkpoint in `dir`, whose projections are named as `layout`
/// says ([`norm_layout`] of its architecture).
pub fn input_ranges(dir: &Path, layout: NormLayout) -> Result<InputRanges, String> {
    let mut model = load_weights_only_with(dir, &Device::Cpu, DType::F32, WeightMode::Dense)
        .map_err(|e| format!("loading the model for calibration: {e}"))?;
    let observed = model.observe_projection_inputs().map_err(|e| e.to_string())?;
    let tokenizer = Tokenizer::from_hf_dir(dir).ok();
    let tokens = calibration_tokens(tokenizer.as_ref(), model.info().vocab_size).map_err(|e| e.to_string())?;
    calibration_prefill(model.as_ref(), &tokens).map_err(|e| format!("the calibration pass: {e}"))?;
    let mut out = InputRanges::new();
    for (l, layer) in observed.iter().enumerate() {
        let groups = [
            (Some(&layer.qkv), layout.qkv),
            (Some(&layer.o), &["self_attn.o_proj"][..]),
            (layer.mlp_in.as_ref(), layout.mlp_in),
            (layer.down.as_ref(), &["mlp.down_proj"][..]),
        ];
        for (stats, names) in groups {
            let Some(stats) = stats else { continue };
            let max = stats.max_abs();
            if max.iter().any(|v| !v.is_finite()) {
                return Err(format!("the calibration pass: layer {l}'s {} input is not finite", names[0]));
            }
            for n in names {
                out.insert(format!("model.layers.{l}.{n}.weight"), max.clone());
            }
        }
    }
    Ok(out)
}
