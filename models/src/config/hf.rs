//! `LlamaConfig` from a Hugging Face `config.json`.
//!
//! Invariant: only the fields listed in `HfConfig` are read (an architecture refuses the
//! features it does not implement from the raw JSON, see `crate::arch`); absent optional fields take HF's
//! defaults (`num_key_value_heads` = heads, `head_dim` = hidden / heads, `rope_theta` = 10000,
//! untied embeddings), absent required fields are `ConfigError::Missing` naming the field.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{derived_head_dim, invalid, ConfigError, LlamaConfig, RopeScaling, RopeScalingKind, HF_CLASSES};

/// HF config.json fields kiln reads; everything else in the file is ignored.
#[derive(Deserialize)]
struct HfConfig {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<Value>,
    /// transformers 5 writes `{"rope_theta": .., "rope_type": .., scaling fields}` here
    /// instead of `rope_theta` + `rope_scaling`.
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<EosIds>,
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EosIds {
    One(u32),
    Many(Vec<u32>),
}

/// HF's default when config.json omits `rope_theta`.
const HF_DEFAULT_ROPE_THETA: f32 = 10_000.0;

impl LlamaConfig {
    /// Reads an HF `config.json`.
    pub fn from_hf_config_file(path: &Path) -> Result<Self, ConfigError> {
        let source_name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|err| ConfigError::Io { source_name: source_name.clone(), err })?;
        Self::from_hf_json_str(&text, &source_name)
    }

    /// Parses HF `config.json` text; `source_name` names it in errors.
    pub fn from_hf_json_str(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let hf: HfConfig =
            serde_json::from_str(text).map_err(|err| ConfigError::Json { source_name: source_name.to_owned(), err })?;
        Self::from_hf(hf, source_name)
    }

    /// Parses an HF `config.json` already read as JSON.
    pub fn from_hf_value(json: &Value, source_name: &str) -> Result<Self, ConfigError> {
        let hf = HfConfig::deserialize(json)
            .map_err(|err| ConfigError::Json { source_name: source_name.to_owned(), err })?;
        Self::from_hf(hf, source_name)
    }

    fn from_hf(hf: HfConfig, source_name: &str) -> Result<Self, ConfigError> {
        let need = |v: Option<usize>, field: &str| {
            v.ok_or_else(|| ConfigError::Missing { source_name: source_name.to_owned(), field: field.to_owned() })
        };
        let hidden_size = need(hf.hidden_size, "hidden_size")?;
        let num_attention_heads = need(hf.num_attention_heads, "num_attention_heads")?;
        let max_position_embeddings = need(hf.max_position_embeddings, "max_position_embeddings")?;
        let architecture = match (hf.model_type, hf.architectures.first()) {
            (Some(t), _) => t,
            (None, Some(class)) => {
                HF_CLASSES.iter().find(|(_, c)| c == class).map(|(t, _)| t.to_string()).ok_or_else(|| {
                    ConfigError::Unsupported {
                        source_name: source_name.to_owned(),
                        what: format!("architecture '{class}' without a model_type"),
                    }
                })?
            }
            (None, None) => {
                return Err(ConfigError::Missing { source_name: source_name.to_owned(), field: "model_type".into() })
            }
        };
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: need(hf.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(hf.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: match hf.head_dim {
                Some(d) => d,
                None => derived_head_dim(hidden_size, num_attention_heads, source_name)?,
            },
            vocab_size: need(hf.vocab_size, "vocab_size")?,
            rms_norm_eps: hf.rms_norm_eps.ok_or_else(|| ConfigError::Missing {
                source_name: source_name.to_owned(),
                field: "rms_norm_eps".into(),
            })?,
            rope_theta: match (hf.rope_theta, hf.rope_parameters.as_ref().and_then(|p| p.get("rope_theta"))) {
                (Some(t), _) => t,
                (None, Some(t)) => {
                    t.as_f64().ok_or_else(|| invalid(source_name, "rope_parameters.rope_theta", "is not a number"))?
                        as f32
                }
                (None, None) => HF_DEFAULT_ROPE_THETA,
            },
            rope_scaling: hf_rope_scaling(
                hf.rope_scaling.as_ref().filter(|v| !v.is_null()).or(hf.rope_parameters.as_ref()),
                max_position_embeddings,
                source_name,
            )?,
            max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            bos_token_id: hf.bos_token_id,
            eos_token_ids: match hf.eos_token_id {
                None => vec![],
                Some(EosIds::One(id)) => vec![id],
                Some(EosIds::Many(ids)) => ids,
            },
            architecture,
        };
        cfg.validate(source_name)?;
        Ok(cfg)
    }
}

fn hf_rope_scaling(v: Option<&Value>, max_pos: usize, sn: &str) -> Result<Option<RopeScaling>, ConfigError> {
    let Some(obj) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    let Some(obj) = obj.as_object() else { return Err(invalid(sn, "rope_scaling", "is not an object")) };
    let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| -> Result<Option<f32>, ConfigError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(|f| Some(f as f32))
                .ok_or_else(|| invalid(sn, &format!("rope_scaling.{k}"), "is not a number")),
        }
    };
    let need = |k: &str| {
        num(k)?.ok_or_else(|| ConfigError::Missing { source_name: sn.to_owned(), field: format!("rope_scaling.{k}") })
    };
    match kind {
        "default" | "none" => Ok(None),
        "linear" => Ok(Some(RopeScaling {
            kind: RopeScalingKind::Linear,
            factor: need("factor")?,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: max_pos,
        })),
        "llama3" => {
            let orig = obj
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| ConfigError::Missing {
                    source_name: sn.to_owned(),
                    field: "rope_scaling.original_max_position_embeddings".into(),
                })?;
            Ok(Some(RopeScaling {
                kind: RopeScalingKind::Llama3,
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: orig,
            }))
        }
        other => {
            Err(ConfigError::Unsupported { source_name: sn.to_owned(), what: format!("rope_scaling type '{other}'") })
        }
    }
}
