//! Mixtral: the Llama decoder (Mistral's attention, with its sliding window when the config
//! sets one) whose every feed-forward is a mixture of `num_local_experts` SwiGLU experts, of
//! which `num_experts_per_tok` run per token, weighted by the router's softmax renormalised
//! over the chosen ones (see [`crate::decoder`]'s `moe`). HF names:
//! `block_sparse_moe.gate` (the router) and `block_sparse_moe.experts.E.{w1, w3, w2}` (gate,
//! up, down).
//!
//! In GGUF (`general.architecture = llama` with `llama.expert_count > 0`, which the Llama entry
//! hands here) the router is `ffn_gate_inp` and the experts are stacked, one 3-D tensor per
//! projection (`ffn_{gate,up,down}_exps`), each expert read as its own slice; Q/K rows are
//! permuted as for Llama.

use crate::arch::{is_str, Built, Checkpoint, ConfigSource};
use crate::config::{invalid, ConfigError};
use crate::decoder::{Decoder, DecoderSpec, MoeSpec, Names};
use crate::llama::{load, GGUF_NORMS, GGUF_PROJECTIONS};
use crate::model::{ModelError, Runner};
use crate::weights::GgufNaming;
use kiln_runtime::DType;
use kiln_runtime::Device;

/// Llama's block stems plus the router.
const GGUF_BLOCKS: [&[(&str, &str)]; 3] =
    [&GGUF_PROJECTIONS, &GGUF_NORMS, &[("ffn_gate_inp", "block_sparse_moe.gate")]];

const GGUF_EXPERTS: [(&str, &str); 3] = [
    ("ffn_gate_exps", "block_sparse_moe.experts.{e}.w1"),
    ("ffn_up_exps", "block_sparse_moe.experts.{e}.w3"),
    ("ffn_down_exps", "block_sparse_moe.experts.{e}.w2"),
];

const NAMES: Names = Names {
    router: "block_sparse_moe.gate",
    experts: "block_sparse_moe.experts",
    expert_parts: ["w1", "w3", "w2"],
    ..Names::LLAMA
};

/// A required positive integer: HF `hf_keys` (the first present) or GGUF `{arch}.{gguf_key}`.
pub fn count(src: &ConfigSource<'_>, hf_keys: &[&str], gguf_key: &str) -> Result<usize, ConfigError> {
    let sn = src.source_name();
    let found = hf_keys.iter().find_map(|k| src.hf(k).map(|v| (k.to_string(), v.as_u64())));
    let (key, v) = match found {
        Some(kv) => kv,
        None => match src.gguf(gguf_key) {
            Some(v) => (gguf_key.to_string(), v.as_u64()),
            None => return Err(ConfigError::Missing { source_name: sn, field: hf_keys[0].into() }),
        },
    };
    v.filter(|&n| n > 0).map(|n| n as usize).ok_or_else(|| invalid(&sn, &key, "is not a positive integer"))
}

/// The registry's constructor for `mixtral`.
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let unsupported = |e: ConfigError| ModelError::Unsupported(e.to_string());
    let cfg = src.decoder().map_err(load)?;
    src.refuse_hf("hidden_act", "an activation other than silu", is_str("silu")).map_err(unsupported)?;
    src.refuse_hf("router_jitter_noise", "router jitter at inference", |v| v.as_f64() == Some(0.0))
        .map_err(unsupported)?;
    let window = src.sliding_window().map_err(unsupported)?;
    let experts = count(&src, &["num_local_experts"], "expert_count").map_err(load)?;
    let top_k = count(&src, &["num_experts_per_tok"], "expert_used_count").map_err(load)?;
    if top_k > experts {
        return Err(load(invalid(&src.source_name(), "num_experts_per_tok", format!("{top_k} > {experts} experts"))));
    }
    let moe = MoeSpec { experts, top_k, norm_top_k: true, intermediate: cfg.intermediate_size };
    // As llama.cpp writes a Mixtral: Q/K rows permuted as for Llama, experts stacked.
    let naming = GgufNaming {
        experts: &GGUF_EXPERTS,
        permuted_qk: Some((cfg.num_attention_heads, cfg.num_key_value_heads)),
        ..GgufNaming::hf_order(&GGUF_BLOCKS)
    };
    let weights = ckpt.weights(&naming).map_err(load)?;
    let mut spec = DecoderSpec { moe: Some(moe), ..DecoderSpec::llama(cfg) };
    let window = window.filter(|&w| w < spec.cfg.max_position_embeddings);
    for l in &mut spec.layers {
        l.moe = true;
        l.window = window;
    }
    let model = Decoder::load(spec, &NAMES, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}
