//! Qwen3: the Llama decoder with a per-head RMSNorm of q and k before RoPE (`q_norm`,
//! `k_norm`, each `[head_dim]`), and an explicit `head_dim` that need not be hidden / heads.
//! In GGUF, Q/K rows are stored in HF order (llama.cpp's converter permutes them only for
//! Llama) and the norms are `attn_q_norm` / `attn_k_norm`.
//!
//! Refused (with the key named): sliding-window attention (`use_sliding_window: true`, or a
//! `layer_types` entry other than `full_attention`), a q/k/v/o bias, activations other than
//! SiLU, and RoPE scaling other than Llama 3's (YaRN is not implemented).

use crate::arch::{is_false, is_str, Built, Checkpoint, ConfigSource};
use crate::config::{ConfigError, RopeScalingKind};
use crate::decoder::{Decoder, DecoderSpec, Names};
use crate::llama::{load, GGUF_NORMS, GGUF_PROJECTIONS, GGUF_QK_NORMS};
use crate::model::{ModelError, Runner};
use crate::weights::GgufNaming;
use kiln_runtime::DType;
use kiln_runtime::Device;

/// llama.cpp's per-block stems for Qwen3: Llama's plus the q/k norms.
pub const GGUF_BLOCKS: [&[(&str, &str)]; 3] = [&GGUF_PROJECTIONS, &GGUF_NORMS, &GGUF_QK_NORMS];

/// What Qwen3 (and the attention of Qwen3-MoE) does not implement, refused by name.
pub fn refuse_unsupported(src: &ConfigSource<'_>, rope: Option<RopeScalingKind>) -> Result<(), ConfigError> {
    src.refuse_hf("use_sliding_window", "sliding-window attention", is_false)?;
    src.refuse_hf("layer_types", "sliding-window attention layers", |v| {
        v.as_array().is_some_and(|a| a.iter().all(|t| t.as_str() == Some("full_attention")))
    })?;
    src.refuse_hf("attention_bias", "a q/k/v/o bias", is_false)?;
    src.refuse_hf("hidden_act", "an activation other than silu", is_str("silu"))?;
    src.refuse_gguf("attention.sliding_window", "sliding-window attention", |_| false)?;
    if rope == Some(RopeScalingKind::Linear) {
        return Err(ConfigError::Unsupported { source_name: src.source_name(), what: "'rope_scaling': linear".into() });
    }
    Ok(())
}

/// The registry's constructor for `qwen3`.
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let cfg = src.decoder().map_err(load)?;
    refuse_unsupported(&src, cfg.rope_scaling.as_ref().map(|s| s.kind))
        .map_err(|e| ModelError::Unsupported(e.to_string()))?;
    src.refuse_gguf("expert_count", "mixture of experts", |v| v.as_u64() == Some(0))
        .map_err(|e| ModelError::Unsupported(e.to_string()))?;
    let weights = ckpt.weights(&GgufNaming::hf_order(&GGUF_BLOCKS)).map_err(load)?;
    let spec = DecoderSpec { qk_norm: true, ..DecoderSpec::llama(cfg) };
    let model = Decoder::load(spec, &Names::LLAMA, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}
