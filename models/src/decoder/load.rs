//! Building a [`Decoder`] from a checkpoint: the tensors a [`DecoderSpec`] needs, found by the
//! architecture's [`Names`] (HF names; a GGUF source maps llama.cpp's names to these), each
//! checked against its shape, fused where the step wants them fused (q/k/v, gate/up).
//!
//! Invariant: every tensor the spec implies is read or explicitly marked unneeded (a tied head's
//! copy), so the loader's leftover check catches a feature the spec left off.

use super::tp::{rows_or_whole, shifted, RankPlan};
use super::{rope_table, Decoder, DecoderSpec, Ffn, Layer, Mlp, MlpKind, NormKind, NormW};
use crate::config::LlamaConfig;
use crate::llama::load as load_err;
use crate::model::ModelError;
use crate::weights::{Part, WeightSource};
use kiln_runtime::device::linear::Weight;
use kiln_runtime::model::kv_fp8::KvScale;
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

/// Reads tensors by their stems for one model (one rank's parts of them, with a plan).
struct Reader<'a> {
    w: &'a WeightSource,
    /// The whole model's spec: the shapes the checkpoint's tensors must have.
    spec: &'a DecoderSpec,
    plan: Option<&'a RankPlan>,
    dev: &'a Device,
    dtype: DType,
}

/// A tensor's name, its whole HF shape and the part read of it.
type NamedPart = (String, [usize; 2], Part);

