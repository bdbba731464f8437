//! Gemma 2 and Gemma 3 (text): the Llama decoder with
//! - RMSNorm applied as `1 + w` (HF stores `w`; added at load. GGUF stores `1 + w` already);
//! - sandwich norms: the attention output and the MLP output are normed before each residual
//!   add (`post_attention_layernorm`, `post_feedforward_layernorm`), the MLP input by
//!   `pre_feedforward_layernorm`;
//! - a GeGLU MLP (tanh GELU), embeddings × √hidden (rounded to the storage dtype, as HF does);
//! - attention scaled by `query_pre_attn_scalar^-½`;
//! - local (sliding-window) and global layers: `layer_types`, else the config's pattern
//!   (Gemma 3: global every `sliding_window_pattern`-th layer, default 6; Gemma 2: alternating,
//!   local first); local layers with their own RoPE base (Gemma 3's `rope_local_base_freq`,
//!   10000), RoPE scaling on global layers only;
//! - Gemma 2: attention logit softcap and final logit softcap; Gemma 3: per-head q/k norms
//!   (and no attention softcap: HF ignores the key for Gemma 3, and so does kiln).
//!
//! GGUF keys beyond llama.cpp's (`attention.scale`, `attention.sliding_window_pattern`,
//! `rope.freq_base_swa`) are read when present; absent, llama.cpp's own defaults apply
//! (`1/√head_dim`, pattern 6 for Gemma 3 and 2 for Gemma 2, local base 10000).

use crate::arch::{Built, Checkpoint, ConfigSource};
use crate::config::{invalid, ConfigError, LlamaConfig, RopeScalingKind};
use crate::decoder::{Decoder, DecoderSpec, LayerSpec, MlpKind, Names, RopeSpec};
use crate::llama::{load, GGUF_PROJECTIONS, GGUF_QK_NORMS};
use crate::model::{ModelError, Runner};
use crate::weights::GgufNaming;
use kiln_runtime::DType;
use kiln_runtime::Device;
use serde_json::Value;

