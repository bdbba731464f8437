//! Building a [`Decoder`] from a checkpoint: the tensors a [`DecoderSpec`] needs, found by the
//! architecture's [`Names`] (HF names; a GGUF source maps llama.cpp's names to these), each
//! checked against its shape, fused where the step wants them fused (q/k/v, gate/up).
//!
//! Invariant: every tensor the spec implies is read or explicitly marked unneeded (a tied head's
//! copy), so the loader's leftover check catches a feature the spec left off.

use super::{rope_table, Decoder, DecoderSpec, Ffn, Layer, Mlp, MlpKind, NormKind, NormW};
use crate::llama::load as load_err;
use crate::model::ModelError;
use crate::synth::{random_tensor, tensor_seed, Init};
use crate::weights::WeightSource;
use kiln_runtime::device::linear::Weight;
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};

/// An architecture's HF tensor names: `{prefix}.{N}.{stem}.weight|bias` for the blocks.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    pub embed: &'static str,
    pub final_norm: &'static str,
    pub lm_head: &'static str,
    /// The blocks' prefix, e.g. `model.layers`.
    pub layers: &'static str,
    /// Separate q, k, v projections; or `qkv`: one fused projection (Phi-3, Falcon).
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub qkv: Option<&'static str>,
    pub o: &'static str,
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    pub attn_norm: &'static str,
    /// The norm before the MLP (Llama's `post_attention_layernorm`, Gemma's
    /// `pre_feedforward_layernorm`).
    pub ffn_norm: &'static str,
    /// Sandwich norms (Gemma): after attention, after the MLP.
    pub post_attn_norm: &'static str,
    pub post_ffn_norm: &'static str,
    /// Separate gate and up projections; or `gate_up`: one fused projection (Phi-3).
    pub gate: &'static str,
    pub up: &'static str,
    pub gate_up: Option<&'static str>,
    pub down: &'static str,
    /// MoE: the router, and expert `E`'s projections at `{experts}.{E}.{gate|up|down}`.
    pub router: &'static str,
    pub experts: &'static str,
    pub expert_parts: [&'static str; 3],
}

impl Names {
    /// Llama's names (Mistral, Qwen, Gemma share most of them).
    pub const LLAMA: Names = Names {
        embed: "model.embed_tokens",
        final_norm: "model.norm",
        lm_head: "lm_head",
        layers: "model.layers",
        q: "self_attn.q_proj",
        k: "self_attn.k_proj",
        v: "self_attn.v_proj",
        qkv: None,
        o: "self_attn.o_proj",
        q_norm: "self_attn.q_norm",
        k_norm: "self_attn.k_norm",
        attn_norm: "input_layernorm",
        ffn_norm: "post_attention_layernorm",
        post_attn_norm: "post_attention_layernorm",
        post_ffn_norm: "post_feedforward_layernorm",
        gate: "mlp.gate_proj",
        up: "mlp.up_proj",
        gate_up: None,
        down: "mlp.down_proj",
        router: "mlp.gate",
        experts: "mlp.experts",
        expert_parts: ["gate_proj", "up_proj", "down_proj"],
    };
}

/// Reads tensors by their stems for one model.
struct Reader<'a> {
    w: &'a WeightSource,
    spec: &'a DecoderSpec,
    dev: &'a Device,
    dtype: DType,
}

