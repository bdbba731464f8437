//! Phi-3 / Phi-3.5 / Phi-4-mini: the Llama decoder with
//! - one fused `qkv_proj` (`[q heads | k heads | v heads]` rows) and one fused `gate_up_proj`
//!   (`[gate | up]` rows);
//! - a partial rotary: only the first `head_dim * partial_rotary_factor` dims of each head turn
//!   (Phi-4-mini: 0.75), HF's `rotate_half` within them;
//! - LongRoPE (`rope_type` `longrope`, formerly `su`): per-pair `short_factor` / `long_factor`
//!   dividing the frequencies, and cos/sin multiplied by `attention_factor` (given, else
//!   `sqrt(1 + ln(max_pos / original) / ln(original))`, 1 when the ratio is <= 1);
//! - an optional sliding window (`sliding_window`, Phi-3-mini-4k).
//!
//! Partial rotary and LongRoPE are a [`RopeTable`] (frequencies as data; see
//! `decoder/rope_table.rs` for how the rows are rearranged at load).
//!
//! **Short or long factors.** HF picks `long_factor` for a whole forward pass once
//! `max(position) + 1 > original_max_position_embeddings`, and its `generate` drops the KV
//! cache and re-prefills when a sequence first crosses that length. kiln keeps every cached
//! key as it was rotated, so one sequence must use one factor set throughout, and batches mix
//! sequences: the factor set is chosen once per loaded model, from the context it serves.
//! - `short` (the default): short factors, and the served context (`max_model_len`) is
//!   `original_max_position_embeddings`: every sequence kiln accepts is one HF runs with the
//!   short factors, so kiln equals HF exactly.
//! - `long` (`KILN_LONGROPE=long`): long factors at every position and the full
//!   `max_position_embeddings` context. Differs from HF for sequences that stay within the
//!   original length (HF: short factors); equals HF for one-pass prefills beyond it.
//!
//! GGUF (llama.cpp's `phi3`): `attn_qkv`, fused `ffn_up` (`[gate | up]`), the factors as the
//! tensors `rope_factors_short` / `rope_factors_long`, `phi3.rope.dimension_count` (rotary dims),
//! `phi3.rope.scaling.original_context_length`, `phi3.rope.scaling.attn_factor`; a sliding
//! window of 0 means none. Q/K rows are in HF order (llama.cpp uses NEOX RoPE for phi3).
//!
//! Refused, by key: an activation other than SiLU, `rope_type`s other than `longrope`/`su`/
//! `default`, `short_mscale` / `long_mscale`, factor lists of the wrong length.

use crate::arch::{is_str, Built, Checkpoint, ConfigSource};
use crate::config::{invalid, ConfigError, LlamaConfig};
use crate::decoder::{Decoder, DecoderSpec, Names, RopeTable};
use crate::llama::load;
use crate::model::{ModelError, Runner};
use crate::weights::{GgufNaming, WeightSource};
use kiln_runtime::DType;
use kiln_runtime::Device;
use serde_json::Value;

