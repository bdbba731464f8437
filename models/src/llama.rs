//! The Llama architecture (Llama 2/3, SmolLM/SmolLM2, TinyLlama) and Mistral (with its sliding
//! window on every layer): the [`Decoder`] with everything beyond Llama off.

use crate::arch::{is_false, is_str, Built, Checkpoint, ConfigSource};
use crate::config::{ConfigError, LlamaConfig, RopeScalingKind};
use crate::decoder::{Decoder, DecoderSpec, Names};
use crate::model::{ModelError, Runner};
use crate::weights::GgufNaming;
use kiln_runtime::device::quant::w8::W8Elem;
use kiln_runtime::DType;
use kiln_runtime::Device;

/// llama.cpp's per-block projection stems and their HF counterparts under `model.layers.N.`
/// (`.weight` and `.bias` alike). Architectures of the Llama family share them.
pub const GGUF_PROJECTIONS: [(&str, &str); 7] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Llama's two norms per block.
pub const GGUF_NORMS: [(&str, &str); 2] = [("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")];

/// The per-block q/k norms (Qwen3, Gemma 3).
pub const GGUF_QK_NORMS: [(&str, &str); 2] = [("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm")];

/// Llama's per-block tensors.
pub const GGUF_BLOCKS: [&[(&str, &str)]; 2] = [&GGUF_PROJECTIONS, &GGUF_NORMS];

/// Llama's GGUF naming: llama.cpp's converter permutes Q/K rows for its RoPE layout.
pub fn gguf_naming(c: &LlamaConfig) -> GgufNaming {
    GgufNaming {
        permuted_qk: Some((c.num_attention_heads, c.num_key_value_heads)),
        ..GgufNaming::hf_order(&GGUF_BLOCKS)
    }
}

/// The features of a Llama config kiln does not implement, refused with the key named.
pub fn refuse_unsupported(src: &ConfigSource<'_>, cfg: &LlamaConfig) -> Result<(), ConfigError> {
    src.refuse_hf("attention_bias", "a q/k/v/o bias", is_false)?;
    src.refuse_hf("mlp_bias", "an MLP bias", is_false)?;
    src.refuse_hf("hidden_act", "an activation other than silu", is_str("silu"))?;
    if cfg.rope_scaling.as_ref().is_some_and(|s| s.kind == RopeScalingKind::Linear) {
        return Err(ConfigError::Unsupported { source_name: src.source_name(), what: "'rope_scaling': linear".into() });
    }
    Ok(())
}

/// The registry's constructor for `llama` and `mistral` (a GGUF `llama` with experts is a
/// Mixtral: handed to [`crate::mixtral::build`]).
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    if src.gguf("expert_count").and_then(|v| v.as_u64()).unwrap_or(0) > 0 {
        return crate::mixtral::build(ckpt, dev, dtype);
    }
    let cfg = src.decoder().map_err(load)?;
    refuse_unsupported(&src, &cfg).map_err(|e| ModelError::Unsupported(e.to_string()))?;
    let window = src.sliding_window().map_err(|e| ModelError::Unsupported(e.to_string()))?;
    let weights = ckpt.weights(&gguf_naming(&cfg)).map_err(load)?;
    let mut spec = DecoderSpec::llama(cfg);
    // A window at least the context long is no window.
    let window = window.filter(|&w| w < spec.cfg.max_position_embeddings);
    spec.layers.iter_mut().for_each(|l| l.window = window);
    let model = Decoder::load(spec, &Names::LLAMA, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}

/// A Llama of `cfg`'s shapes with seeded random weights made on `dev` (see
/// [`Decoder::random`]), ready to run.
pub fn random(cfg: LlamaConfig, dev: &Device, dtype: DType, seed: u64) -> Result<Runner<Decoder>, ModelError> {
    Ok(Runner::new(Decoder::random(DecoderSpec::llama(cfg), dev, dtype, seed)?))
}

/// [`random`] with every layer projection as random 4-bit weights in groups of `group`
/// (see [`Decoder::with_random_int4`]).
pub fn random_int4(
    cfg: LlamaConfig,
    dev: &Device,
    dtype: DType,
    seed: u64,
    group: usize,
) -> Result<Runner<Decoder>, ModelError> {
    Ok(Runner::new(Decoder::random(DecoderSpec::llama(cfg), dev, dtype, seed)?.with_random_int4(group, seed)?))
}

/// [`random`] with every layer projection as random 8-bit weights of `elem` (FP8 or INT8), a
/// scale per output channel, multiplied as W8A8 (see [`Decoder::with_random_w8`]).
pub fn random_w8(
    cfg: LlamaConfig,
    dev: &Device,
    dtype: DType,
    elem: W8Elem,
    seed: u64,
) -> Result<Runner<Decoder>, ModelError> {
    Ok(Runner::new(Decoder::random(DecoderSpec::llama(cfg), dev, dtype, seed)?.with_random_w8(elem, seed)?))
}

pub(crate) fn load(e: impl std::fmt::Display) -> ModelError {
    ModelError::Load(e.to_string())
}
