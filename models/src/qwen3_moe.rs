//! Qwen3-MoE: Qwen3's attention (per-head q/k norms) with mixture-of-experts feed-forwards:
//! `num_experts` SwiGLU experts of `moe_intermediate_size`, `num_experts_per_tok` per token,
//! the router's softmax renormalised over the chosen ones when `norm_topk_prob`. A layer is
//! sparse when it is not in `mlp_only_layers` and `(layer + 1) % decoder_sparse_step == 0`;
//! the others keep a dense MLP of `intermediate_size`. HF names: `mlp.gate` (router),
//! `mlp.experts.E.{gate,up,down}_proj`.
//!
//! In GGUF (`qwen3moe`): the router is `ffn_gate_inp`, the experts stacked per projection
//! (`ffn_{gate,up,down}_exps`); `expert_weights_norm` defaults to true (llama.cpp's rule for
//! this architecture) and `mlp_only_layers` (a kiln extension) to none.

use crate::arch::{Built, Checkpoint};
use crate::config::invalid;
use crate::decoder::{Decoder, DecoderSpec, MoeSpec, Names};
use crate::llama::{load, GGUF_NORMS, GGUF_PROJECTIONS, GGUF_QK_NORMS};
use crate::mixtral::count;
use crate::model::{ModelError, Runner};
use crate::weights::GgufNaming;
use kiln_runtime::DType;
use kiln_runtime::Device;

/// Qwen3's block stems plus the router.
const GGUF_BLOCKS: [&[(&str, &str)]; 4] =
    [&GGUF_PROJECTIONS, &GGUF_NORMS, &GGUF_QK_NORMS, &[("ffn_gate_inp", "mlp.gate")]];

const GGUF_EXPERTS: [(&str, &str); 3] = [
    ("ffn_gate_exps", "mlp.experts.{e}.gate_proj"),
    ("ffn_up_exps", "mlp.experts.{e}.up_proj"),
    ("ffn_down_exps", "mlp.experts.{e}.down_proj"),
];

/// The registry's constructor for `qwen3_moe` (HF) and `qwen3moe` (GGUF).
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let sn = src.source_name();
    let cfg = src.decoder().map_err(load)?;
    crate::qwen3::refuse_unsupported(&src, cfg.rope_scaling.as_ref().map(|s| s.kind))
        .map_err(|e| ModelError::Unsupported(e.to_string()))?;
    let experts = count(&src, &["num_experts", "num_local_experts"], "expert_count").map_err(load)?;
    let top_k = count(&src, &["num_experts_per_tok"], "expert_used_count").map_err(load)?;
    let inter = count(&src, &["moe_intermediate_size"], "expert_feed_forward_length").map_err(load)?;
    if top_k > experts {
        return Err(load(invalid(&sn, "num_experts_per_tok", format!("{top_k} > {experts} experts"))));
    }
    let norm_top_k = match ckpt.gguf() {
        Some(_) => src.gguf("expert_weights_norm").and_then(|v| v.as_bool()).unwrap_or(true),
        None => src.hf("norm_topk_prob").and_then(|v| v.as_bool()).unwrap_or(false),
    };
    let step = match src.hf("decoder_sparse_step") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|&s| s > 0)
            .ok_or_else(|| load(invalid(&sn, "decoder_sparse_step", "is not a positive integer")))?
            as usize,
    };
    let dense: Vec<usize> = match (src.hf("mlp_only_layers"), src.gguf("mlp_only_layers")) {
        (Some(v), _) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| load(invalid(&sn, "mlp_only_layers", "is not a list of layer indices")))?,
        (None, Some(v)) => v
            .as_array()
            .and_then(|a| a.to_i64s())
            .map(|a| a.into_iter().map(|x| x as usize).collect())
            .ok_or_else(|| load(invalid(&sn, "mlp_only_layers", "is not a list of layer indices")))?,
        (None, None) => vec![],
    };
    let naming = GgufNaming { experts: &GGUF_EXPERTS, ..GgufNaming::hf_order(&GGUF_BLOCKS) };
    let weights = ckpt.weights(&naming).map_err(load)?;
    let moe = MoeSpec { experts, top_k, norm_top_k, intermediate: inter };
    let mut spec = DecoderSpec { qk_norm: true, moe: Some(moe), ..DecoderSpec::llama(cfg) };
    for (l, layer) in spec.layers.iter_mut().enumerate() {
        layer.moe = !dense.contains(&l) && (l + 1) % step == 0;
    }
    let model = Decoder::load(spec, &Names::LLAMA, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}