impl Reader<'_> {
    fn up(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.w.upload(name, shape, &Part::Whole, self.dev, self.dtype).map_err(load_err)
    }

    fn weight(&self, name: &str, shape: &[usize], part: Part) -> Result<Weight, ModelError> {
        self.w.weight(name, shape, &part, self.dev, self.dtype).map_err(load_err)
    }

    fn stacked(&self, parts: &[NamedPart]) -> Result<Weight, ModelError> {
        let parts: Vec<_> = parts.iter().map(|(n, s, p)| (n.as_str(), &s[..], p.clone())).collect();
        self.w.weight_stacked(&parts, self.dev, self.dtype).map_err(load_err)
    }

    /// Rows `r` of the plan's ranges, or the whole tensor without a plan.
    fn rows(&self, r: impl FnOnce(&RankPlan) -> std::ops::Range<usize>) -> Part {
        rows_or_whole(self.plan, r)
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

    /// Biases are vectors in the file; stacked as one-row matrices side by side. `parts` are
    /// `(name, whole length, part read)`.
    fn bias_row(&self, parts: &[(String, usize, Part)]) -> Result<Tensor, ModelError> {
        let read = parts
            .iter()
            .map(|(name, n, part)| self.w.read_part(name, Some(&[*n]), part))
            .collect::<Result<Vec<_>, _>>()
            .map_err(load_err)?;
        let total = read.iter().map(|t| t.numel()).sum();
        let b = Tensor::uninit(self.dev, self.dtype, 1, total)?;
        let mut at = 0;
        for t in read {
            let bytes = t.bytes_as(self.dtype).map_err(load_err)?;
            b.view_cols(at, t.numel())?.copy_from_host_bytes(&bytes)?;
            at += t.numel();
        }
        Ok(b)
    }

    /// A dense MLP of `inter` features (`moe`: an expert's), this rank's features of it.
    fn mlp(&self, names: [&str; 3], fused: Option<&str>, inter: usize, moe: bool) -> Result<Mlp, ModelError> {
        let [gate, up, down] = names;
        let h = self.spec.cfg.hidden_size;
        let mine = self.plan.map_or(0..inter, |p| p.inter(moe));
        let rows = || self.rows(|p| p.inter(moe));
        let w_in = match (self.spec.mlp, fused) {
            (MlpKind::Gelu, _) => self.weight(&format!("{up}.weight"), &[inter, h], rows())?,
            (_, Some(f)) if self.plan.is_none() => self.weight(&format!("{f}.weight"), &[2 * inter, h], Part::Whole)?,
            (_, Some(f)) => self.stacked(&[
                (format!("{f}.weight"), [2 * inter, h], Part::Rows(mine.clone())),
                (format!("{f}.weight"), [2 * inter, h], Part::Rows(shifted(&mine, inter))),
            ])?,
            (_, None) => self.stacked(&[
                (format!("{gate}.weight"), [inter, h], rows()),
                (format!("{up}.weight"), [inter, h], rows()),
            ])?,
        };
        let down_part = self.plan.map_or(Part::Whole, |p| Part::Cols(p.inter(moe)));
        Ok(Mlp { w_in, w_down: self.weight(&format!("{down}.weight"), &[h, inter], down_part)?, inter: mine.len() })
    }

    fn layer(&self, l: usize, n: &Names) -> Result<Layer, ModelError> {
        let spec = self.spec;
        let c = &spec.cfg;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let p = |stem: &str| format!("{}.{l}.{stem}", n.layers);
        // This rank's rows of q, of k and of v (all of them without a plan).
        let [qr, kr, vr] = self.plan.map_or([0..q, 0..kv, 0..kv], |p| p.qkv_rows(hd));
        // The head counts of what this rank reads (the RoPE tables and folds are per head).
        let rank_cfg =
            LlamaConfig { num_attention_heads: qr.len() / hd, num_key_value_heads: kr.len() / hd, ..c.clone() };
        let qkv_parts: Vec<NamedPart> = match n.qkv {
            Some(f) if self.plan.is_none() => vec![(format!("{}.weight", p(f)), [q + 2 * kv, h], Part::Whole)],
            Some(f) => [qr.clone(), shifted(&kr, q), shifted(&vr, q + kv)]
                .into_iter()
                .map(|r| (format!("{}.weight", p(f)), [q + 2 * kv, h], Part::Rows(r)))
                .collect(),
            None => vec![
                (format!("{}.weight", p(n.q)), [q, h], self.rows(|_| qr.clone())),
                (format!("{}.weight", p(n.k)), [kv, h], self.rows(|_| kr.clone())),
                (format!("{}.weight", p(n.v)), [kv, h], self.rows(|_| vr.clone())),
            ],
        };
        let wqkv = match &spec.layers[l].rope.table {
            // Partial rotary or an attention factor: q/k rows rearranged (see `rope_table`).
            Some(t) if !t.weights_unchanged(hd) => {
                if spec.qkv_bias || spec.qk_norm {
                    return Err(ModelError::Unsupported("partial rotary with a q/k/v bias or q/k norms".into()));
                }
                rope_table::qkv_weight(self.w, t, &qkv_parts, &rank_cfg, self.dev, self.dtype)?
            }
            _ if qkv_parts.len() == 1 => {
                let (name, shape, part) = &qkv_parts[0];
                self.weight(name, shape, part.clone())?
            }
            _ => self.stacked(&qkv_parts)?,
        };
        let qkv_bias = match (spec.qkv_bias, n.qkv) {
            (false, _) => None,
            (true, Some(f)) => {
                let name = format!("{}.bias", p(f));
                let parts = [qr.clone(), shifted(&kr, q), shifted(&vr, q + kv)]
                    .map(|r| (name.clone(), q + 2 * kv, Part::Rows(r)));
                Some(self.bias_row(&parts)?)
            }
            (true, None) => Some(self.bias_row(&[
                (format!("{}.bias", p(n.q)), q, Part::Rows(qr.clone())),
                (format!("{}.bias", p(n.k)), kv, Part::Rows(kr.clone())),
                (format!("{}.bias", p(n.v)), kv, Part::Rows(vr.clone())),
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
            let router = self.weight(&format!("{}.weight", p(n.router)), &[m.experts, h], Part::Whole)?;
            let experts = (0..m.experts)
                .map(|e| {
                    let part = |i: usize| p(&format!("{}.{e}.{}", n.experts, n.expert_parts[i]));
                    self.mlp([&part(0), &part(1), &part(2)], None, m.intermediate, true)
                })
                .collect::<Result<_, _>>()?;
            Ffn::Moe { router, experts }
        } else {
            let fused = n.gate_up.map(p);
            Ffn::Dense(self.mlp([&p(n.gate), &p(n.up), &p(n.down)], fused.as_deref(), c.intermediate_size, false)?)
        };
        Ok(Layer {
            spec: spec.layers[l].clone(),
            attn_norm: self.norm(&p(n.attn_norm), h)?,
            wqkv,
            qkv_bias,
            qk_norm,
            rope_freqs: rope_table::device_freqs(spec.layers[l].rope.table.as_ref(), &rank_cfg, self.dev)?,
            wo: self.weight(
                &format!("{}.weight", p(n.o)),
                &[h, q],
                self.plan.map_or(Part::Whole, |pl| Part::Cols(pl.o_cols(hd))),
            )?,
            post_attn_norm: sandwich(n.post_attn_norm)?,
            post_ffn_norm: sandwich(n.post_ffn_norm)?,
            ffn_norm: if spec.parallel_residual { None } else { Some(self.norm(&p(n.ffn_norm), h)?) },
            ffn,
        })
    }
}

/// The checkpoint's FP8 KV-cache scales, when it stores them: a one-value `k_scale` and
/// `v_scale` beside each layer's attention projections (compressed-tensors `kv_cache_scheme`;
/// the stored byte times the scale is the value). All layers or none.
fn checkpoint_kv_scales(w: &WeightSource, n: &Names, layers: usize) -> Result<Option<Vec<KvScale>>, ModelError> {
    let attn = n.k.rsplit_once('.').map_or(n.k, |(stem, _)| stem);
    let name = |l: usize, which: &str| format!("{}.{l}.{attn}.{which}", n.layers);
    if !w.contains(&name(0, "k_scale")) {
        return Ok(None);
    }
    let one = |t: String| -> Result<f32, ModelError> {
        let v = w.read(&t, None, None).and_then(|s| s.to_f32()).map_err(load_err)?;
        match v[..] {
            [x] if x > 0.0 && x.is_finite() => Ok(x),
            _ => Err(ModelError::Load(format!("`{t}` must be one positive finite value, got {v:?}"))),
        }
    };
    (0..layers)
        .map(|l| Ok(KvScale { k: one(name(l, "k_scale"))?, v: one(name(l, "v_scale"))? }))
        .collect::<Result<_, _>>()
        .map(Some)
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
        let plan = w.tp().map(|comm| RankPlan::new(&spec, comm.rank(), comm.world())).transpose()?;
        let r = Reader { w, spec: &spec, plan: plan.as_ref(), dev, dtype };
        let c = &spec.cfg;
        let layers = (0..c.num_hidden_layers).map(|l| r.layer(l, names)).collect::<Result<Vec<_>, _>>()?;
        let embed_name = format!("{}.weight", names.embed);
        let head_name = format!("{}.weight", names.lm_head);
        let (vocab, h) = (c.vocab_size, c.hidden_size);
        // The embedding lives on rank 0 alone (its rows are broadcast each step).
        let embed = match &plan {
            Some(p) if p.rank != 0 => {
                w.mark_used(&embed_name);
                None
            }
            // Gathered by rows, so never in a GPU product form (a Q4_K table stays dense there).
            _ => Some(r.w.table(&embed_name, &[vocab, h], &Part::Whole, dev, dtype).map_err(load_err)?),
        };
        // Tied when the config says so, or when the checkpoint has no head: HF's default for an
        // absent `tie_word_embeddings` is true, and a GGUF is tied exactly when it has no
        // `output.weight`. A tied checkpoint that also stores the head (a copy, as some
        // exporters write) has it marked used: HF ignores it too.
        let tied = c.tie_word_embeddings || !w.contains(&head_name);
        let lm_head = match (&plan, tied, &embed) {
            (None, true, Some(e)) => e.clone(), // tied: the same storage
            (_, true, _) => r.weight(&embed_name, &[vocab, h], r.rows(|p| p.vocab.clone()))?,
            (_, false, _) => r.weight(&head_name, &[vocab, h], r.rows(|p| p.vocab.clone()))?,
        };
        if tied {
            w.mark_used(&head_name);
        }
        let final_norm = r.norm(names.final_norm, c.hidden_size)?;
        let kv_scales = checkpoint_kv_scales(w, names, c.num_hidden_layers)?;
        let spec = match &plan {
            Some(p) => p.rank_spec(&spec),
            None => spec,
        };
        let mut model = Decoder::assemble(spec, dev, dtype, embed, lm_head, final_norm, layers);
        model.tp = w.tp().cloned();
        model.kv_scales = kv_scales;
        Ok(model)
    }
}