/// Gemma's four norms per block (llama.cpp's `ffn_norm` is the norm before the MLP).
const GGUF_NORMS: [(&str, &str); 4] = [
    ("attn_norm", "input_layernorm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

/// llama.cpp's per-block stems for Gemma 2 / 3.
const GGUF_BLOCKS: [&[(&str, &str)]; 3] = [&GGUF_PROJECTIONS, &GGUF_QK_NORMS, &GGUF_NORMS];

const NAMES: Names = Names { ffn_norm: "pre_feedforward_layernorm", ..Names::LLAMA };

/// Whether each layer is local (sliding-window).
fn local_layers(src: &ConfigSource<'_>, gemma3: bool, n: usize) -> Result<Vec<bool>, ConfigError> {
    let sn = src.source_name();
    if let Some(types) = src.hf("layer_types") {
        let types = types.as_array().ok_or_else(|| invalid(&sn, "layer_types", "is not a list"))?;
        if types.len() != n {
            return Err(invalid(&sn, "layer_types", format!("{} entries for {n} layers", types.len())));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(invalid(&sn, "layer_types", format!("unknown layer type {t}"))),
            })
            .collect();
    }
    if let Some(flags) = src.gguf("attention.sliding_window_pattern") {
        let a = flags.as_array().filter(|a| a.len() == n);
        let bools: Option<Vec<bool>> = a.and_then(|a| match a {
            crate::gguf::MetadataArray::Bool(v) => Some(v.clone()),
            _ => None,
        });
        return bools.ok_or_else(|| invalid(&sn, "attention.sliding_window_pattern", format!("is not {n} booleans")));
    }
    let pattern = match src.hf("sliding_window_pattern").or_else(|| src.hf("_sliding_window_pattern")) {
        Some(v) => v
            .as_u64()
            .filter(|&p| p > 0)
            .ok_or_else(|| invalid(&sn, "sliding_window_pattern", "is not a positive integer"))?
            as usize,
        None if gemma3 => 6,
        None => 2,
    };
    Ok((0..n).map(|i| (i + 1) % pattern != 0).collect())
}

/// RoPE of the global and of the local layers.
fn rope(src: &ConfigSource<'_>, cfg: &LlamaConfig, gemma3: bool) -> Result<(RopeSpec, RopeSpec), ConfigError> {
    let sn = src.source_name();
    let global = RopeSpec { theta: cfg.rope_theta, scaling: cfg.rope_scaling.clone(), table: None };
    if !gemma3 {
        return Ok((global.clone(), global));
    }
    // transformers 5: `rope_parameters` keyed by layer type.
    if let Some(Value::Object(by_type)) = src.hf("rope_parameters") {
        if by_type.contains_key("full_attention") || by_type.contains_key("sliding_attention") {
            let one = |t: &str| -> Result<RopeSpec, ConfigError> {
                let Some(p) = by_type.get(t) else {
                    return Ok(RopeSpec { theta: 10_000.0, scaling: None, table: None });
                };
                let theta = p.get("rope_theta").and_then(Value::as_f64).unwrap_or(10_000.0) as f32;
                let mut scaling = None;
                match p.get("rope_type").and_then(Value::as_str).unwrap_or("default") {
                    "default" => {}
                    "linear" => {
                        let factor = p.get("factor").and_then(Value::as_f64).ok_or_else(|| {
                            invalid(&sn, &format!("rope_parameters.{t}.factor"), "is missing or not a number")
                        })? as f32;
                        scaling = Some(crate::config::RopeScaling {
                            kind: RopeScalingKind::Linear,
                            factor,
                            low_freq_factor: 1.0,
                            high_freq_factor: 4.0,
                            original_max_position_embeddings: cfg.max_position_embeddings,
                        });
                    }
                    other => {
                        return Err(ConfigError::Unsupported {
                            source_name: sn.clone(),
                            what: format!("'rope_parameters.{t}.rope_type': {other}"),
                        })
                    }
                }
                Ok(RopeSpec { theta, scaling, table: None })
            };
            return Ok((one("full_attention")?, one("sliding_attention")?));
        }
    }
    let local = src.number("rope_local_base_freq", "rope.freq_base_swa")?.unwrap_or(10_000.0) as f32;
    Ok((global, RopeSpec { theta: local, scaling: None, table: None }))
}

/// The registry's constructor for `gemma2`, `gemma3` and `gemma3_text`.
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let unsupported = |e: ConfigError| ModelError::Unsupported(e.to_string());
    let arch = src.architecture().map_err(load)?;
    let gemma3 = arch != "gemma2";
    let cfg = src.decoder().map_err(load)?;
    let act = |v: &Value| matches!(v.as_str(), Some("gelu_pytorch_tanh" | "gelu_tanh"));
    src.refuse_hf("hidden_activation", "an activation other than tanh GELU", act).map_err(unsupported)?;
    src.refuse_hf("attention_bias", "a q/k/v/o bias", crate::arch::is_false).map_err(unsupported)?;
    src.refuse_hf("use_bidirectional_attention", "bidirectional attention", crate::arch::is_false)
        .map_err(unsupported)?;
    if cfg.rope_scaling.as_ref().is_some_and(|s| s.kind == RopeScalingKind::Llama3) {
        return Err(unsupported(ConfigError::Unsupported {
            source_name: src.source_name(),
            what: "'rope_scaling': llama3 for gemma".into(),
        }));
    }
    let n = cfg.num_hidden_layers;
    let local = local_layers(&src, gemma3, n).map_err(load)?;
    let window = src.sliding_window().map_err(load)?;
    let (global_rope, local_rope) = rope(&src, &cfg, gemma3).map_err(unsupported)?;
    let scale = match src.number("query_pre_attn_scalar", "attention.scale").map_err(load)? {
        Some(q) if src.hf("query_pre_attn_scalar").is_some() => 1.0 / (q as f32).sqrt(),
        Some(s) => s as f32,
        None => 1.0 / (cfg.head_dim as f32).sqrt(),
    };
    let softcap = |hf: &str, gguf: &str| -> Result<Option<f32>, ModelError> {
        Ok(src.number(hf, gguf).map_err(load)?.map(|c| c as f32).filter(|&c| c > 0.0))
    };
    let attn_softcap = if gemma3 { None } else { softcap("attn_logit_softcapping", "attn_logit_softcapping")? };
    let final_softcap = softcap("final_logit_softcapping", "final_logit_softcapping")?;
    let layers = local
        .iter()
        .map(|&is_local| match (is_local, window) {
            (true, Some(w)) => Ok(LayerSpec { window: Some(w), rope: local_rope.clone(), moe: false }),
            (true, None) => {
                Err(ModelError::Load(format!("{}: local layers without a sliding_window", src.source_name())))
            }
            (false, _) => Ok(LayerSpec { window: None, rope: global_rope.clone(), moe: false }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // HF multiplies by √hidden cast to the activations' dtype.
    let sqrt_hidden = (cfg.hidden_size as f32).sqrt();
    let embed_scale = match dtype {
        DType::BF16 => half::bf16::from_f32(sqrt_hidden).to_f32(),
        DType::F16 => half::f16::from_f32(sqrt_hidden).to_f32(),
        _ => sqrt_hidden,
    };
    let weights = ckpt.weights(&GgufNaming::hf_order(&GGUF_BLOCKS)).map_err(load)?;
    let spec = DecoderSpec {
        norm_plus_one: ckpt.gguf().is_none(),
        qk_norm: gemma3,
        sandwich_norms: true,
        mlp: MlpKind::GatedGeluTanh,
        embed_scale: Some(embed_scale),
        attn_scale: scale,
        attn_softcap,
        final_softcap,
        layers,
        ..DecoderSpec::llama(cfg)
    };
    let model = Decoder::load(spec, &NAMES, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}
