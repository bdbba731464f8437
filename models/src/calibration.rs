//! A calibration pass over a full-precision checkpoint directory, for the `kiln quantize`
//! methods that need activation statistics (`int8-sq`'s smoothing, `fp8`'s static activation
//! scales): the model loads dense in f32 on the CPU, every dense layer projection is observed
//! (`CausalLm::observe_projection_inputs`), and one prefill of kiln's calibration text
//! ([`CALIBRATION_TEXT`], at most 1,024 tokens; without a tokenizer, fixed ids) runs through
//! it. The result is, per projection named as Hugging Face's Llama layout names it, the
//! largest |x| of each input column.
//!
//! Which models: those whose tensors follow Llama's layout (`self_attn.{q,k,v,o}_proj`,
//! `mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm` with their usual
//! meaning) — Llama, Mistral, Qwen2, Qwen3; others are refused by name rather than calibrated
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

/// Architectures whose tensors follow Llama's layout (see the module header).
pub const LLAMA_LAYOUT: [&str; 4] = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

/// Per projection weight name (`model.layers.N.self_attn.q_proj.weight`, …), the largest |x| of
/// each input column over the calibration text.
pub type InputRanges = HashMap<String, Vec<f32>>;

/// The calibration pass over the checkpoint in `dir`, whose config names `architecture` (see
/// the module header); `method` names the caller in a refusal.
pub fn input_ranges(dir: &Path, architecture: &str, method: &str) -> Result<InputRanges, String> {
    if !LLAMA_LAYOUT.contains(&architecture) {
        return Err(format!(
            "{method} calibrates models with Llama's tensor layout ({}) only; this checkpoint is `{architecture}`",
            LLAMA_LAYOUT.join(", ")
        ));
    }
    let mut model = load_weights_only_with(dir, &Device::Cpu, DType::F32, WeightMode::Dense)
        .map_err(|e| format!("loading the model for calibration: {e}"))?;
    let observed = model.observe_projection_inputs().map_err(|e| e.to_string())?;
    let tokenizer = Tokenizer::from_hf_dir(dir).ok();
    let tokens = calibration_tokens(tokenizer.as_ref(), model.info().vocab_size).map_err(|e| e.to_string())?;
    calibration_prefill(model.as_ref(), &tokens).map_err(|e| format!("the calibration pass: {e}"))?;
    let mut out = InputRanges::new();
    for (l, layer) in observed.iter().enumerate() {
        let groups = [
            (Some(&layer.qkv), &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"][..]),
            (Some(&layer.o), &["self_attn.o_proj"][..]),
            (layer.mlp_in.as_ref(), &["mlp.gate_proj", "mlp.up_proj"][..]),
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
