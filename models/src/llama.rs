//! The Llama architecture (Llama 2/3, SmolLM/SmolLM2, TinyLlama, Mistral without sliding
//! window), written with the `#[fused]` kernels in [`crate::kernels`] plus GEMMs and paged
//! attention from the runtime.
//!
//! One forward step takes a flat batch of new tokens from any number of sequences (prefill
//! chunks and decode tokens mixed, see [`ForwardBatch`]) and returns logits for the rows asked
//! for. The residual stream is carried in the storage dtype; every norm is fused with the
//! residual add that precedes it (`add_rms_norm`), and q/k/v come from one fused projection
//! whose column views feed RoPE directly.

use crate::config::{LlamaConfig, RopeScalingKind};
use crate::graphs::{DecodeGraphs, StepModel};
use crate::kernels::{activation, attention, gather, norm, rope};
use crate::model::{CausalLm, ForwardBatch, KvCache, ModelError, ModelInfo};
use crate::step::{Heads, StepInputs};
use crate::weights::{HostTensor, Weights};
use kiln_codegen::ir::DType;
use kiln_runtime::attention::PagedKv;
use kiln_runtime::{matmul, Device, Tensor};
use std::sync::Mutex;

struct Layer {
    attn_norm: Tensor,
    /// `[(n_heads + 2 * n_kv_heads) * head_dim, hidden]`: q, k and v projections stacked.
    wqkv: Tensor,
    wo: Tensor,
    ffn_norm: Tensor,
    /// `[2 * intermediate, hidden]`: gate then up.
    w_gate_up: Tensor,
    w_down: Tensor,
}

pub struct Llama {
    cfg: LlamaConfig,
    info: ModelInfo,
    dev: Device,
    dtype: DType,
    embed: Tensor,
    lm_head: Tensor,
    final_norm: Tensor,
    layers: Vec<Layer>,
    /// Activation buffers of the last eager step, reused while a step fits in them.
    workspace: Mutex<Option<Workspace>>,
    /// Decode steps on a GPU, replayed from CUDA graphs.
    graphs: DecodeGraphs<Workspace>,
}

/// The activations of one step, `capacity` token rows each; a step of `n <= capacity` tokens
/// uses the first `n` rows.
pub struct Workspace {
    capacity: usize,
    residual: [Tensor; 2],
    h: Tensor,
    qkv: Tensor,
    q: Tensor,
    attn: Tensor,
    proj: Tensor,
    gate_up: Tensor,
    act: Tensor,
    /// The rows that need logits, gathered (when they are not all rows in order).
    picked: Tensor,
}

fn upload(dev: &Device, dtype: DType, t: &HostTensor) -> Result<Tensor, ModelError> {
    let (rows, cols) = match t.shape.as_slice() {
        [n] => (1, *n),
        [r, c] => (*r, *c),
        s => return Err(ModelError::Load(format!("expected a 1-D or 2-D tensor, got shape {s:?}"))),
    };
    Ok(Tensor::from_f32_as(dev, dtype, &t.data, rows, cols)?)
}

/// Stack 2-D host tensors along rows (they share their column count).
fn stack_rows(parts: &[&HostTensor]) -> Result<HostTensor, ModelError> {
    let cols = parts[0].shape[1];
    let mut data = Vec::with_capacity(parts.iter().map(|p| p.numel()).sum());
    let mut rows = 0;
    for p in parts {
        if p.shape.len() != 2 || p.shape[1] != cols {
            return Err(ModelError::Load(format!("cannot stack shapes {:?} and {:?}", parts[0].shape, p.shape)));
        }
        rows += p.shape[0];
        data.extend_from_slice(&p.data);
    }
    Ok(HostTensor { shape: vec![rows, cols], data })
}

