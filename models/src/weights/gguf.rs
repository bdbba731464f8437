//! Loading `Weights` from a GGUF file: llama.cpp tensor names -> HF names, dequantization to
//! f32, GGUF dims (innermost first) -> HF row-major shapes, and undoing the Q/K row permutation.
//!
//! Invariant: every tensor of the file is either mapped or reported (`UnknownTensor`); nothing
//! is dropped silently, because a dropped tensor would change the model's output unnoticed.

use std::path::Path;

use crate::config::LlamaConfig;
use crate::gguf::{unpermute_qk_rows, GgufFile};

use super::{HostTensor, Weights, WeightsError};

/// llama.cpp per-block tensor stems and their HF counterparts under `model.layers.N.`.
const BLOCK_NAMES: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// The HF name of a llama.cpp tensor name (`blk.3.attn_q.weight` ->
/// `model.layers.3.self_attn.q_proj.weight`), or `None` if kiln has no mapping for it.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (stem, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, hf) = BLOCK_NAMES.iter().find(|(g, _)| *g == stem)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// For llama.cpp's Q/K tensors, the head count their rows were permuted with.
fn permuted_heads(name: &str, config: &LlamaConfig) -> Option<usize> {
    let stem = name.strip_prefix("blk.")?.split('.').nth(1)?;
    match stem {
        "attn_q" => Some(config.num_attention_heads),
        "attn_k" => Some(config.num_key_value_heads),
        _ => None,
    }
}

impl Weights {
    /// Dequantizes every tensor of `file` to f32 under its HF name, then checks the set
    /// against `config` (`validate_llama`).
    pub fn from_gguf(file: &GgufFile, config: &LlamaConfig) -> Result<Self, WeightsError> {
        let source_name = file.path().display().to_string();
        let mut weights = Weights::new(source_name.clone());
        for info in file.tensors() {
            let Some(hf_name) = gguf_to_hf_name(&info.name) else {
                return Err(WeightsError::UnknownTensor { source_name, tensor: info.name.clone() });
            };
            let shape = info.hf_shape();
            let mut data = vec![0f32; info.n_elements()];
            file.dequantize_into(info, &mut data)?;
            if let Some(n_head) = permuted_heads(&info.name, config) {
                let rows = shape.first().copied().unwrap_or(1);
                let cols = shape.iter().skip(1).product();
                data = unpermute_qk_rows(&data, rows, cols, n_head).map_err(|err| WeightsError::Permute {
                    source_name: source_name.clone(),
                    tensor: info.name.clone(),
                    err,
                })?;
            }
            // Shape and data agree by construction: n_elements is the product of the dims.
            weights.insert(hf_name, HostTensor { shape, data })?;
        }
        weights.validate_llama(config)?;
        Ok(weights)
    }
}

/// Opens a GGUF file and loads its config and weights.
pub fn load_gguf(path: &Path) -> Result<(LlamaConfig, Weights), WeightsError> {
    let file = GgufFile::open(path)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let weights = Weights::from_gguf(&file, &config)?;
    Ok((config, weights))
}