const GGUF_BLOCKS: [(&str, &str); 6] = [
    ("attn_norm", "input_layernorm"),
    ("attn_qkv", "self_attn.qkv_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_up", "mlp.gate_up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The factor tensors have no HF counterpart; they keep their llama.cpp names.
const GGUF_GLOBALS: [(&str, &str); 5] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
    ("rope_factors_short", "rope_factors_short"),
    ("rope_factors_long", "rope_factors_long"),
];

const NAMES: Names = Names { qkv: Some("self_attn.qkv_proj"), gate_up: Some("mlp.gate_up_proj"), ..Names::LLAMA };

/// The environment variable choosing the LongRoPE factor set (see the module header).
pub const LONGROPE_ENV: &str = "KILN_LONGROPE";

/// LongRoPE as the config states it.
struct LongRope {
    short: Vec<f32>,
    long: Vec<f32>,
    original: usize,
    /// `attention_factor` when the config gives it.
    attn_factor: Option<f32>,
}

/// What Phi-3 reads beyond the shared decoder config.
struct Phi3Rope {
    rotary_dim: usize,
    longrope: Option<LongRope>,
}

fn unsupported(sn: &str, what: String) -> ConfigError {
    ConfigError::Unsupported { source_name: sn.to_owned(), what }
}

/// A list of `n` numbers at `key`.
fn factors(v: Option<&Value>, key: &str, n: usize, sn: &str) -> Result<Vec<f32>, ConfigError> {
    let a = v
        .and_then(Value::as_array)
        .ok_or_else(|| ConfigError::Missing { source_name: sn.to_owned(), field: key.to_owned() })?;
    let f: Option<Vec<f32>> = a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect();
    match f {
        Some(f) if f.len() == n => Ok(f),
        _ => Err(invalid(sn, key, format!("is not a list of {n} numbers (rotary dims / 2)"))),
    }
}

/// HF: the config as the shared reader takes it (RoPE scaling removed), and the RoPE
/// parameters (`rope_parameters`, transformers 5; else `rope_scaling` and the top-level keys).
fn hf_config(json: &Value, sn: &str) -> Result<(LlamaConfig, Phi3Rope), ConfigError> {
    let (params, params_key) = match json.get("rope_parameters").filter(|v| v.is_object()) {
        Some(p) => (p.clone(), "rope_parameters"),
        None => (json.get("rope_scaling").filter(|v| v.is_object()).cloned().unwrap_or(Value::Null), "rope_scaling"),
    };
    let get = |k: &str| params.get(k).filter(|v| !v.is_null()).or_else(|| json.get(k).filter(|v| !v.is_null()));
    let mut plain = json.clone();
    plain["rope_scaling"] = Value::Null;
    plain["rope_parameters"] = Value::Null;
    if let Some(t) = get("rope_theta") {
        plain["rope_theta"] = t.clone();
    }
    let cfg = LlamaConfig::from_hf_value(&plain, sn)?;
    let prf = match get("partial_rotary_factor") {
        None => 1.0,
        Some(v) => v
            .as_f64()
            .filter(|f| *f > 0.0 && *f <= 1.0)
            .ok_or_else(|| invalid(sn, "partial_rotary_factor", format!("{v} is not a number in (0, 1]")))?,
    };
    // HF: int(head_dim * partial_rotary_factor).
    let rotary_dim = (cfg.head_dim as f64 * prf) as usize;
    let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
    let longrope = match kind {
        "default" => None,
        "longrope" | "su" => {
            for k in ["short_mscale", "long_mscale"] {
                if params.get(k).is_some_and(|v| !v.is_null()) {
                    return Err(unsupported(sn, format!("'{params_key}.{k}' (per-list attention scales)")));
                }
            }
            let n = rotary_dim / 2;
            let original = get("original_max_position_embeddings").and_then(Value::as_u64).ok_or_else(|| {
                ConfigError::Missing { source_name: sn.to_owned(), field: "original_max_position_embeddings".into() }
            })? as usize;
            let attn_factor = match params.get("attention_factor").filter(|v| !v.is_null()) {
                None => None,
                Some(v) => Some(
                    v.as_f64()
                        .ok_or_else(|| invalid(sn, &format!("{params_key}.attention_factor"), "is not a number"))?
                        as f32,
                ),
            };
            Some(LongRope {
                short: factors(params.get("short_factor"), &format!("{params_key}.short_factor"), n, sn)?,
                long: factors(params.get("long_factor"), &format!("{params_key}.long_factor"), n, sn)?,
                original,
                attn_factor,
            })
        }
        other => return Err(unsupported(sn, format!("'{params_key}.rope_type': {other}"))),
    };
    Ok((cfg, Phi3Rope { rotary_dim, longrope }))
}

/// GGUF: rotary dims and the factor tensors.
fn gguf_rope(src: &ConfigSource<'_>, cfg: &LlamaConfig, w: &WeightSource) -> Result<Phi3Rope, ModelError> {
    let sn = src.source_name();
    let rotary_dim = match src.gguf("rope.dimension_count") {
        Some(d) => {
            d.as_u64().ok_or_else(|| load(invalid(&sn, "phi3.rope.dimension_count", "is not an integer")))? as usize
        }
        None => cfg.head_dim,
    };
    let (s, l) = ("rope_factors_short.weight", "rope_factors_long.weight");
    if !w.contains(s) && !w.contains(l) {
        return Ok(Phi3Rope { rotary_dim, longrope: None });
    }
    let read = |name: &str| -> Result<Vec<f32>, ModelError> {
        let t = w.f32(name).map_err(load)?;
        if t.data.len() != rotary_dim / 2 {
            return Err(load(invalid(&sn, name, format!("has {} values for {rotary_dim} rotary dims", t.data.len()))));
        }
        Ok(t.data)
    };
    let original = src
        .number("original_max_position_embeddings", "rope.scaling.original_context_length")
        .map_err(load)?
        .ok_or_else(|| {
            load(ConfigError::Missing {
                source_name: sn.clone(),
                field: "phi3.rope.scaling.original_context_length".into(),
            })
        })? as usize;
    let attn_factor = src.number("attention_factor", "rope.scaling.attn_factor").map_err(load)?.map(|f| f as f32);
    Ok(Phi3Rope { rotary_dim, longrope: Some(LongRope { short: read(s)?, long: read(l)?, original, attn_factor }) })
}

/// HF's default attention factor for a context stretched from `original` to `max_pos`.
fn default_attn_factor(max_pos: usize, original: usize) -> f32 {
    let scale = max_pos as f64 / original as f64;
    if scale <= 1.0 {
        1.0
    } else {
        (1.0 + scale.ln() / (original as f64).ln()).sqrt() as f32
    }
}

/// Whether to serve the long context (see the module header).
fn long_mode() -> Result<bool, ModelError> {
    match std::env::var(LONGROPE_ENV).as_deref() {
        Err(_) | Ok("") | Ok("short") => Ok(false),
        Ok("long") => Ok(true),
        Ok(other) => Err(ModelError::Unsupported(format!("{LONGROPE_ENV}={other} (expected short or long)"))),
    }
}

/// The registry's constructor for `phi3`.
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let sn = src.source_name();
    let unsup = |e: ConfigError| ModelError::Unsupported(e.to_string());
    src.refuse_hf("hidden_act", "an activation other than silu", is_str("silu")).map_err(unsup)?;
    let naming = GgufNaming { globals: &GGUF_GLOBALS, ..GgufNaming::hf_order(&[&GGUF_BLOCKS]) };
    let weights = ckpt.weights(&naming).map_err(load)?;
    let (mut cfg, rope) = match &src {
        ConfigSource::Hf { json, .. } => hf_config(json, &sn).map_err(|e| match e {
            ConfigError::Unsupported { .. } => unsup(e),
            e => load(e),
        })?,
        ConfigSource::Gguf(f) => {
            let cfg = LlamaConfig::from_gguf_partial_rotary(f).map_err(load)?;
            let rope = gguf_rope(&src, &cfg, &weights)?;
            (cfg, rope)
        }
    };
    let table = match &rope.longrope {
        None if rope.rotary_dim == cfg.head_dim => None,
        None => Some(RopeTable::partial(cfg.rope_theta, rope.rotary_dim)),
        Some(lr) => {
            let attn_factor =
                lr.attn_factor.unwrap_or_else(|| default_attn_factor(cfg.max_position_embeddings, lr.original));
            let long = long_mode()?;
            if !long {
                cfg.max_position_embeddings = cfg.max_position_embeddings.min(lr.original);
            }
            let f = if long { &lr.long } else { &lr.short };
            Some(RopeTable::scaled(cfg.rope_theta, rope.rotary_dim, f, attn_factor))
        }
    };
    if let Some(t) = &table {
        t.check(cfg.head_dim).map_err(|e| load(invalid(&sn, "partial_rotary_factor", e)))?;
    }
    let window = src.sliding_window().map_err(load)?.filter(|&w| w < cfg.max_position_embeddings);
    let mut spec = DecoderSpec::llama(cfg);
    for l in &mut spec.layers {
        l.rope.table = table.clone();
        l.window = window;
    }
    let model = Decoder::load(spec, &NAMES, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture() -> Value {
        let text = include_str!("../../tests/fixtures/arch-tiny/phi3/config.json");
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn reads_the_fixture_rope() {
        let (cfg, rope) = hf_config(&fixture(), "f").unwrap();
        assert_eq!((cfg.head_dim, rope.rotary_dim), (16, 12));
        let lr = rope.longrope.unwrap();
        assert_eq!((lr.short.len(), lr.long.len(), lr.original, lr.attn_factor), (6, 6, 64, None));
        assert_eq!(cfg.rope_scaling, None);
        assert!((default_attn_factor(512, 64) - 1.224_744_9).abs() < 1e-6);
        assert_eq!(default_attn_factor(64, 64), 1.0);
    }

    #[test]
    fn reads_the_older_rope_scaling_form() {
        let mut j = fixture();
        let p = j["rope_parameters"].clone();
        j["rope_parameters"] = Value::Null;
        j["rope_theta"] = json!(10000.0);
        j["partial_rotary_factor"] = json!(0.75);
        j["rope_scaling"] = json!({"type": "su", "short_factor": p["short_factor"], "long_factor": p["long_factor"]});
        let (_, rope) = hf_config(&j, "f").unwrap();
        assert_eq!(rope.rotary_dim, 12);
        assert_eq!(rope.longrope.unwrap().original, 64, "top-level original_max_position_embeddings");
    }

    #[test]
    fn refusals_name_the_key() {
        let err = |f: &dyn Fn(&mut Value)| {
            let mut j = fixture();
            f(&mut j);
            hf_config(&j, "f").err().map(|e| e.to_string()).unwrap_or_default()
        };
        let e = err(&|j| j["rope_parameters"]["rope_type"] = json!("yarn"));
        assert!(e.contains("'rope_parameters.rope_type': yarn"), "{e}");
        let e = err(&|j| j["rope_parameters"]["short_mscale"] = json!(1.1));
        assert!(e.contains("rope_parameters.short_mscale"), "{e}");
        let e = err(&|j| j["rope_parameters"]["long_factor"] = json!([1.0, 2.0]));
        assert!(e.contains("rope_parameters.long_factor") && e.contains("6 numbers"), "{e}");
        let e = err(&|j| j["rope_parameters"]["partial_rotary_factor"] = json!(1.5));
        assert!(e.contains("partial_rotary_factor"), "{e}");
    }
}