impl Llama {
    /// Build the model on `dev`, converting weights to `dtype` (f32 on the CPU).
    pub fn new(cfg: LlamaConfig, mut w: Weights, dev: &Device, dtype: DType) -> Result<Llama, ModelError> {
        w.validate_llama(&cfg).map_err(|e| ModelError::Load(e.to_string()))?;
        if let Some(s) = &cfg.rope_scaling {
            if s.kind == RopeScalingKind::Linear {
                return Err(ModelError::Unsupported("linear RoPE scaling".into()));
            }
        }
        let untied_head = w.contains("lm_head.weight") && !cfg.tie_word_embeddings;
        let mut take = |name: &str| w.take(name).map_err(|e| ModelError::Load(e.to_string()));
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let q = take(&format!("{p}.self_attn.q_proj.weight"))?;
            let k = take(&format!("{p}.self_attn.k_proj.weight"))?;
            let v = take(&format!("{p}.self_attn.v_proj.weight"))?;
            let gate = take(&format!("{p}.mlp.gate_proj.weight"))?;
            let up = take(&format!("{p}.mlp.up_proj.weight"))?;
            layers.push(Layer {
                attn_norm: upload(dev, dtype, &take(&format!("{p}.input_layernorm.weight"))?)?,
                wqkv: upload(dev, dtype, &stack_rows(&[&q, &k, &v])?)?,
                wo: upload(dev, dtype, &take(&format!("{p}.self_attn.o_proj.weight"))?)?,
                ffn_norm: upload(dev, dtype, &take(&format!("{p}.post_attention_layernorm.weight"))?)?,
                w_gate_up: upload(dev, dtype, &stack_rows(&[&gate, &up])?)?,
                w_down: upload(dev, dtype, &take(&format!("{p}.mlp.down_proj.weight"))?)?,
            });
        }
        let embed = upload(dev, dtype, &take("model.embed_tokens.weight")?)?;
        let lm_head = if untied_head {
            upload(dev, dtype, &take("lm_head.weight")?)?
        } else {
            embed.clone() // tied: the same storage
        };
        let final_norm = upload(dev, dtype, &take("model.norm.weight")?)?;
        Ok(Llama::assemble(cfg, dev, dtype, embed, lm_head, final_norm, layers))
    }

    fn assemble(
        cfg: LlamaConfig,
        dev: &Device,
        dtype: DType,
        embed: Tensor,
        lm_head: Tensor,
        final_norm: Tensor,
        layers: Vec<Layer>,
    ) -> Llama {
        let info = ModelInfo {
            architecture: cfg.architecture.clone(),
            vocab_size: cfg.vocab_size,
            max_model_len: cfg.max_position_embeddings,
            eos_token_ids: cfg.eos_token_ids.clone(),
            num_layers: cfg.num_hidden_layers,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            kv_dtype: dtype,
        };
        Llama {
            cfg,
            info,
            dev: dev.clone(),
            dtype,
            embed,
            lm_head,
            final_norm,
            layers,
            workspace: Mutex::new(None),
            graphs: DecodeGraphs::default(),
        }
    }

    /// A model of `cfg`'s shapes with seeded random weights made on `dev` itself (see
    /// [`crate::synth`]): for speed work without the real weights.
    pub fn random(cfg: LlamaConfig, dev: &Device, dtype: DType, seed: u64) -> Result<Llama, ModelError> {
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
                wqkv: t((nh + 2 * nkv) * hd, h, Init::Linear { fan_in: h })?,
                wo: t(h, nh * hd, Init::Linear { fan_in: nh * hd })?,
                ffn_norm: t(1, h, Init::Norm)?,
                w_gate_up: t(2 * inter, h, Init::Linear { fan_in: h })?,
                w_down: t(h, inter, Init::Linear { fan_in: inter })?,
            });
        }
        let embed = t(c.vocab_size, h, Init::Embedding)?;
        let lm_head =
            if c.tie_word_embeddings { embed.clone() } else { t(c.vocab_size, h, Init::Linear { fan_in: h })? };
        let final_norm = t(1, h, Init::Norm)?;
        Ok(Llama::assemble(cfg, dev, dtype, embed, lm_head, final_norm, layers))
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
    fn vocab(&self) -> usize {
        self.cfg.vocab_size
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
        Ok(Workspace {
            capacity,
            residual: [t(c.hidden_size)?, t(c.hidden_size)?],
            h: t(c.hidden_size)?,
            qkv: t((nh + 2 * nkv) * hd)?,
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

        gather::gather_rows::run(&self.dev, &self.embed, &inp.ids, &mut residual)?;
        norm::rms_norm::run(&self.dev, &residual, &self.layers[0].attn_norm, eps, &mut h)?;
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            matmul(&self.dev, &h, &layer.wqkv, &mut qkv)?;
            self.rope_q(&qkv.view_cols(0, nh * hd)?, &inp.pos, &mut q)?;
            let (k_new, v_new) = (qkv.view_cols(nh * hd, nkv * hd)?, qkv.view_cols((nh + nkv) * hd, nkv * hd)?);
            self.store_kv(&k_new, &v_new, inp, &mut kv.k[l], &mut kv.v[l])?;
            let cache = PagedKv { k: &kv.k[l], v: &kv.v[l], head_dim: hd };
            attention::attn_causal::run(&self.dev, &q, &cache, &inp.plan, scale, &mut attn)?;
            matmul(&self.dev, &attn, &layer.wo, &mut proj)?;
            norm::add_rms_norm::run(&self.dev, &proj, &residual, &layer.ffn_norm, eps, &mut next_residual, &mut h)?;
            std::mem::swap(&mut residual, &mut next_residual);

            matmul(&self.dev, &h, &layer.w_gate_up, &mut gate_up)?;
            activation::silu_mul::run(
                &self.dev,
                &gate_up.view_cols(0, inter)?,
                &gate_up.view_cols(inter, inter)?,
                &mut act,
            )?;
            matmul(&self.dev, &act, &layer.w_down, &mut proj)?;
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
            matmul(&self.dev, &h, &self.lm_head, logits)?;
        } else {
            let mut picked = ws.picked.view_rows(0, m)?;
            gather::gather_rows::run(&self.dev, &h, &inp.logits_rows, &mut picked)?;
            matmul(&self.dev, &picked, &self.lm_head, logits)?;
        }
        Ok(())
    }
}

