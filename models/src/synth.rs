//! Synthetic models: real models' shapes with seeded random weights, for speed work where the
//! real weights are not at hand (a decode step's speed depends only on the shapes). Presets
//! name the shapes; [`random_tensor`] fills one weight on the device itself (no host copy), so
//! an 8B-shaped model is ready in seconds.
//!
//! Weights: projections uniform in `±sqrt(3 / fan_in)` (unit variance in, unit variance out),
//! norms 1, embeddings `±0.05`; every tensor gets its own seed, a function of the model seed
//! and the tensor's index.

use crate::config::{LlamaConfig, RopeScaling, RopeScalingKind};
use kiln_codegen::ir::DType;
use kiln_runtime::device_kernels::fill_uniform;
use kiln_runtime::{Device, Tensor};

/// The names `--preset` / `synth:` accept.
pub const PRESETS: [&str; 2] = ["llama3-8b", "smollm2-135m"];

pub fn preset(name: &str) -> Option<LlamaConfig> {
    Some(match name {
        "llama3-8b" => LlamaConfig {
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            vocab_size: 128_256,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(RopeScaling {
                kind: RopeScalingKind::Llama3,
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            max_position_embeddings: 8192,
            tie_word_embeddings: false,
            bos_token_id: Some(128_000),
            eos_token_ids: vec![128_001, 128_009],
            architecture: "llama".into(),
        },
        "smollm2-135m" => LlamaConfig {
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            vocab_size: 49_152,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            architecture: "llama".into(),
        },
        _ => return None,
    })
}

/// What a weight is, for its initialisation.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// A projection with this many inputs.
    Linear { fan_in: usize },
    Norm,
    Embedding,
}

/// A `rows × cols` weight on `dev`, filled on the device.
pub fn random_tensor(dev: &Device, dtype: DType, rows: usize, cols: usize, init: Init, seed: u64) -> Result<Tensor, crate::model::ModelError> {
    let mut t = Tensor::uninit(dev, dtype, rows, cols)?;
    let (lo, hi) = match init {
        Init::Linear { fan_in } => {
            let a = (3.0 / fan_in as f32).sqrt();
            (-a, a)
        }
        Init::Norm => (1.0, 1.0),
        Init::Embedding => (-0.05, 0.05),
    };
    fill_uniform(&mut t, seed, lo, hi).map_err(|e| crate::model::ModelError::Load(e.to_string()))?;
    Ok(t)
}

/// The parameter count of a Llama config (for reports).
pub fn param_count(c: &LlamaConfig) -> u64 {
    let (h, i, l) = (c.hidden_size as u64, c.intermediate_size as u64, c.num_hidden_layers as u64);
    let qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) as u64 * c.head_dim as u64;
    let o = c.num_attention_heads as u64 * c.head_dim as u64;
    let per_layer = h * qkv + o * h + 3 * h * i + 2 * h;
    let embed = c.vocab_size as u64 * h;
    l * per_layer + embed + h + if c.tie_word_embeddings { 0 } else { embed }
}
