//! What every architecture implements ([`CausalLm`]) and what one forward step takes
//! ([`ForwardBatch`]): a flat batch of new tokens from any number of sequences, with the paged
//! KV layout of [`crate::attention`]. Architectures live in `kiln-models`; the engine drives
//! them only through this trait.
//!
//! Invariants checked by [`ForwardBatch::validate`]: one position and one slot per token; the
//! sequences' query rows tile `0..tokens` in order without gaps; logits rows index tokens.

use crate::attention::{AttnError, SeqAttn};
use crate::{Device, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("loading the model: {0}")]
    Load(String),
    #[error("not supported yet: {0}")]
    Unsupported(String),
    #[error("bad batch: {0}")]
    Batch(String),
    #[error(transparent)]
    Tensor(#[from] crate::TensorError),
    #[error(transparent)]
    Fused(#[from] crate::FusedError),
    #[error(transparent)]
    Gemm(#[from] crate::GemmError),
    #[error(transparent)]
    Attention(#[from] AttnError),
    #[error(transparent)]
    Cuda(#[from] crate::cuda_error::CudaError),
}

/// Per-layer K and V pools (`[num_blocks * block_size, n_kv_heads * head_dim]` each).
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub block_size: usize,
    pub num_blocks: usize,
}

pub struct ForwardBatch<'a> {
    /// The new tokens of every sequence, sequence after sequence.
    pub tokens: &'a [u32],
    /// Each token's position in its sequence.
    pub positions: &'a [i32],
    /// Each token's KV slot (`block * block_size + offset`).
    pub slots: &'a [u32],
    pub seqs: &'a [SeqAttn<'a>],
    /// Rows of `tokens` whose logits are wanted, in output order.
    pub logits_rows: &'a [usize],
}

impl ForwardBatch<'_> {
    pub fn validate(&self, vocab: usize) -> Result<(), ModelError> {
        let n = self.tokens.len();
        let bad = |m: String| Err(ModelError::Batch(m));
        if n == 0 {
            return bad("no tokens".into());
        }
        if self.positions.len() != n || self.slots.len() != n {
            return bad(format!("{n} tokens, {} positions, {} slots", self.positions.len(), self.slots.len()));
        }
        if let Some(t) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            return bad(format!("token id {t} is outside the vocabulary of {vocab}"));
        }
        let mut next = 0;
        for (i, s) in self.seqs.iter().enumerate() {
            if s.q_start != next {
                return bad(format!("sequence {i} starts at row {} instead of {next}", s.q_start));
            }
            next += s.q_len;
        }
        if next != n {
            return bad(format!("sequences cover {next} rows of {n}"));
        }
        if let Some(r) = self.logits_rows.iter().find(|&&r| r >= n) {
            return bad(format!("logits row {r} is past the {n} tokens"));
        }
        Ok(())
    }
}

/// What the engine needs to know about a model, whatever its architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The architecture name (`llama`).
    pub architecture: String,
    pub vocab_size: usize,
    /// Longest sequence (prompt + output) the model takes.
    pub max_model_len: usize,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Element type of the KV pools.
    pub kv_dtype: kiln_codegen::ir::DType,
}

impl ModelInfo {
    /// Bytes of K plus V for one token across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype.size_bytes()
    }
}

/// A causal language model that runs one batched forward step at a time.
pub trait CausalLm: Send + Sync {
    fn info(&self) -> &ModelInfo;
    fn device(&self) -> &Device;
    /// Allocate KV pools for `num_blocks` blocks of `block_size` tokens.
    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache, ModelError>;
    /// Run the batch; returns `[logits_rows.len(), vocab]` logits.
    fn forward(&self, batch: &ForwardBatch<'_>, kv: &mut KvCache) -> Result<Tensor, ModelError>;
}