impl CausalLm for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.dev
    }

    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache, ModelError> {
        let width = self.cfg.num_key_value_heads * self.cfg.head_dim;
        let slots = num_blocks * block_size;
        let mut k = Vec::with_capacity(self.layers.len());
        let mut v = Vec::with_capacity(self.layers.len());
        for _ in &self.layers {
            k.push(Tensor::zeros(&self.dev, self.dtype, slots, width)?);
            v.push(Tensor::zeros(&self.dev, self.dtype, slots, width)?);
        }
        Ok(KvCache { k, v, block_size, num_blocks })
    }

    fn forward(&self, batch: &ForwardBatch<'_>, kv: &mut KvCache) -> Result<Tensor, ModelError> {
        batch.validate(self.cfg.vocab_size)?;
        if let Some(logits) = self.graphs.forward(self, batch, kv)? {
            return Ok(logits);
        }
        let inp = StepInputs::new(&self.dev, batch, kv, StepModel::heads(self))?;
        let n = inp.tokens();
        let mut slot = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|w| w.capacity < n) {
            // Grow to the next power of two so a run of growing prefills allocates rarely.
            *slot = None;
            *slot = Some(StepModel::workspace(self, n.next_power_of_two())?);
        }
        let ws = slot.as_mut().ok_or_else(|| ModelError::Batch("no workspace".into()))?;
        let mut logits = Tensor::uninit(&self.dev, self.dtype, inp.logits_rows.cols(), self.cfg.vocab_size)?;
        self.step(&inp, kv, ws, &mut logits)?;
        Ok(logits)
    }
}