impl Reader<'_> {
    fn up(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.w.upload(name, shape, None, self.dev, self.dtype).map_err(load_err)
    }

    fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight, ModelError> {
        self.w.weight(name, shape, self.dev, self.dtype).map_err(load_err)
    }

    fn stacked(&self, parts: &[(String, [usize; 2])]) -> Result<Weight, ModelError> {
        let parts: Vec<(&str, &[usize])> = parts.iter().map(|(n, s)| (n.as_str(), &s[..])).collect();
        self.w.weight_stacked(&parts, self.dev, self.dtype).map_err(load_err)
    }

    /// A norm weight of `n` values (plus one where the spec says so) and, for LayerNorm, its bias.
    fn norm(&self, stem: &str, n: usize) -> Result<NormW, ModelError> {
        let name = format!("{stem}.weight");
        let w = if self.spec.norm_plus_one { self.plus_one(&name, n)? } else { self.up(&name, &[n])? };
        let b = match self.spec.norm {
            NormKind::Layer => Some(self.up(&format!("{stem}.bias"), &[n])?),
            NormKind::Rms => None,
        };
        Ok(NormW { w, b })
    }

    fn plus_one(&self, name: &str, n: usize) -> Result<Tensor, ModelError> {
        let t = self.w.read(name, Some(&[n]), None).map_err(load_err)?;
        let mut v = t.to_f32().map_err(load_err)?;
        v.iter_mut().for_each(|x| *x += 1.0);
        Ok(Tensor::from_f32_as(self.dev, self.dtype, &v, 1, n)?)
    }

    /// Biases are vectors in the file; stacked as one-row matrices side by side.
    fn bias_row(&self, parts: &[(String, usize)]) -> Result<Tensor, ModelError> {
        let total = parts.iter().map(|p| p.1).sum();
        let b = Tensor::uninit(self.dev, self.dtype, 1, total)?;
        let mut at = 0;
        for (name, n) in parts {
            let t = self.w.read(name, Some(&[*n]), None).map_err(load_err)?;
            let bytes = t.bytes_as(self.dtype).map_err(load_err)?;
            b.view_cols(at, *n)?.copy_from_host_bytes(&bytes)?;
            at += n;
        }
        Ok(b)
    }

    fn mlp(&self, gate: &str, up: &str, fused: Option<&str>, down: &str, inter: usize) -> Result<Mlp, ModelError> {
        let h = self.spec.cfg.hidden_size;
        let w_in = match (self.spec.mlp, fused) {
            (MlpKind::Gelu, _) => self.weight(&format!("{up}.weight"), &[inter, h])?,
            (_, Some(f)) => self.weight(&format!("{f}.weight"), &[2 * inter, h])?,
            (_, None) => {
                self.stacked(&[(format!("{gate}.weight"), [inter, h]), (format!("{up}.weight"), [inter, h])])?
            }
        };
        Ok(Mlp { w_in, w_down: self.weight(&format!("{down}.weight"), &[h, inter])?, inter })
    }

    fn layer(&self, l: usize, n: &Names) -> Result<Layer, ModelError> {
        let spec = self.spec;
        let c = &spec.cfg;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let p = |stem: &str| format!("{}.{l}.{stem}", n.layers);
        let qkv_parts = match n.qkv {
            Some(f) => vec![(format!("{}.weight", p(f)), [q + 2 * kv, h])],
            None => vec![
                (format!("{}.weight", p(n.q)), [q, h]),
                (format!("{}.weight", p(n.k)), [kv, h]),
                (format!("{}.weight", p(n.v)), [kv, h]),
            ],
        };
        let wqkv = match &spec.layers[l].rope.table {
            // Partial rotary or an attention factor: q/k rows rearranged (see `rope_table`).
            Some(t) if !t.weights_unchanged(hd) => {
                if spec.qkv_bias || spec.qk_norm {
                    return Err(ModelError::Unsupported("partial rotary with a q/k/v bias or q/k norms".into()));
                }
                rope_table::qkv_weight(self.w, t, &qkv_parts, c, self.dev, self.dtype)?
            }
            _ if qkv_parts.len() == 1 => self.weight(&qkv_parts[0].0, &qkv_parts[0].1)?,
            _ => self.stacked(&qkv_parts)?,
        };
        let qkv_bias = match (spec.qkv_bias, n.qkv) {
            (false, _) => None,
            (true, Some(f)) => Some(self.bias_row(&[(format!("{}.bias", p(f)), q + 2 * kv)])?),
            (true, None) => Some(self.bias_row(&[
                (format!("{}.bias", p(n.q)), q),
                (format!("{}.bias", p(n.k)), kv),
                (format!("{}.bias", p(n.v)), kv),
            ])?),
        };
        let qk_norm = if spec.qk_norm {
            let (qn, kn) = (self.norm(&p(n.q_norm), hd)?, self.norm(&p(n.k_norm), hd)?);
            Some((qn.w, kn.w))
        } else {
            None
        };
        let sandwich = |stem: &str| if spec.sandwich_norms { self.norm(&p(stem), h).map(Some) } else { Ok(None) };
        let ffn = if spec.layers[l].moe {
            let m =
                spec.moe.ok_or_else(|| ModelError::Load(format!("layer {l} is MoE but the spec has no MoeSpec")))?;
            let router = self.weight(&format!("{}.weight", p(n.router)), &[m.experts, h])?;
            let experts = (0..m.experts)
                .map(|e| {
                    let part = |i: usize| p(&format!("{}.{e}.{}", n.experts, n.expert_parts[i]));
                    self.mlp(&part(0), &part(1), None, &part(2), m.intermediate)
                })
                .collect::<Result<_, _>>()?;
            Ffn::Moe { router, experts }
        } else {
            let fused = n.gate_up.map(p);
            Ffn::Dense(self.mlp(&p(n.gate), &p(n.up), fused.as_deref(), &p(n.down), c.intermediate_size)?)
        };
        Ok(Layer {
            spec: spec.layers[l].clone(),
            attn_norm: self.norm(&p(n.attn_norm), h)?,
            wqkv,
            qkv_bias,
            qk_norm,
            rope_freqs: rope_table::device_freqs(spec.layers[l].rope.table.as_ref(), c, self.dev)?,
            wo: self.weight(&format!("{}.weight", p(n.o)), &[h, q])?,
            post_attn_norm: sandwich(n.post_attn_norm)?,
            post_ffn_norm: sandwich(n.post_ffn_norm)?,
            ffn_norm: if spec.parallel_residual { None } else { Some(self.norm(&p(n.ffn_norm), h)?) },
            ffn,
        })
    }
}

