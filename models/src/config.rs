//! `LlamaConfig`: the hyper-parameters of a Llama-family model, read from an HF `config.json`
//! or from GGUF metadata, and written back as an HF `config.json`.
//!
//! Invariants of every `LlamaConfig` this module returns (checked by `validate`):
//! all sizes > 0; `num_attention_heads % num_key_value_heads == 0`; `head_dim` is even;
//! `rms_norm_eps` and `rope_theta` are finite and > 0; a `rope_scaling` has `factor > 0`.
//! HF's `rope_scaling: {"rope_type": "default"}` and GGUF's `rope.scaling.type = "none"` both
//! become `rope_scaling: None` (one spelling of "no scaling"); scaling kinds kiln does not
//! implement (yarn, dynamic, longrope, per-dimension `rope_freqs`) are errors, not ignored.
//!
//! Readers live in `config/hf.rs` (config.json) and `config/gguf.rs` (GGUF metadata).

use serde_json::{json, Value};

mod gguf;
mod hf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: cannot read: {err}")]
    Io { source_name: String, err: std::io::Error },
    #[error("{source_name}: invalid config JSON: {err}")]
    Json { source_name: String, err: serde_json::Error },
    #[error("{source_name}: missing required field '{field}'")]
    Missing { source_name: String, field: String },
    #[error("{source_name}: field '{field}': {reason}")]
    Invalid { source_name: String, field: String, reason: String },
    #[error("{source_name}: unsupported: {what}")]
    Unsupported { source_name: String, what: String },
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeScalingKind {
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, smooth in between.
    Llama3,
    /// Positions divided by `factor`.
    Linear,
    /// Identity; parsers normalise it to `rope_scaling: None`, it exists for callers that
    /// build configs by hand.
    None,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeScaling {
    pub kind: RopeScalingKind,
    pub factor: f32,
    /// Llama3 only (1.0 otherwise).
    pub low_freq_factor: f32,
    /// Llama3 only (4.0 otherwise).
    pub high_freq_factor: f32,
    /// Llama3: the pre-training context; other kinds: `max_position_embeddings`.
    pub original_max_position_embeddings: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Every id that ends generation (HF `eos_token_id` as a list; GGUF eos + eot + eom).
    pub eos_token_ids: Vec<u32>,
    /// The HF `model_type` / GGUF `general.architecture`, e.g. `llama`.
    pub architecture: String,
}

/// HF `architectures` entries for the model types kiln writes configs for.
const HF_CLASSES: [(&str, &str); 3] =
    [("llama", "LlamaForCausalLM"), ("mistral", "MistralForCausalLM"), ("qwen2", "Qwen2ForCausalLM")];

impl LlamaConfig {
    /// Checks the invariants in the module header.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in sizes {
            if v == 0 {
                return Err(invalid(source_name, field, "must be > 0"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(invalid(
                source_name,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(invalid(source_name, "head_dim", format!("{} is odd; RoPE rotates pairs", self.head_dim)));
        }
        for (field, v) in [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(source_name, field, format!("{v} is not a positive number")));
            }
        }
        if let Some(s) = &self.rope_scaling {
            if !(s.factor.is_finite() && s.factor > 0.0) {
                return Err(invalid(
                    source_name,
                    "rope_scaling.factor",
                    format!("{} is not a positive number", s.factor),
                ));
            }
        }
        Ok(())
    }

    /// The HF `config.json` describing this model (weights stored as f32 by `convert`).
    pub fn to_hf_config_json(&self) -> Value {
        let mut v = json!({
            "model_type": self.architecture,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.as_ref().and_then(hf_rope_scaling_json),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": "float32",
        });
        if let Some((_, class)) = HF_CLASSES.iter().find(|(t, _)| *t == self.architecture) {
            v["architectures"] = json!([class]);
        }
        v
    }
}

/// The HF `model_type` of a model class name (`LlamaForCausalLM` -> `llama`).
pub fn model_type_of_class(class: &str) -> Option<&'static str> {
    HF_CLASSES.iter().find(|(_, c)| *c == class).map(|(t, _)| *t)
}

pub(crate) fn invalid(source_name: &str, field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { source_name: source_name.to_owned(), field: field.to_owned(), reason: reason.into() }
}

pub(crate) fn derived_head_dim(hidden: usize, heads: usize, source_name: &str) -> Result<usize, ConfigError> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(invalid(
            source_name,
            "head_dim",
            format!("absent, and hidden size {hidden} is not divisible by {heads} heads"),
        ));
    }
    Ok(hidden / heads)
}

fn hf_rope_scaling_json(s: &RopeScaling) -> Option<Value> {
    match s.kind {
        RopeScalingKind::None => None,
        RopeScalingKind::Linear => Some(json!({ "rope_type": "linear", "factor": s.factor })),
        RopeScalingKind::Llama3 => Some(json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        })),
    }
}

#[cfg(test)]
mod tests;
