//! The decoder-only transformer every architecture file builds: one implementation of the step,
//! driven by a [`DecoderSpec`] that says, as data, how this architecture differs from Llama.
//!
//! An architecture file (`llama.rs`, `qwen3.rs`, `gemma.rs`, ...) reads its config, refuses what
//! kiln does not implement (naming the key), fills a `DecoderSpec` and a [`Names`] table, and
//! calls [`Decoder::load`]. The differences the spec covers:
//! - per layer ([`LayerSpec`]): sliding window or global attention, RoPE base and scaling (or a
//!   frequency table with partial rotary, [`RopeTable`]), dense or mixture-of-experts feed-forward;
//! - per model: RMSNorm or LayerNorm (with bias), `1 + w` norm weights (folded at load), q/k/v
//!   bias, per-head q/k RMSNorm before RoPE, sandwich norms around attention and feed-forward,
//!   parallel attention and MLP branches, gated (SiLU, tanh-GELU) or plain (GELU) MLPs, an
//!   embedding scale, the attention scale, attention and final logit softcaps.
//!
//! Tensor parallelism ([`tp`]): loaded from a weight source that names a rank, a decoder holds
//! that rank's heads, features and vocabulary rows, its spec says the rank's sizes, and its
//! step all-reduces after o and down, gathers the logits, and takes the embedding rows from
//! rank 0.
//!
//! Invariants: `spec.layers.len() == cfg.num_hidden_layers`; a model is assembled only from
//! weights whose shapes were checked against the spec; the step runs the same kernels on every
//! device (the MoE routing is the one host-side part, see [`moe`]).

mod load;
mod moe;
mod normed;
mod observe;
mod random;
mod rope_table;
mod step;
mod tp;

pub use load::Names;
pub use rope_table::RopeTable;
pub use step::Workspace;

use crate::config::{LlamaConfig, RopeScaling};
use crate::model::{AttentionKind, LayerKv, ModelInfo};
use kiln_runtime::comm::Communicator;
use kiln_runtime::device::linear::Weight;
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};
use std::sync::Arc;

/// How the residual stream is normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `x / rms(x) * w` (Llama, Qwen, Gemma, Mistral).
    Rms,
    /// `(x - mean) / std * w + b` (Falcon, GPT-NeoX).
    Layer,
}

/// The feed-forward block's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(silu(gate) * up)` (Llama, Qwen, Mistral, Phi-3).
    GatedSilu,
    /// `down(gelu_tanh(gate) * up)` (Gemma).
    GatedGeluTanh,
    /// `down(gelu(up))`, no gate (Falcon).
    Gelu,
}

/// RoPE of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f32,
    pub scaling: Option<RopeScaling>,
    /// Frequencies as data instead of `theta`/`scaling`'s formula, with partial rotary and an
    /// attention factor (Phi-3's LongRoPE; see [`RopeTable`]).
    pub table: Option<RopeTable>,
}

/// What varies from layer to layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// `Some(w)`: the query sees the `w` most recent positions, itself included.
    pub window: Option<usize>,
    pub rope: RopeSpec,
    /// A mixture-of-experts feed-forward (see [`MoeSpec`]) instead of the dense one.
    pub moe: bool,
}

/// A sparse feed-forward: `top_k` of `experts` gated MLPs per token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeSpec {
    pub experts: usize,
    pub top_k: usize,
    /// Renormalise the chosen experts' probabilities to sum to 1 (Mixtral always; Qwen3-MoE's
    /// `norm_topk_prob`).
    pub norm_top_k: bool,
    /// Each expert's intermediate size.
    pub intermediate: usize,
}

/// An architecture, as data (see the module header).
#[derive(Clone, Debug)]
pub struct DecoderSpec {
    /// Sizes, heads, epsilon, vocabulary and special tokens.
    pub cfg: LlamaConfig,
    pub norm: NormKind,
    /// Norm weights are stored as `w` and applied as `1 + w` (Gemma in HF form; GGUF stores
    /// them folded): added at load, so the kernels see the weight they apply.
    pub norm_plus_one: bool,
    pub qkv_bias: bool,
    /// RMSNorm of every query and key head before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// A norm of the attention output and of the MLP output before each residual add (Gemma).
    pub sandwich_norms: bool,
    /// Attention and MLP both read the one norm of the block input; both add to the residual
    /// (Falcon).
    pub parallel_residual: bool,
    pub mlp: MlpKind,
    /// The embedding rows are multiplied by this (Gemma: √hidden).
    pub embed_scale: Option<f32>,
    /// The factor on `q·k` (usually `1/√head_dim`).
    pub attn_scale: f32,
    /// `cap * tanh(score / cap)` on attention scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// `cap * tanh(logit / cap)` on the output logits (Gemma 2).
    pub final_softcap: Option<f32>,
    pub layers: Vec<LayerSpec>,
    pub moe: Option<MoeSpec>,
}

