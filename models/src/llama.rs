//! The Llama architecture (Llama 2/3, SmolLM/SmolLM2, TinyLlama, Mistral without sliding
//! window), written with the `#[fused]` kernels in [`crate::kernels`] plus GEMMs and paged
//! attention from the runtime.
//!
//! One forward step takes a flat batch of new tokens from any number of sequences (prefill
//! chunks and decode tokens mixed, see [`ForwardBatch`]) and returns logits for the rows asked
//! for. The residual stream is carried in the storage dtype; every norm is fused with the
//! residual add that precedes it (`add_rms_norm`), and q/k/v come from one fused projection
//! whose column views feed RoPE directly.

use crate::arch::{is_false, is_str, Built, Checkpoint, ConfigSource};
use crate::config::{ConfigError, LlamaConfig, RopeScalingKind};
use crate::kernels::{activation, attention, epilogue, gather, norm, rope};
use crate::model::{KvCache, LayerKv, ModelError, ModelInfo, Runner};
use crate::weights::{GgufNaming, WeightSource};
use kiln_runtime::attention::PagedKv;
use kiln_runtime::device::linear::{gather_rows_quantized, linear, Weight};
use kiln_runtime::model::graphs::StepModel;
use kiln_runtime::model::step::{Heads, StepInputs};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};

