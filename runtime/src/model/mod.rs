//! What every architecture implements ([`CausalLm`]) and what one forward step takes
//! ([`ForwardBatch`]): a flat batch of new tokens from any number of sequences, with the paged
//! KV layout of [`crate::attention`]. Architectures live in `kiln-models`; the engine drives
//! them only through this trait.
//!
//! The machinery every architecture shares lives here once: the step's device inputs
//! ([`step`]), the per-architecture [`graphs::StepModel`] trait and decode graphs
//! ([`graphs`]), the [`runner::Runner`] that turns a `StepModel` into a `CausalLm`, and the
//! per-layer KV specs ([`kv_spec`]). An architecture file holds only its layers, its weights'
//! names and its `step`.
//!
//! Invariants checked by [`ForwardBatch::validate`]: one position and one slot per token; the
//! sequences' query rows tile `0..tokens` in order without gaps; logits rows index tokens.

use crate::attention::{AttnError, SeqAttn};
use crate::{Device, Tensor};

pub mod graphs;
pub mod kv_fp8;
pub mod kv_spec;
pub mod runner;
pub mod step;

pub use kv_spec::{kv_residency, AttentionKind, KvResidency, LayerKv};
pub use runner::Runner;

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
    Cuda(#[from] crate::device::cuda_error::CudaError),
    #[error(transparent)]
    Comm(#[from] crate::comm::CommError),
}

/// K and V pools (`[num_blocks * block_size, n_kv_heads * head_dim]` each), one pair per
/// layer that keeps KV ([`LayerKv::has_kv`]), in layer order: `k[i]` belongs to the `i`-th
/// such layer, which is layer `i` for every model whose layers all attend.
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub block_size: usize,
    pub num_blocks: usize,
    /// `Some`: an FP8 cache ([`kv_fp8`]): the pools hold e4m3 bytes (`i32` tensors of
    /// `width / 4` columns) and entry `i` scales the pools of `k[i]` and `v[i]`.
    pub fp8: Option<Vec<kv_fp8::KvScale>>,
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
    /// One entry per transformer layer: its KV shape and attention kind.
    pub layers: Vec<LayerKv>,
    /// Element type of the KV pools (of the values the model writes to them).
    pub kv_dtype: crate::DType,
    /// `Some`: caches are FP8 ([`kv_fp8`]) with these scales, one per KV layer.
    pub kv_fp8: Option<Vec<kv_fp8::KvScale>>,
}

impl ModelInfo {
    /// Bytes of K plus V for one token across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        let width: usize = self.kv_layers().map(|l| l.width()).sum();
        2 * width * self.kv_elem_bytes()
    }

    /// Bytes of one stored K or V value: 1 in an FP8 cache, else the dtype's.
    pub fn kv_elem_bytes(&self) -> usize {
        if self.kv_fp8.is_some() {
            1
        } else {
            self.kv_dtype.size_bytes()
        }
    }

    /// The same model with an FP8 KV cache of these per-KV-layer scales.
    pub fn with_fp8_kv(&self, scales: Vec<kv_fp8::KvScale>) -> Result<ModelInfo, ModelError> {
        let layers = self.kv_layers().count();
        if scales.len() != layers {
            return Err(ModelError::Load(format!("{} FP8 KV scales for {layers} KV layers", scales.len())));
        }
        if let Some(l) = self.kv_layers().find(|l| !l.width().is_multiple_of(8)) {
            return Err(ModelError::Unsupported(format!("an FP8 KV cache for rows of {} values", l.width())));
        }
        if let Some(s) = scales.iter().find(|s| !(s.k > 0.0 && s.k.is_finite() && s.v > 0.0 && s.v.is_finite())) {
            return Err(ModelError::Load(format!("FP8 KV scales must be positive and finite, got {s:?}")));
        }
        Ok(ModelInfo { kv_fp8: Some(scales), ..self.clone() })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The layers that keep KV, in order (one K and one V pool each).
    pub fn kv_layers(&self) -> impl Iterator<Item = &LayerKv> {
        self.layers.iter().filter(|l| l.has_kv())
    }

    /// The one KV shape `(n_kv_heads, head_dim)` all KV layers share, or `None` when they
    /// differ or there are none (one allocator group needs one block shape).
    pub fn uniform_kv(&self) -> Option<(usize, usize)> {
        let mut it = self.kv_layers();
        let first = it.next()?;
        it.all(|l| l.width() == first.width()).then_some((first.n_kv_heads, first.head_dim))
    }

    /// K and V pools for every KV layer: `num_blocks * block_size` zeroed rows each.
    pub fn new_kv_cache(&self, dev: &Device, num_blocks: usize, block_size: usize) -> Result<KvCache, ModelError> {
        let slots = num_blocks * block_size;
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for l in self.kv_layers() {
            let (dtype, cols) = match self.kv_fp8 {
                Some(_) => (crate::DType::I32, kv_fp8::pool_cols(l.width())),
                None => (self.kv_dtype, l.width()),
            };
            k.push(Tensor::zeros(dev, dtype, slots, cols)?);
            v.push(Tensor::zeros(dev, dtype, slots, cols)?);
        }
        Ok(KvCache { k, v, block_size, num_blocks, fp8: self.kv_fp8.clone() })
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
    /// From now on, make FP8 KV caches with these per-KV-layer scales ([`kv_fp8`]); caches made
    /// before keep their type.
    fn use_fp8_kv(&mut self, scales: Vec<kv_fp8::KvScale>) -> Result<(), ModelError> {
        let _ = scales;
        Err(ModelError::Unsupported(format!("an FP8 KV cache for `{}`", self.info().architecture)))
    }
    /// FP8 KV scales the checkpoint stores (one per KV layer), if any: an FP8 cache takes
    /// them instead of calibrating.
    fn checkpoint_kv_scales(&self) -> Option<Vec<kv_fp8::KvScale>> {
        None
    }
    /// From now on, every dense layer projection records the largest |x| of each input column
    /// of its products (a calibration pass: SmoothQuant's statistics, static FP8 activation
    /// scales; read after running a text through [`CausalLm::forward`]); one entry per layer.
    fn observe_projection_inputs(&mut self) -> Result<Vec<ProjectionInputs>, ModelError> {
        Err(ModelError::Unsupported(format!("observing the projections' inputs of `{}`", self.info().architecture)))
    }
}

/// A layer's observed projection inputs ([`CausalLm::observe_projection_inputs`]): its q/k/v
/// (the attention norm's output), its attention output projection, and its MLP's first and
/// last projections (`None` for an MoE layer, whose experts are not observed).
#[derive(Clone, Debug)]
pub struct ProjectionInputs {
    pub qkv: std::sync::Arc<crate::device::linear::InputStats>,
    pub o: std::sync::Arc<crate::device::linear::InputStats>,
    pub mlp_in: Option<std::sync::Arc<crate::device::linear::InputStats>>,
    pub down: Option<std::sync::Arc<crate::device::linear::InputStats>>,
}