impl DecoderSpec {
    /// Llama: every layer global, the config's RoPE, everything else off.
    pub fn llama(cfg: LlamaConfig) -> DecoderSpec {
        let rope = RopeSpec { theta: cfg.rope_theta, scaling: cfg.rope_scaling.clone(), table: None };
        let layers = vec![LayerSpec { window: None, rope, moe: false }; cfg.num_hidden_layers];
        DecoderSpec {
            attn_scale: 1.0 / (cfg.head_dim as f32).sqrt(),
            cfg,
            norm: NormKind::Rms,
            norm_plus_one: false,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            parallel_residual: false,
            mlp: MlpKind::GatedSilu,
            embed_scale: None,
            attn_softcap: None,
            final_softcap: None,
            layers,
            moe: None,
        }
    }

    /// The KV layout the engine allocates: one entry per layer, sliding layers marked.
    fn layer_kv(&self) -> Vec<LayerKv> {
        let c = &self.cfg;
        self.layers
            .iter()
            .map(|l| LayerKv {
                n_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                attention: match l.window {
                    Some(window) => AttentionKind::SlidingWindow { window },
                    None => AttentionKind::Global,
                },
            })
            .collect()
    }
}

/// A norm's weight and, for LayerNorm, its bias.
pub(crate) struct NormW {
    w: Tensor,
    b: Option<Tensor>,
}

/// A dense MLP: `w_in` is `[2 * inter, hidden]` (gate then up) for gated kinds, `[inter,
/// hidden]` for plain ones; `w_down` is `[hidden, inter]`.
pub(crate) struct Mlp {
    w_in: Weight,
    w_down: Weight,
    inter: usize,
}

pub(crate) enum Ffn {
    Dense(Mlp),
    /// `router`: `[experts, hidden]`; one gated MLP per expert.
    Moe {
        router: Weight,
        experts: Vec<Mlp>,
    },
}

pub(crate) struct Layer {
    spec: LayerSpec,
    attn_norm: NormW,
    /// `[(n_heads + 2 * n_kv_heads) * head_dim, hidden]`: q, k and v projections stacked.
    wqkv: Weight,
    /// `[1, (n_heads + 2 * n_kv_heads) * head_dim]`, when the projections have a bias.
    qkv_bias: Option<Tensor>,
    /// `(q_norm, k_norm)`, `[1, head_dim]` each.
    qk_norm: Option<(Tensor, Tensor)>,
    /// The RoPE kernels' frequency tables, when `spec.rope.table` is set.
    rope_freqs: Option<rope_table::Freqs>,
    wo: Weight,
    /// Sandwich norms: of the attention output, and of the MLP output.
    post_attn_norm: Option<NormW>,
    post_ffn_norm: Option<NormW>,
    /// The norm before the MLP (`None` with parallel branches, which share `attn_norm`).
    ffn_norm: Option<NormW>,
    ffn: Ffn,
}

/// A decoder-only transformer built from a [`DecoderSpec`] (one rank of it, with `tp`).
pub struct Decoder {
    /// The sizes this decoder runs: a tensor-parallel rank's heads and features.
    spec: DecoderSpec,
    info: ModelInfo,
    dev: Device,
    dtype: DType,
    /// The token embedding: dense, or kept quantized (its rows dequantized as they are read).
    /// `None` on tensor-parallel ranks other than 0, which receive the rows.
    embed: Option<Weight>,
    /// `[vocab, hidden]`, or this rank's vocabulary rows.
    lm_head: Weight,
    final_norm: NormW,
    layers: Vec<Layer>,
    /// This rank's group, when tensor-parallel.
    tp: Option<Arc<dyn Communicator>>,
    /// The checkpoint's FP8 KV-cache scales (compressed-tensors `kv_cache_scheme`: a
    /// `k_scale` and `v_scale` per layer), used by `--kv-cache-dtype fp8` instead of calibrating.
    kv_scales: Option<Vec<kiln_runtime::model::kv_fp8::KvScale>>,
}

impl Decoder {
    fn assemble(
        spec: DecoderSpec,
        dev: &Device,
        dtype: DType,
        embed: Option<Weight>,
        lm_head: Weight,
        final_norm: NormW,
        layers: Vec<Layer>,
    ) -> Decoder {
        let c = &spec.cfg;
        let info = ModelInfo {
            architecture: c.architecture.clone(),
            vocab_size: c.vocab_size,
            max_model_len: c.max_position_embeddings,
            eos_token_ids: c.eos_token_ids.clone(),
            layers: spec.layer_kv(),
            kv_dtype: dtype,
            kv_fp8: None,
        };
        Decoder { spec, info, dev: dev.clone(), dtype, embed, lm_head, final_norm, layers, tp: None, kv_scales: None }
    }

    pub fn spec(&self) -> &DecoderSpec {
        &self.spec
    }
}
