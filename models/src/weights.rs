//! `Weights`: a model's tensors on the host, as f32, under their Hugging Face names.
//!
//! Invariants:
//! - every `HostTensor` has `data.len() == shape.iter().product()`, row-major, HF shapes
//!   (`[out, in]` for linear weights, `[vocab, hidden]` for embeddings, `[hidden]` for norms);
//! - Q/K projection rows are in HF (rotate-half) order whatever the source file was, because the
//!   GGUF loader undoes llama.cpp's permutation before a tensor is stored;
//! - a lookup of an absent tensor is an error naming it and the source it was loaded from.
//!
//! Sources: `Weights::from_gguf` (weights/gguf.rs) and `Weights::from_safetensors_dir`
//! (safetensors_io.rs). `Weights` is the eager, whole-model form that `kiln convert` and
//! tests use; models load through the lazy [`WeightSource`] (weights/source.rs), which never
//! holds more than one tensor in host memory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{ConfigError, LlamaConfig};
use crate::gguf::{GgufError, PermuteError};

mod gguf;
pub mod packed;
pub mod quantization;
pub mod scaled;
mod source;

pub use gguf::{gguf_to_hf_name, load_gguf};
pub use source::{GgufNaming, Part, Shard, StackPart, StoredFormat, StoredTensor, WeightSource};

/// A dense row-major f32 tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor, if `data` has exactly as many values as `shape` describes.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Self> {
        (shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) == Some(data.len())).then_some(Self { shape, data })
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}: cannot read: {err}", .path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: {reason}", .path.display())]
    Safetensors { path: PathBuf, reason: String },
    #[error("{}: tensor '{tensor}' has dtype {dtype}; kiln loads F32, F16, BF16, F8_E4M3 and the integers of quantized checkpoints (I8, I32, I64)", .path.display())]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String },
    #[error("{source_name}: missing tensor '{tensor}'")]
    Missing { source_name: String, tensor: String },
    #[error("{source_name}: tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    Shape { source_name: String, tensor: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{source_name}: tensor '{tensor}' has no Hugging Face equivalent kiln knows")]
    UnknownTensor { source_name: String, tensor: String },
    #[error("{source_name}: tensor '{tensor}' appears twice")]
    Duplicate { source_name: String, tensor: String },
    #[error("tensor '{tensor}': {reason}")]
    Layout { tensor: String, reason: String },
    #[error("{source_name}: tensor '{tensor}' is not used by the architecture{}", if *.more > 0 { format!(" (nor are {} more)", .more) } else { String::new() })]
    Unused { source_name: String, tensor: String, more: usize },
    #[error("{source_name}: tensor '{tensor}': cannot undo llama.cpp's Q/K row permutation: {err}")]
    Permute { source_name: String, tensor: String, err: PermuteError },
}

impl WeightsError {
    /// The error with `source_name` filled in where a tensor-level step (un-permuting a
    /// `StoredTensor`) could not know it.
    pub(crate) fn in_source(self, source_name: &str) -> WeightsError {
        match self {
            WeightsError::Permute { tensor, err, .. } => {
                WeightsError::Permute { source_name: source_name.to_owned(), tensor, err }
            }
            other => other,
        }
    }
}

/// Named host tensors from one checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    source_name: String,
    tensors: BTreeMap<String, HostTensor>,
}

impl Weights {
    /// An empty set; `source_name` (a path, usually) names the checkpoint in errors.
    pub fn new(source_name: impl Into<String>) -> Self {
        Self { source_name: source_name.into(), tensors: BTreeMap::new() }
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Adds a tensor; a name already present is an error, never a silent overwrite.
    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) -> Result<(), WeightsError> {
        let name = name.into();
        if self.tensors.contains_key(&name) {
            return Err(WeightsError::Duplicate { source_name: self.source_name.clone(), tensor: name });
        }
        self.tensors.insert(name, tensor);
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Result<&HostTensor, WeightsError> {
        self.tensors.get(name).ok_or_else(|| self.missing(name))
    }

    /// Removes and returns a tensor (lets a model upload weights without copying them).
    pub fn take(&mut self, name: &str) -> Result<HostTensor, WeightsError> {
        self.tensors.remove(name).ok_or_else(|| self.missing(name))
    }

    /// `lm_head.weight`, or the token embedding when the checkpoint ties them (no lm_head).
    pub fn lm_head(&self) -> Result<&HostTensor, WeightsError> {
        match self.tensors.get("lm_head.weight") {
            Some(t) => Ok(t),
            None => self.get("model.embed_tokens.weight"),
        }
    }

    /// Tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Checks that every tensor a Llama model of `config` needs is present with its HF shape
    /// (`lm_head.weight` only when embeddings are untied).
    pub fn validate_llama(&self, config: &LlamaConfig) -> Result<(), WeightsError> {
        for (name, expected) in llama_tensor_shapes(config) {
            let t = self.get(&name)?;
            if t.shape != expected {
                return Err(WeightsError::Shape {
                    source_name: self.source_name.clone(),
                    tensor: name,
                    expected,
                    found: t.shape.clone(),
                });
            }
        }
        Ok(())
    }

    fn missing(&self, name: &str) -> WeightsError {
        WeightsError::Missing { source_name: self.source_name.clone(), tensor: name.to_owned() }
    }
}

/// The HF name and shape of every tensor of a Llama model of `config`.
pub fn llama_tensor_shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv, ff) =
        (c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size);
    let mut v = vec![
        ("model.embed_tokens.weight".to_owned(), vec![c.vocab_size, h]),
        ("model.norm.weight".to_owned(), vec![h]),
    ];
    if !c.tie_word_embeddings {
        v.push(("lm_head.weight".to_owned(), vec![c.vocab_size, h]));
    }
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        v.extend([
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![ff, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![ff, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, ff]),
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
        ]);
    }
    v
}

#[cfg(test)]
mod tests;
