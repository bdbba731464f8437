//! Qwen3-MoE: Qwen3's attention (per-head q/k norms) with mixture-of-experts feed-forwards:
//! `num_experts` SwiGLU experts of `moe_intermediate_size`, `num_experts_per_tok` per token,
//! the router's softmax renormalised over the chosen ones when `norm_topk_prob`. A layer is
//! sparse when it is not in `mlp_only_layers` and `(layer + 1) % decoder_sparse_step == 0`;
//! the others keep a dense MLP of `intermediate_size`. HF names: `mlp.gate` (router),
//! `mlp.experts.E.{gate,up,down}_proj`.
//!
//! Not yet: Qwen3-MoE GGUF files (stacked experts, as for Mixtral).

use crate::arch::{Built, Checkpoint};
use crate::config::invalid;
use crate::decoder::{Decoder, DecoderSpec, MoeSpec, Names};
use crate::llama::load;
use crate::mixtral::hf_count;
use crate::model::{ModelError, Runner};
use crate::weights::GgufNaming;
use kiln_runtime::DType;
use kiln_runtime::Device;

/// The registry's constructor for `qwen3_moe`.
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let sn = src.source_name();
    if ckpt.gguf().is_some() {
        return Err(ModelError::Unsupported(format!(
            "{sn}: mixture-of-experts GGUF files (experts stacked in `ffn_*_exps`) are not read yet"
        )));
    }
    let cfg = src.decoder().map_err(load)?;
    crate::qwen3::refuse_unsupported(&src, cfg.rope_scaling.as_ref().map(|s| s.kind))
        .map_err(|e| ModelError::Unsupported(e.to_string()))?;
    let experts = hf_count(&src, &["num_experts", "num_local_experts"]).map_err(load)?;
    let top_k = hf_count(&src, &["num_experts_per_tok"]).map_err(load)?;
    let inter = hf_count(&src, &["moe_intermediate_size"]).map_err(load)?;
    if top_k > experts {
        return Err(load(invalid(&sn, "num_experts_per_tok", format!("{top_k} > {experts} experts"))));
    }
    let norm_top_k = src.hf("norm_topk_prob").and_then(|v| v.as_bool()).unwrap_or(false);
    let step = match src.hf("decoder_sparse_step") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|&s| s > 0)
            .ok_or_else(|| load(invalid(&sn, "decoder_sparse_step", "is not a positive integer")))?
            as usize,
    };
    let dense: Vec<usize> = match src.hf("mlp_only_layers") {
        None => vec![],
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| load(invalid(&sn, "mlp_only_layers", "is not a list of layer indices")))?,
    };
    let weights = ckpt.weights(&GgufNaming::hf_order(&crate::qwen3::GGUF_BLOCKS)).map_err(load)?;
    let moe = MoeSpec { experts, top_k, norm_top_k, intermediate: inter };
    let mut spec = DecoderSpec { qk_norm: true, moe: Some(moe), ..DecoderSpec::llama(cfg) };
    for (l, layer) in spec.layers.iter_mut().enumerate() {
        layer.moe = !dense.contains(&l) && (l + 1) % step == 0;
    }
    let model = Decoder::load(spec, &Names::LLAMA, &weights, dev, dtype)?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}