/// llama.cpp's per-block tensor stems and their HF counterparts under `model.layers.N.`
/// (`.weight` and `.bias` alike). Architectures of the Llama family share them.
pub const GGUF_BLOCKS: [(&str, &str); 9] = [
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

/// Llama's GGUF naming: llama.cpp's converter permutes Q/K rows for its RoPE layout.
pub fn gguf_naming(c: &LlamaConfig) -> GgufNaming {
    GgufNaming { blocks: &GGUF_BLOCKS, permuted_qk: Some((c.num_attention_heads, c.num_key_value_heads)) }
}

/// The features of a Llama config kiln does not implement, refused with the key named.
pub fn refuse_unsupported(src: &ConfigSource<'_>, cfg: &LlamaConfig) -> Result<(), ConfigError> {
    src.refuse_hf("attention_bias", "a q/k/v/o bias", is_false)?;
    src.refuse_hf("mlp_bias", "an MLP bias", is_false)?;
    src.refuse_hf("sliding_window", "sliding-window attention", |_| false)?;
    src.refuse_hf("hidden_act", "an activation other than silu", is_str("silu"))?;
    src.refuse_gguf("attention.sliding_window", "sliding-window attention", |_| false)?;
    src.refuse_gguf("expert_count", "mixture of experts", |v| v.as_u64() == Some(0))?;
    if cfg.rope_scaling.as_ref().is_some_and(|s| s.kind == RopeScalingKind::Linear) {
        return Err(ConfigError::Unsupported { source_name: src.source_name(), what: "'rope_scaling': linear".into() });
    }
    Ok(())
}

/// The registry's constructor for `llama` (and `mistral` without a sliding window).
pub fn build(ckpt: &Checkpoint, dev: &Device, dtype: DType) -> Result<Built, ModelError> {
    let src = ckpt.config();
    let cfg = src.decoder().map_err(load)?;
    refuse_unsupported(&src, &cfg).map_err(|e| ModelError::Unsupported(e.to_string()))?;
    let weights = ckpt.weights(&gguf_naming(&cfg)).map_err(load)?;
    let model = Llama::load(cfg, &weights, dev, dtype, LlamaOptions::default())?;
    Ok(Built { model: Box::new(Runner::new(model)), weights })
}

pub(crate) fn load(e: impl std::fmt::Display) -> ModelError {
    ModelError::Load(e.to_string())
}

/// What members of the Llama family add to its layers.
#[derive(Clone, Copy, Debug, Default)]
pub struct LlamaOptions {
    /// q/k/v projections with a bias (Qwen2).
    pub qkv_bias: bool,
}

struct Layer {
    attn_norm: Tensor,
    /// `[(n_heads + 2 * n_kv_heads) * head_dim, hidden]`: q, k and v projections stacked.
    wqkv: Weight,
    /// `[1, (n_heads + 2 * n_kv_heads) * head_dim]`: the q, k and v biases, when present.
    qkv_bias: Option<Tensor>,
    wo: Weight,
    ffn_norm: Tensor,
    /// `[2 * intermediate, hidden]`: gate then up.
    w_gate_up: Weight,
    w_down: Weight,
}

pub struct Llama {
    cfg: LlamaConfig,
    info: ModelInfo,
    dev: Device,
    dtype: DType,
    /// The token embedding: dense, or kept quantized (its rows dequantized as they are read).
    embed: Weight,
    lm_head: Weight,
    final_norm: Tensor,
    layers: Vec<Layer>,
}

/// The activations of one step, `capacity` token rows each; a step of `n <= capacity` tokens
/// uses the first `n` rows.
pub struct Workspace {
    residual: [Tensor; 2],
    h: Tensor,
    qkv: Tensor,
    /// The q/k/v projection before its bias (models with a q/k/v bias only).
    qkv_raw: Option<Tensor>,
    q: Tensor,
    attn: Tensor,
    proj: Tensor,
    gate_up: Tensor,
    act: Tensor,
    /// The rows that need logits, gathered (when they are not all rows in order).
    picked: Tensor,
}

impl Llama {
    /// Build the model on `dev` from `w`, tensor by tensor, converting to `dtype` (f32 on the
    /// CPU). Every tensor is checked against its HF shape.
    pub fn load(
        cfg: LlamaConfig,
        w: &WeightSource,
        dev: &Device,
        dtype: DType,
        opts: LlamaOptions,
    ) -> Result<Llama, ModelError> {
        let (h, q, kv, ff) = (
            cfg.hidden_size,
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
            cfg.intermediate_size,
        );
        let up = |name: &str, shape: &[usize]| w.upload(name, shape, None, dev, dtype).map_err(load);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let (qn, kn, vn) =
                (format!("{p}.self_attn.q_proj"), format!("{p}.self_attn.k_proj"), format!("{p}.self_attn.v_proj"));
            let stacked = |parts: &[(&str, &[usize])]| w.weight_stacked(parts, dev, dtype).map_err(load);
            let proj = |name: &str, shape: &[usize]| w.weight(name, shape, dev, dtype).map_err(load);
            let qkv_bias = if opts.qkv_bias {
                let parts =
                    [(format!("{qn}.bias"), [1, q]), (format!("{kn}.bias"), [1, kv]), (format!("{vn}.bias"), [1, kv])];
                // Biases are vectors in the file; stacked as one-row matrices side by side.
                let b = Tensor::uninit(dev, dtype, 1, q + 2 * kv)?;
                let mut at = 0;
                for (name, [_, n]) in &parts {
                    let t = w.read(name, Some(&[*n]), None).map_err(load)?;
                    let bytes = t.bytes_as(dtype).map_err(load)?;
                    b.view_cols(at, *n)?.copy_from_host_bytes(&bytes)?;
                    at += n;
                }
                Some(b)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: up(&format!("{p}.input_layernorm.weight"), &[h])?,
                wqkv: stacked(&[
                    (&format!("{qn}.weight"), &[q, h]),
                    (&format!("{kn}.weight"), &[kv, h]),
                    (&format!("{vn}.weight"), &[kv, h]),
                ])?,
                qkv_bias,
                wo: proj(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?,
                ffn_norm: up(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                w_gate_up: stacked(&[
                    (&format!("{p}.mlp.gate_proj.weight"), &[ff, h]),
                    (&format!("{p}.mlp.up_proj.weight"), &[ff, h]),
                ])?,
                w_down: proj(&format!("{p}.mlp.down_proj.weight"), &[h, ff])?,
            });
        }
        let embed = w.weight("model.embed_tokens.weight", &[cfg.vocab_size, h], dev, dtype).map_err(load)?;
        // Tied when the config says so, or when the checkpoint has no head: HF's default for an
        // absent `tie_word_embeddings` is true, and a GGUF is tied exactly when it has no
        // `output.weight`. A tied checkpoint that also stores the head (a copy, as some
        // exporters write) has it marked used: HF ignores it too.
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            w.mark_used("lm_head.weight");
            embed.clone() // tied: the same storage
        } else {
            w.weight("lm_head.weight", &[cfg.vocab_size, h], dev, dtype).map_err(load)?
        };
        let final_norm = up("model.norm.weight", &[h])?;
        Ok(Llama::assemble(cfg, dev, dtype, embed, lm_head, final_norm, layers))
    }

    fn assemble(
        cfg: LlamaConfig,
        dev: &Device,
        dtype: DType,
        embed: Weight,
        lm_head: Weight,
        final_norm: Tensor,
        layers: Vec<Layer>,
    ) -> Llama {
        let info = ModelInfo {
            architecture: cfg.architecture.clone(),
            vocab_size: cfg.vocab_size,
            max_model_len: cfg.max_position_embeddings,
            eos_token_ids: cfg.eos_token_ids.clone(),
            layers: LayerKv::uniform(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim),
            kv_dtype: dtype,
        };
        Llama { cfg, info, dev: dev.clone(), dtype, embed, lm_head, final_norm, layers }
    }

    /// A model of `cfg`'s shapes with seeded random weights made on `dev` itself (see
    /// [`crate::synth`]): for speed work without the real weights. Ready to run.
    pub fn random(cfg: LlamaConfig, dev: &Device, dtype: DType, seed: u64) -> Result<Runner<Llama>, ModelError> {
        use crate::synth::{random_tensor, tensor_seed, Init};
        let c = &cfg;
        let (h, nh, nkv, hd, inter) =
            (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
        let mut n = 0u64;
        let mut t = |rows: usize, cols: usize, init: Init| {
            n += 1;
            random_tensor(dev, dtype, rows, cols, init, tensor_seed(seed, n))
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            layers.push(Layer {
                attn_norm: t(1, h, Init::Norm)?,
                wqkv: t((nh + 2 * nkv) * hd, h, Init::Linear { fan_in: h })?.into(),
                qkv_bias: None,
                wo: t(h, nh * hd, Init::Linear { fan_in: nh * hd })?.into(),
                ffn_norm: t(1, h, Init::Norm)?,
                w_gate_up: t(2 * inter, h, Init::Linear { fan_in: h })?.into(),
                w_down: t(h, inter, Init::Linear { fan_in: inter })?.into(),
            });
        }
        let embed = t(c.vocab_size, h, Init::Embedding)?;
        let lm_head =
            if c.tie_word_embeddings { embed.clone() } else { t(c.vocab_size, h, Init::Linear { fan_in: h })? };
        let final_norm = t(1, h, Init::Norm)?;
        Ok(Runner::new(Llama::assemble(cfg, dev, dtype, embed.into(), lm_head.into(), final_norm, layers)))
    }

    /// RoPE of q (`x`) into `out`, with the model's frequency schedule.
    fn rope_q(&self, x: &Tensor, pos: &Tensor, out: &mut Tensor) -> Result<(), ModelError> {
        let theta = self.cfg.rope_theta;
        let hd = self.cfg.head_dim as i32;
        match &self.cfg.rope_scaling {
            Some(s) if s.kind == RopeScalingKind::Llama3 => rope::rope_half_llama3::run(
                &self.dev,
                x,
                pos,
                theta,
                hd,
                s.factor,
                s.low_freq_factor,
                s.high_freq_factor,
                s.original_max_position_embeddings as f32,
                out,
            )?,
            _ => rope::rope_half::run(&self.dev, x, pos, theta, hd, out)?,
        }
        Ok(())
    }

    /// RoPE of the new keys and the KV-cache write of one layer, fused.
    fn store_kv(
        &self,
        k: &Tensor,
        v: &Tensor,
        inp: &StepInputs,
        k_pool: &mut Tensor,
        v_pool: &mut Tensor,
    ) -> Result<(), ModelError> {
        let theta = self.cfg.rope_theta;
        let hd = self.cfg.head_dim as i32;
        match &self.cfg.rope_scaling {
            Some(s) if s.kind == RopeScalingKind::Llama3 => rope::rope_kv_write_llama3::run(
                &self.dev,
                k,
                v,
                &inp.pos,
                &inp.slots,
                theta,
                hd,
                s.factor,
                s.low_freq_factor,
                s.high_freq_factor,
                s.original_max_position_embeddings as f32,
                k_pool,
                v_pool,
            )?,
            _ => rope::rope_kv_write::run(&self.dev, k, v, &inp.pos, &inp.slots, theta, hd, k_pool, v_pool)?,
        }
        Ok(())
    }
}

impl StepModel for Llama {
    type Workspace = Workspace;

    fn device(&self) -> &Device {
        &self.dev
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn heads(&self) -> Heads {
        Heads {
            n_heads: self.cfg.num_attention_heads,
            n_kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    fn workspace(&self, capacity: usize) -> Result<Workspace, ModelError> {
        let c = &self.cfg;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let t = |cols: usize| Tensor::uninit(&self.dev, self.dtype, capacity, cols);
        let has_bias = self.layers.iter().any(|l| l.qkv_bias.is_some());
        Ok(Workspace {
            residual: [t(c.hidden_size)?, t(c.hidden_size)?],
            h: t(c.hidden_size)?,
            qkv: t((nh + 2 * nkv) * hd)?,
            qkv_raw: if has_bias { Some(t((nh + 2 * nkv) * hd)?) } else { None },
            q: t(nh * hd)?,
            attn: t(nh * hd)?,
            proj: t(c.hidden_size)?,
            gate_up: t(2 * c.intermediate_size)?,
            act: t(c.intermediate_size)?,
            picked: t(c.hidden_size)?,
        })
    }

    fn step(
        &self,
        inp: &StepInputs,
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Tensor,
    ) -> Result<(), ModelError> {
        let c = &self.cfg;
        let n = inp.tokens();
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let eps = c.rms_norm_eps;
        let inter = c.intermediate_size;
        let rows = |t: &Tensor| t.view_rows(0, n);
        let [r0, r1] = &ws.residual;
        let (mut residual, mut next_residual) = (rows(r0)?, rows(r1)?);
        let (mut h, mut qkv, mut q, mut attn) = (rows(&ws.h)?, rows(&ws.qkv)?, rows(&ws.q)?, rows(&ws.attn)?);
        let (mut proj, mut gate_up, mut act) = (rows(&ws.proj)?, rows(&ws.gate_up)?, rows(&ws.act)?);

        match self.embed.as_dense() {
            Some(table) => gather::gather_rows::run(&self.dev, table, &inp.ids, &mut residual)?,
            None => gather_rows_quantized(&self.embed, &inp.ids, &mut residual)?,
        }
        norm::rms_norm::run(&self.dev, &residual, &self.layers[0].attn_norm, eps, &mut h)?;
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            match (&layer.qkv_bias, &ws.qkv_raw) {
                (Some(bias), Some(raw)) => {
                    let mut raw = rows(raw)?;
                    linear(&self.dev, &h, &layer.wqkv, &mut raw)?;
                    epilogue::bias_add::run(&self.dev, &raw, bias, &mut qkv)?;
                }
                _ => linear(&self.dev, &h, &layer.wqkv, &mut qkv)?,
            }
            self.rope_q(&qkv.view_cols(0, nh * hd)?, &inp.pos, &mut q)?;
            let (k_new, v_new) = (qkv.view_cols(nh * hd, nkv * hd)?, qkv.view_cols((nh + nkv) * hd, nkv * hd)?);
            self.store_kv(&k_new, &v_new, inp, &mut kv.k[l], &mut kv.v[l])?;
            let cache = PagedKv { k: &kv.k[l], v: &kv.v[l], head_dim: hd };
            attention::attn_causal::run(&self.dev, &q, &cache, &inp.plan, scale, &mut attn)?;
            linear(&self.dev, &attn, &layer.wo, &mut proj)?;
            norm::add_rms_norm::run(&self.dev, &proj, &residual, &layer.ffn_norm, eps, &mut next_residual, &mut h)?;
            std::mem::swap(&mut residual, &mut next_residual);

            linear(&self.dev, &h, &layer.w_gate_up, &mut gate_up)?;
            activation::silu_mul::run(
                &self.dev,
                &gate_up.view_cols(0, inter)?,
                &gate_up.view_cols(inter, inter)?,
                &mut act,
            )?;
            linear(&self.dev, &act, &layer.w_down, &mut proj)?;
            let next_norm = self.layers.get(l + 1).map_or(&self.final_norm, |nl| &nl.attn_norm);
            norm::add_rms_norm::run(&self.dev, &proj, &residual, next_norm, eps, &mut next_residual, &mut h)?;
            std::mem::swap(&mut residual, &mut next_residual);
        }
        // `h` now holds the final-normed hidden states; only the asked-for rows reach lm_head.
        let m = inp.logits_rows.cols();
        if m == 0 {
            return Ok(());
        }
        if inp.all_rows {
            linear(&self.dev, &h, &self.lm_head, logits)?;
        } else {
            let mut picked = ws.picked.view_rows(0, m)?;
            gather::gather_rows::run(&self.dev, &h, &inp.logits_rows, &mut picked)?;
            linear(&self.dev, &picked, &self.lm_head, logits)?;
        }
        Ok(())
    }
}
