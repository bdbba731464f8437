//! Synthetic models: real models' shapes with seeded random weights, for speed work where the
//! real weights are not at hand (a decode step's speed depends only on the shapes). Presets
//! name the shapes; [`random_tensor`] fills one weight on the device itself (no host copy), so
//! an 8B-shaped model is ready in seconds.
//!
//! Weights: projections uniform in `±sqrt(3 / fan_in)` (unit variance in, unit variance out),
//! norms 1, embeddings `±0.05`; tensor `n` (counted from 1 in the order [`crate::decoder::Decoder::random`]
//! makes them: per layer attn_norm, wqkv, wo, ffn_norm, w_gate_up, w_down; then the embedding,
//! an untied lm_head, the final norm) is filled with seed [`tensor_seed`]`(seed, n)`.
//! [`write_hf_dir`] writes the same weights as an HF checkpoint (`kiln synth-model`), so a
//! file-loaded synthetic model equals the `synth:` one bit for bit.

use crate::config::{LlamaConfig, RopeScaling, RopeScalingKind};
use kiln_runtime::device::device_kernels::fill_uniform;
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};

/// The names `--preset` / `synth:` accept.
pub const PRESETS: [&str; 3] = ["llama3-8b", "llama3.2-1b", "smollm2-135m"];

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
        "llama3.2-1b" => LlamaConfig {
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 64,
            vocab_size: 128_256,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(RopeScaling {
                kind: RopeScalingKind::Llama3,
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            max_position_embeddings: 131_072,
            tie_word_embeddings: true,
            bos_token_id: Some(128_000),
            eos_token_ids: vec![128_001, 128_008, 128_009],
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
    Linear {
        fan_in: usize,
    },
    Norm,
    Embedding,
}

/// The fill seed of tensor `n` of a synthetic model with seed `seed`.
pub fn tensor_seed(seed: u64, n: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9).wrapping_add(n << 32)
}

impl Init {
    /// The fill's interval.
    pub fn range(self) -> (f32, f32) {
        match self {
            Init::Linear { fan_in } => {
                let a = (3.0 / fan_in as f32).sqrt();
                (-a, a)
            }
            Init::Norm => (1.0, 1.0),
            Init::Embedding => (-0.05, 0.05),
        }
    }
}

/// A `rows × cols` weight on `dev`, filled on the device.
pub fn random_tensor(
    dev: &Device,
    dtype: DType,
    rows: usize,
    cols: usize,
    init: Init,
    seed: u64,
) -> Result<Tensor, crate::model::ModelError> {
    let mut t = Tensor::uninit(dev, dtype, rows, cols)?;
    let (lo, hi) = init.range();
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

/// One tensor of the HF checkpoint: a slice of synthetic tensor `n` (HF stores the fused
/// q/k/v and gate/up projections as separate tensors).
struct HfTensor {
    name: String,
    shape: Vec<usize>,
    n: u64,
    /// First element within tensor `n`.
    offset: u64,
    init: Init,
}

fn hf_tensors(c: &LlamaConfig) -> Vec<HfTensor> {
    let (h, nh, nkv, hd, inter) =
        (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
    let mut v = vec![];
    let mut push = |name: String, shape: Vec<usize>, n: u64, offset: usize, init: Init| {
        v.push(HfTensor { name, shape, n, offset: offset as u64, init })
    };
    for l in 0..c.num_hidden_layers {
        let (p, n0) = (format!("model.layers.{l}"), 6 * l as u64);
        let lin = Init::Linear { fan_in: h };
        push(format!("{p}.input_layernorm.weight"), vec![h], n0 + 1, 0, Init::Norm);
        push(format!("{p}.self_attn.q_proj.weight"), vec![nh * hd, h], n0 + 2, 0, lin);
        push(format!("{p}.self_attn.k_proj.weight"), vec![nkv * hd, h], n0 + 2, nh * hd * h, lin);
        push(format!("{p}.self_attn.v_proj.weight"), vec![nkv * hd, h], n0 + 2, (nh + nkv) * hd * h, lin);
        push(format!("{p}.self_attn.o_proj.weight"), vec![h, nh * hd], n0 + 3, 0, Init::Linear { fan_in: nh * hd });
        push(format!("{p}.post_attention_layernorm.weight"), vec![h], n0 + 4, 0, Init::Norm);
        push(format!("{p}.mlp.gate_proj.weight"), vec![inter, h], n0 + 5, 0, lin);
        push(format!("{p}.mlp.up_proj.weight"), vec![inter, h], n0 + 5, inter * h, lin);
        push(format!("{p}.mlp.down_proj.weight"), vec![h, inter], n0 + 6, 0, Init::Linear { fan_in: inter });
    }
    let mut n = 6 * c.num_hidden_layers as u64;
    n += 1;
    push("model.embed_tokens.weight".into(), vec![c.vocab_size, h], n, 0, Init::Embedding);
    if !c.tie_word_embeddings {
        n += 1;
        push("lm_head.weight".into(), vec![c.vocab_size, h], n, 0, Init::Linear { fan_in: h });
    }
    push("model.norm.weight".into(), vec![h], n + 1, 0, Init::Norm);
    v
}

/// Write the synthetic model of `cfg` (seed `seed`) as an HF checkpoint directory:
/// `config.json` and `model.safetensors` in `dtype`, streamed tensor by tensor (an 8B model
/// never sits in memory whole). Returns the files written.
pub fn write_hf_dir(
    cfg: &LlamaConfig,
    dtype: DType,
    seed: u64,
    out: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, String> {
    use std::io::Write;
    let st_dtype = match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        d => return Err(format!("a checkpoint holds f32, f16 or bf16, not {d}")),
    };
    let size = dtype.size_bytes();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let tensors = hf_tensors(cfg);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut at = 0usize;
    for t in &tensors {
        let bytes = t.shape.iter().product::<usize>() * size;
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": st_dtype, "shape": t.shape, "data_offsets": [at, at + bytes]}),
        );
        at += bytes;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    while !head.len().is_multiple_of(8) {
        head.push(b' '); // the data section starts 8-aligned
    }
    let path = out.join(crate::safetensors_io::SINGLE_FILE);
    let tmp = out.join(format!(".model.safetensors.partial-{}", std::process::id()));
    let io = |e: std::io::Error| format!("{}: {e}", tmp.display());
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&tmp).map_err(io)?);
    f.write_all(&(head.len() as u64).to_le_bytes()).map_err(io)?;
    f.write_all(&head).map_err(io)?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = Vec::with_capacity(CHUNK as usize * size);
    for t in &tensors {
        let (lo, hi) = t.init.range();
        let s = tensor_seed(seed, t.n);
        let count = t.shape.iter().product::<usize>() as u64;
        let mut i = 0;
        while i < count {
            let end = (i + CHUNK).min(count);
            buf.clear();
            for j in i..end {
                let x = kiln_runtime::device::device_kernels::uniform_value(s, t.offset + j, lo, hi);
                match dtype {
                    DType::F32 => buf.extend_from_slice(&x.to_le_bytes()),
                    DType::F16 => buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
                    _ => buf.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
                }
            }
            f.write_all(&buf).map_err(io)?;
            i = end;
        }
    }
    f.flush().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut json = cfg.to_hf_config_json();
    json["torch_dtype"] = serde_json::json!(match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        _ => "bfloat16",
    });
    let cfg_path = out.join(crate::convert::CONFIG_FILE);
    crate::convert::write_json(&cfg_path, &json).map_err(|e| e.to_string())?;
    Ok(vec![path, cfg_path])
}
