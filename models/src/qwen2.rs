//! Qwen2 / Qwen2.5: the Llama decoder with a bias on the q, k and v projections, and, in GGUF,
//! Q/K rows stored in HF order (llama.cpp's converter permutes them only for Llama).
//!
//! Refused (with the key named): sliding-window attention (`use_sliding_window: true`, or a
//! `layer_types` entry other than `full_attention`; the `sliding_window` size alone is
//! ignored, as HF does, since real Qwen2 configs set it with the window off), an MLP bias,
//! activations other than SiLU, and any RoPE scaling.

use crate::arch::{is_false, is_str, Built, Checkpoint, ConfigSource};
use crate::config::{ConfigError, LlamaConfig, RopeScalingKind};
use crate::decoder::{Decoder, DecoderSpec, Names};
use crate::llama::{load, GGUF_BLOCKS};
use crate::model::{ModelError, Runner};
use crate::weights::GgufNaming;
use kiln_runtime::DType;
use kiln_runtime::Device;

fn refuse_unsupported(src: &ConfigSource<'_>, cfg: &LlamaConfig) -> Result<(), ConfigError> {
    src.refuse_hf("use_sliding_window", "sliding-window attention", is_false)?;
    src.refuse_hf("layer_types", "sliding-window attention layers", |v| {
        v.as_array().is_some_and(|a| a.iter().all(|t| t.as_str() == Some("full_attention")))
    })?;
    src.refuse_hf("hidden_act", "an activation other than silu", is_str("silu"))?;
    src.refuse_hf("mlp_bias", "an MLP bias", is_false)?;
    src.refuse_gguf("attention.sliding_window", "sliding-window attention", |_| false)?;
    if cfg.rope_scaling.as_ref().is_some_and(|s| s.kind != RopeScalingKind::None) {
        return Err(ConfigError::Unsupported {
            source_name: src.source_name(),
            what: "'rope_scaling' for qwen2".into(),
        });
    }
    Ok(())
}

/// The registry's constructor for `qwen2`.
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let cfg = src.decoder().map_err(load)?;
    refuse_unsupported(&src, &cfg).map_err(|e| ModelError::Unsupported(e.to_string()))?;
    let weights = ckpt.weights(&GgufNaming::hf_order(&GGUF_BLOCKS)).map_err(load)?;
    let spec = DecoderSpec { qkv_bias: true, ..DecoderSpec::llama(cfg) };
    let model = Decoder::load(spec, &Names::LLAMA, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}