impl Decoder {
    /// Build the model on `dev` from `w`, tensor by tensor, converting to `dtype` (f32 on the
    /// CPU). Every tensor is checked against the shape the spec implies.
    pub fn load(
        spec: DecoderSpec,
        names: &Names,
        w: &WeightSource,
        dev: &Device,
        dtype: DType,
    ) -> Result<Decoder, ModelError> {
        if spec.layers.len() != spec.cfg.num_hidden_layers {
            return Err(ModelError::Load(format!(
                "{} layer specs for {} layers",
                spec.layers.len(),
                spec.cfg.num_hidden_layers
            )));
        }
        let r = Reader { w, spec: &spec, dev, dtype };
        let c = &spec.cfg;
        let layers = (0..c.num_hidden_layers).map(|l| r.layer(l, names)).collect::<Result<Vec<_>, _>>()?;
        let embed_name = format!("{}.weight", names.embed);
        let head_name = format!("{}.weight", names.lm_head);
        let embed = r.weight(&embed_name, &[c.vocab_size, c.hidden_size])?;
        // Tied when the config says so, or when the checkpoint has no head: HF's default for an
        // absent `tie_word_embeddings` is true, and a GGUF is tied exactly when it has no
        // `output.weight`. A tied checkpoint that also stores the head (a copy, as some
        // exporters write) has it marked used: HF ignores it too.
        let lm_head = if c.tie_word_embeddings || !w.contains(&head_name) {
            w.mark_used(&head_name);
            embed.clone() // tied: the same storage
        } else {
            r.weight(&head_name, &[c.vocab_size, c.hidden_size])?
        };
        let final_norm = r.norm(names.final_norm, c.hidden_size)?;
        Ok(Decoder::assemble(spec, dev, dtype, embed, lm_head, final_norm, layers))
    }

    /// A model of `spec`'s shapes (dense Llama-like layers) with seeded random weights made on
    /// `dev` itself (see [`crate::synth`]): for speed work without the real weights.
    pub fn random(spec: DecoderSpec, dev: &Device, dtype: DType, seed: u64) -> Result<Decoder, ModelError> {
        let c = &spec.cfg;
        let (h, nh, nkv, hd, inter) =
            (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
        let mut n = 0u64;
        let mut t = |rows: usize, cols: usize, init: Init| {
            n += 1;
            random_tensor(dev, dtype, rows, cols, init, tensor_seed(seed, n))
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let attn_norm = NormW { w: t(1, h, Init::Norm)?, b: None };
            let wqkv = t((nh + 2 * nkv) * hd, h, Init::Linear { fan_in: h })?.into();
            let wo = t(h, nh * hd, Init::Linear { fan_in: nh * hd })?.into();
            let ffn_norm = NormW { w: t(1, h, Init::Norm)?, b: None };
            let w_in = t(2 * inter, h, Init::Linear { fan_in: h })?.into();
            let w_down = t(h, inter, Init::Linear { fan_in: inter })?.into();
            layers.push(Layer {
                spec: spec.layers[l].clone(),
                attn_norm,
                wqkv,
                qkv_bias: None,
                qk_norm: None,
                rope_freqs: rope_table::device_freqs(spec.layers[l].rope.table.as_ref(), c, dev)?,
                wo,
                post_attn_norm: None,
                post_ffn_norm: None,
                ffn_norm: Some(ffn_norm),
                ffn: Ffn::Dense(Mlp { w_in, w_down, inter }),
            });
        }
        let embed = t(c.vocab_size, h, Init::Embedding)?;
        let lm_head =
            if c.tie_word_embeddings { embed.clone() } else { t(c.vocab_size, h, Init::Linear { fan_in: h })? };
        let final_norm = NormW { w: t(1, h, Init::Norm)?, b: None };
        Ok(Decoder::assemble(spec, dev, dtype, embed.into(), lm_head.into(), final_norm, layers))
    }
}
