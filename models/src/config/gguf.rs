//! `LlamaConfig` from GGUF metadata (`general.architecture`, `{arch}.*`, `tokenizer.ggml.*`).
//!
//! Invariant: keys are read with widening accessors (a converter may write u32 or i32), absent
//! optional keys take llama.cpp's defaults (`head_count_kv` = heads, `rope.freq_base` = 10000,
//! `vocab_size` = token list length, else the embedding's rows), and embeddings are tied exactly when `output.weight` is
//! absent, as llama.cpp decides.

use crate::gguf::{GgufFile, MetadataValue};

use super::{derived_head_dim, invalid, ConfigError, LlamaConfig, RopeScaling, RopeScalingKind};

/// llama.cpp's default when a GGUF omits `rope.freq_base`.
const GGUF_DEFAULT_ROPE_THETA: f32 = 10_000.0;

impl LlamaConfig {
    /// Reads the config from GGUF metadata (`general.architecture`, `{arch}.*`, `tokenizer.ggml.*`).
    /// A partial rotary (`rope.dimension_count` < head_dim) is refused.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ConfigError> {
        Self::from_gguf_with(file, false)
    }

    /// [`LlamaConfig::from_gguf`] for an architecture that reads `rope.dimension_count` itself
    /// and implements a partial rotary (Phi-3).
    pub fn from_gguf_partial_rotary(file: &GgufFile) -> Result<Self, ConfigError> {
        Self::from_gguf_with(file, true)
    }

    fn from_gguf_with(file: &GgufFile, partial_rotary: bool) -> Result<Self, ConfigError> {
        let source_name = file.path().display().to_string();
        let sn = source_name.as_str();
        let arch = match file.get("general.architecture") {
            Some(MetadataValue::String(s)) => s.clone(),
            Some(_) => return Err(invalid(sn, "general.architecture", "is not a string")),
            None => {
                return Err(ConfigError::Missing {
                    source_name: source_name.clone(),
                    field: "general.architecture".into(),
                })
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let opt_usize = |k: &str| -> Result<Option<usize>, ConfigError> {
            match file.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| invalid(sn, k, format!("expected a non-negative integer, found {v:?}"))),
            }
        };
        let opt_f32 = |k: &str| -> Result<Option<f32>, ConfigError> {
            match file.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(|x| Some(x as f32))
                    .ok_or_else(|| invalid(sn, k, format!("expected a number, found {v:?}"))),
            }
        };
        let need_usize = |k: &str| {
            opt_usize(k)?.ok_or_else(|| ConfigError::Missing { source_name: sn.to_owned(), field: k.to_owned() })
        };

        let hidden_size = need_usize(&key("embedding_length"))?;
        let num_attention_heads = need_usize(&key("attention.head_count"))?;
        let head_dim = match opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None => derived_head_dim(hidden_size, num_attention_heads, sn)?,
        };
        if let Some(rot) = opt_usize(&key("rope.dimension_count"))? {
            if rot != head_dim && !(partial_rotary && rot < head_dim) {
                return Err(ConfigError::Unsupported {
                    source_name: sn.to_owned(),
                    what: format!("partial rotary embedding ({rot} of {head_dim} head dims)"),
                });
            }
        }
        let vocab_size = match opt_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => match file.get("tokenizer.ggml.tokens").and_then(MetadataValue::as_array) {
                Some(tokens) => tokens.len(),
                // No vocabulary in the file (a weights-only GGUF): the embedding's rows.
                None => match file.tensor_info("token_embd.weight").ok().and_then(|t| t.hf_shape().first().copied()) {
                    Some(rows) => rows,
                    None => return Err(ConfigError::Missing { source_name: sn.to_owned(), field: key("vocab_size") }),
                },
            },
        };
        let max_position_embeddings = need_usize(&key("context_length"))?;
        if file.has_tensor("rope_freqs.weight") {
            return Err(ConfigError::Unsupported {
                source_name: sn.to_owned(),
                what: "per-dimension RoPE frequencies (tensor rope_freqs.weight, Llama 3.1-style scaling)".into(),
            });
        }
        let rope_scaling = gguf_rope_scaling(file, &arch, max_position_embeddings)?;
        let token_id = |k: &str| -> Result<Option<u32>, ConfigError> {
            opt_usize(k)?.map(|v| u32::try_from(v).map_err(|_| invalid(sn, k, "does not fit in u32"))).transpose()
        };
        let mut eos_token_ids = Vec::new();
        for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = token_id(k)? {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: need_usize(&key("feed_forward_length"))?,
            num_hidden_layers: need_usize(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads: opt_usize(&key("attention.head_count_kv"))?.unwrap_or(num_attention_heads),
            head_dim,
            vocab_size,
            // The norm's epsilon: RMSNorm's key, or LayerNorm's for LayerNorm architectures.
            rms_norm_eps: match opt_f32(&key("attention.layer_norm_rms_epsilon"))? {
                Some(e) => e,
                None => opt_f32(&key("attention.layer_norm_epsilon"))?.ok_or_else(|| ConfigError::Missing {
                    source_name: sn.to_owned(),
                    field: key("attention.layer_norm_rms_epsilon"),
                })?,
            },
            rope_theta: opt_f32(&key("rope.freq_base"))?.unwrap_or(GGUF_DEFAULT_ROPE_THETA),
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: !file.has_tensor("output.weight"),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids,
            architecture: arch.clone(),
        };
        cfg.validate(sn)?;
        Ok(cfg)
    }
}

fn gguf_rope_scaling(file: &GgufFile, arch: &str, max_pos: usize) -> Result<Option<RopeScaling>, ConfigError> {
    let sn = file.path().display().to_string();
    let type_key = format!("{arch}.rope.scaling.type");
    let factor_key = format!("{arch}.rope.scaling.factor");
    // Older converters wrote only `rope.scale_linear`.
    let legacy_key = format!("{arch}.rope.scale_linear");
    let factor = |k: &str| {
        file.get(k).map(|v| v.as_f64().map(|f| f as f32).ok_or_else(|| invalid(&sn, k, "is not a number"))).transpose()
    };
    let kind = match file.get(&type_key) {
        None => None,
        Some(v) => Some(v.as_str().ok_or_else(|| invalid(&sn, &type_key, "is not a string"))?),
    };
    let linear = |f: f32| RopeScaling {
        kind: RopeScalingKind::Linear,
        factor: f,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: max_pos,
    };
    match kind {
        Some("none") => Ok(None),
        Some("linear") => {
            let f = factor(&factor_key)?
                .ok_or_else(|| ConfigError::Missing { source_name: sn.clone(), field: factor_key.clone() })?;
            Ok(Some(linear(f)))
        }
        Some(other) => {
            Err(ConfigError::Unsupported { source_name: sn.clone(), what: format!("{type_key} = '{other}'") })
        }
        None => Ok(factor(&legacy_key)?.filter(|&f| f != 1.0).map(linear)),
    }
}
