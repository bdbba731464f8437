//! Mixtral: the Llama decoder (Mistral's attention, with its sliding window when the config
//! sets one) whose every feed-forward is a mixture of `num_local_experts` SwiGLU experts, of
//! which `num_experts_per_tok` run per token, weighted by the router's softmax renormalised
//! over the chosen ones (see [`crate::decoder`]'s `moe`). HF names:
//! `block_sparse_moe.gate` (the router) and `block_sparse_moe.experts.E.{w1, w3, w2}` (gate,
//! up, down).
//!
//! Not yet: Mixtral GGUFs (llama.cpp stores the experts stacked in one 3-D tensor per
//! projection, `ffn_{gate,up,down}_exps`); such a file is refused by name.

use crate::arch::{is_str, Built, Checkpoint, ConfigSource};
use crate::config::{invalid, ConfigError};
use crate::decoder::{Decoder, DecoderSpec, MoeSpec, Names};
use crate::llama::load;
use crate::model::{ModelError, Runner};
use crate::weights::GgufNaming;
use kiln_runtime::DType;
use kiln_runtime::Device;

const NAMES: Names = Names {
    router: "block_sparse_moe.gate",
    experts: "block_sparse_moe.experts",
    expert_parts: ["w1", "w3", "w2"],
    ..Names::LLAMA
};

/// A required positive integer of an HF config, by the first of `keys` it has.
pub fn hf_count(src: &ConfigSource<'_>, keys: &[&str]) -> Result<usize, ConfigError> {
    let sn = src.source_name();
    let Some((key, v)) = keys.iter().find_map(|k| src.hf(k).map(|v| (*k, v))) else {
        return Err(ConfigError::Missing { source_name: sn, field: keys[0].into() });
    };
    v.as_u64().filter(|&n| n > 0).map(|n| n as usize).ok_or_else(|| invalid(&sn, key, "is not a positive integer"))
}

/// The registry's constructor for `mixtral`.
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let unsupported = |e: ConfigError| ModelError::Unsupported(e.to_string());
    if ckpt.gguf().is_some() {
        return Err(ModelError::Unsupported(format!(
            "{}: mixture-of-experts GGUF files (experts stacked in `ffn_*_exps`) are not read yet",
            src.source_name()
        )));
    }
    let cfg = src.decoder().map_err(load)?;
    src.refuse_hf("hidden_act", "an activation other than silu", is_str("silu")).map_err(unsupported)?;
    src.refuse_hf("router_jitter_noise", "router jitter at inference", |v| v.as_f64() == Some(0.0))
        .map_err(unsupported)?;
    let window = crate::llama::sliding_window(&src).map_err(unsupported)?;
    let experts = hf_count(&src, &["num_local_experts"]).map_err(load)?;
    let top_k = hf_count(&src, &["num_experts_per_tok"]).map_err(load)?;
    if top_k > experts {
        return Err(load(invalid(&src.source_name(), "num_experts_per_tok", format!("{top_k} > {experts} experts"))));
    }
    let moe = MoeSpec { experts, top_k, norm_top_k: true, intermediate: cfg.intermediate_size };
    let weights = ckpt.weights(&GgufNaming::hf_order(&crate::llama::GGUF_BLOCKS)).map_err(load)?;
    let mut spec = DecoderSpec { moe: Some(moe), ..DecoderSpec::llama(cfg) };
    let window = window.filter(|&w| w < spec.cfg.max_position_embeddings);
    for l in &mut spec.layers {
        l.moe = true;
        l.window = window;
    }
    let model = Decoder::load(spec, &NAMES, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}
