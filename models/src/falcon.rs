//! Falcon (the 7B layout): one LayerNorm (with bias) per block feeding attention and the MLP in
//! parallel, `x + attn(ln(x)) + mlp(ln(x))`; multi-query attention (one K/V head) from one fused
//! `query_key_value` projection (`[q heads | k | v]` rows); a plain GELU MLP (`dense_h_to_4h`,
//! `dense_4h_to_h`); rotate-half RoPE; the head tied to the embedding. It stands for the
//! parallel-residual, LayerNorm, non-gated family (GPT-NeoX, StableLM differ in names and
//! in a partial rotary).
//!
//! HF configs: `multi_query` with `new_decoder_architecture: false` means one KV head whatever
//! `num_kv_heads` says (as HF reads it). Refused, by key: `new_decoder_architecture` (40B/180B:
//! two norms, grouped q/k/v), `alibi`, `bias`, sequential blocks (`parallel_attn: false`), an
//! activation other than GELU.

use crate::arch::{is_false, is_str, Built, Checkpoint, ConfigSource};
use crate::config::{ConfigError, LlamaConfig};
use crate::decoder::{Decoder, DecoderSpec, MlpKind, Names, NormKind};
use crate::llama::load;
use crate::model::{ModelError, Runner};
use crate::weights::GgufNaming;
use kiln_runtime::DType;
use kiln_runtime::Device;
use serde_json::Value;

const GGUF_BLOCKS: [(&str, &str); 5] = [
    ("attn_norm", "input_layernorm"),
    ("attn_qkv", "self_attention.query_key_value"),
    ("attn_output", "self_attention.dense"),
    ("ffn_up", "mlp.dense_h_to_4h"),
    ("ffn_down", "mlp.dense_4h_to_h"),
];

const GGUF_GLOBALS: [(&str, &str); 3] =
    [("token_embd", "transformer.word_embeddings"), ("output_norm", "transformer.ln_f"), ("output", "lm_head")];

const NAMES: Names = Names {
    embed: "transformer.word_embeddings",
    final_norm: "transformer.ln_f",
    layers: "transformer.h",
    qkv: Some("self_attention.query_key_value"),
    o: "self_attention.dense",
    up: "mlp.dense_h_to_4h",
    down: "mlp.dense_4h_to_h",
    ..Names::LLAMA
};

/// Falcon's `config.json` in the Llama keys the shared reader takes.
fn llama_keys(json: &Value) -> Value {
    let mut v = json.clone();
    let get = |k: &str| json.get(k).filter(|x| !x.is_null()).cloned();
    let alias = |v: &mut Value, to: &str, from: &[&str]| {
        if v.get(to).is_none_or(Value::is_null) {
            if let Some(x) = from.iter().find_map(|f| get(f)) {
                v[to] = x;
            }
        }
    };
    alias(&mut v, "num_hidden_layers", &["n_layer"]);
    alias(&mut v, "num_attention_heads", &["n_head"]);
    alias(&mut v, "rms_norm_eps", &["layer_norm_epsilon"]);
    alias(&mut v, "intermediate_size", &["ffn_hidden_size"]);
    let hidden = get("hidden_size").and_then(|h| h.as_u64());
    if v.get("intermediate_size").is_none_or(Value::is_null) {
        if let Some(h) = hidden {
            v["intermediate_size"] = (4 * h).into();
        }
    }
    if v.get("max_position_embeddings").is_none_or(Value::is_null) {
        v["max_position_embeddings"] = 2048.into(); // HF's FalconConfig default
    }
    let multi_query = get("multi_query").and_then(|m| m.as_bool()).unwrap_or(true);
    v["num_key_value_heads"] = if multi_query { 1.into() } else { v["num_attention_heads"].clone() };
    v["head_dim"] = Value::Null; // hidden / heads
    v
}

fn config(src: &ConfigSource<'_>) -> Result<LlamaConfig, ConfigError> {
    match src {
        ConfigSource::Hf { json, .. } => LlamaConfig::from_hf_value(&llama_keys(json), &src.source_name()),
        ConfigSource::Gguf(_) => src.decoder(),
    }
}

/// The registry's constructor for `falcon`.
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let unsupported = |e: ConfigError| ModelError::Unsupported(e.to_string());
    src.refuse_hf("new_decoder_architecture", "the 40B/180B block layout", is_false).map_err(unsupported)?;
    src.refuse_hf("alibi", "ALiBi positions", is_false).map_err(unsupported)?;
    src.refuse_hf("bias", "linear biases", is_false).map_err(unsupported)?;
    src.refuse_hf("parallel_attn", "sequential attention and MLP", |v| v == &Value::Bool(true)).map_err(unsupported)?;
    src.refuse_hf("activation", "an activation other than gelu", is_str("gelu")).map_err(unsupported)?;
    let cfg = config(&src).map_err(load)?;
    let naming =
        GgufNaming { layers: "transformer.h", globals: &GGUF_GLOBALS, ..GgufNaming::hf_order(&[&GGUF_BLOCKS]) };
    let weights = ckpt.weights(&naming).map_err(load)?;
    let spec =
        DecoderSpec { norm: NormKind::Layer, parallel_residual: true, mlp: MlpKind::Gelu, ..DecoderSpec::llama(cfg) };
    let model = Decoder::load(spec, &NAMES, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}
