//! One forward step of a [`Decoder`]: a flat batch of new tokens from any number of sequences
//! (prefill chunks and decode tokens mixed) in, logits for the rows asked for out.
//!
//! The residual stream is carried in the storage dtype; every norm of the residual is fused with
//! the add that precedes it (`add_rms_norm`, or `add2_layer_norm` for parallel branches), and
//! q/k/v come from one fused projection whose column views feed RoPE directly. Per-layer facts
//! (window, RoPE base, MoE) come from the layer's [`super::LayerSpec`]; nothing here branches
//! on an architecture's name.

use super::normed::{quant_rows, Normed, QuantRows};
use super::{moe, Decoder, Ffn, Layer, Mlp, MlpKind, NormKind, NormW, RopeSpec};
use crate::config::RopeScalingKind;
use crate::kernels::{activation, attention, epilogue, gather, norm, qk_norm_rope, rope};
use crate::model::{KvCache, ModelError, ModelInfo};
use kiln_runtime::attention::PagedKv;
use kiln_runtime::device::linear::{gather_rows_quantized, linear};
use kiln_runtime::model::graphs::StepModel;
use kiln_runtime::model::kv_fp8;
use kiln_runtime::model::step::{Heads, StepInputs};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};

/// Where a layer's new K and V go: the cache pools at the tokens' slots, or, for an FP8 cache,
/// the staging rows (`StepInputs::kv_stage`); `head_rows` are the `(k_row, v_row)` targets of
/// the per-head kernel (models with q/k norms).
struct KvTarget<'a> {
    slots: &'a Tensor,
    head_rows: Option<(&'a Tensor, &'a Tensor)>,
    k: &'a mut Tensor,
    v: &'a mut Tensor,
}

/// The activations of one step, `capacity` token rows each; a step of `n <= capacity` tokens
/// uses the first `n` rows.
pub struct Workspace {
    residual: [Tensor; 2],
    h: Tensor,
    qkv: Tensor,
    q: Tensor,
    attn: Tensor,
    proj: Tensor,
    /// The second branch's output (parallel residual) or the sandwich-normed output.
    proj2: Tensor,
    gate_up: Tensor,
    act: Tensor,
    /// The normed rows as e4m3 and their scales, for norms that quantize for their projection
    /// (`super::normed`); `None` when no norm of the model does.
    hq: Option<QuantRows>,
    /// The rows that need logits, gathered (when they are not all rows in order).
    picked: Tensor,
    moe: Option<moe::Workspace>,
    /// `[capacity, n_kv_heads * head_dim]` each: the new K and V of an FP8 cache's step, in
    /// this dtype, before `kv_fp8::store` rounds them into the pools.
    kv_stage: [Tensor; 2],
    /// Tensor-parallel: this rank's logits (`capacity × vocab / world`) and every rank's,
    /// stacked by rank (`world * capacity × vocab / world`).
    logits_shard: Option<(Tensor, Tensor)>,
}

impl Decoder {
    /// The q/k/v bias when the RoPE kernels add it (plain RoPE and no per-head norm between
    /// the projection and the rotation); otherwise `qkv` adds it in a pass of its own.
    fn rope_bias<'a>(&self, layer: &'a Layer) -> Option<&'a Tensor> {
        let plain = layer.rope_freqs.is_none() && llama3_params(&layer.spec.rope).is_none();
        layer.qkv_bias.as_ref().filter(|_| plain && layer.qk_norm.is_none())
    }

    /// RoPE of q (`x`) into `out`, with the layer's frequency schedule.
    fn rope_q(&self, layer: &Layer, x: &Tensor, pos: &Tensor, out: &mut Tensor) -> Result<(), ModelError> {
        let (rope, hd) = (&layer.spec.rope, self.spec.cfg.head_dim as i32);
        if let Some(b) = self.rope_bias(layer) {
            let bq = b.view_cols(0, x.cols())?;
            rope::rope_half_bias::run(&self.dev, x, &bq, pos, rope.theta, hd, out)?;
            return Ok(());
        }
        if let Some(f) = &layer.rope_freqs {
            rope::rope_half_table::run(&self.dev, x, pos, &f.q, hd, out)?;
            return Ok(());
        }
        match llama3_params(rope) {
            Some([f, lo, hi, orig]) => {
                rope::rope_half_llama3::run(&self.dev, x, pos, rope.theta, hd, f, lo, hi, orig, out)?
            }
            None => rope::rope_half::run(&self.dev, x, pos, rope.theta, hd, out)?,
        }
        Ok(())
    }

    /// RoPE of the new keys and the KV-cache write of one layer, fused.
    fn store_kv(
        &self,
        layer: &Layer,
        k: &Tensor,
        v: &Tensor,
        inp: &StepInputs,
        target: KvTarget<'_>,
    ) -> Result<(), ModelError> {
        let rope = &layer.spec.rope;
        let (hd, theta) = (self.spec.cfg.head_dim as i32, rope.theta);
        let (pos, slots) = (&inp.pos, target.slots);
        let (k_pool, v_pool) = (target.k, target.v);
        if let Some(b) = self.rope_bias(layer) {
            // The fused bias row is `[q | k | v]`; k and v here are its last two thirds' views.
            let (q_cols, kv_cols) = (b.cols() - 2 * k.cols(), k.cols());
            let (bk, bv) = (b.view_cols(q_cols, kv_cols)?, b.view_cols(q_cols + kv_cols, kv_cols)?);
            rope::rope_kv_write_bias::run(&self.dev, k, v, &bk, &bv, pos, slots, theta, hd, k_pool, v_pool)?;
            return Ok(());
        }
        if let Some(f) = &layer.rope_freqs {
            rope::rope_kv_write_table::run(&self.dev, k, v, pos, slots, &f.k, hd, k_pool, v_pool)?;
            return Ok(());
        }
        match llama3_params(rope) {
            Some([f, lo, hi, orig]) => rope::rope_kv_write_llama3::run(
                &self.dev, k, v, pos, slots, theta, hd, f, lo, hi, orig, k_pool, v_pool,
            )?,
            None => rope::rope_kv_write::run(&self.dev, k, v, pos, slots, theta, hd, k_pool, v_pool)?,
        }
        Ok(())
    }

    /// Attention of one layer, with the template instance its window and softcap ask for.
    fn attend(
        &self,
        layer: &Layer,
        q: &Tensor,
        cache: &PagedKv,
        inp: &StepInputs,
        out: &mut Tensor,
    ) -> Result<(), ModelError> {
        let (dev, plan, scale) = (&self.dev, &inp.plan, self.spec.attn_scale);
        let window = layer.spec.window.map(|w| i32::try_from(w).unwrap_or(i32::MAX));
        match (window, self.spec.attn_softcap) {
            (None, None) => attention::attn_causal::run(dev, q, cache, plan, scale, out)?,
            (Some(w), None) => attention::attn_sliding_window::run(dev, q, cache, plan, scale, w, out)?,
            (None, Some(cap)) => attention::attn_softcap::run(dev, q, cache, plan, scale, cap, out)?,
            (Some(w), Some(cap)) => attention::attn_softcap_window::run(dev, q, cache, plan, scale, cap, w, out)?,
        }
        Ok(())
    }

    /// `y = norm(x)`.
    pub(super) fn norm(&self, x: &Tensor, n: &NormW, y: &mut Tensor) -> Result<(), ModelError> {
        let eps = self.spec.cfg.rms_norm_eps;
        match (&self.spec.norm, &n.b) {
            (NormKind::Layer, Some(b)) => norm::layer_norm::run(&self.dev, x, &n.w, b, eps, y)?,
            _ => norm::rms_norm::run(&self.dev, x, &n.w, eps, y)?,
        }
        Ok(())
    }

    /// `h = x + residual; y = norm(h)`: one fused kernel for RMSNorm; for a sequential
    /// LayerNorm model, the add and the norm (parallel-residual models, the only LayerNorm ones
    /// kiln runs today, end their blocks with `add2_layer_norm` instead).
    pub(super) fn add_norm(
        &self,
        x: &Tensor,
        residual: &Tensor,
        n: &NormW,
        h: &mut Tensor,
        y: &mut Tensor,
    ) -> Result<(), ModelError> {
        let eps = self.spec.cfg.rms_norm_eps;
        match (&self.spec.norm, &n.b) {
            (NormKind::Layer, Some(b)) => {
                epilogue::residual_add::run(&self.dev, x, residual, h)?;
                norm::layer_norm::run(&self.dev, h, &n.w, b, eps, y)?;
            }
            _ => norm::add_rms_norm::run(&self.dev, x, residual, &n.w, eps, h, y)?,
        }
        Ok(())
    }

    /// The dense MLP of the normed rows `(form, x, hq)` into `out` (`gate_up` and `act` are
    /// scratch; `x` has the rows' count whatever their form).
    pub(super) fn mlp(
        &self,
        m: &Mlp,
        (input, x, hq): (Normed, &Tensor, Option<&QuantRows>),
        gate_up: &mut Tensor,
        act: &mut Tensor,
        out: &mut Tensor,
    ) -> Result<(), ModelError> {
        let n = x.rows();
        let mut gu = gate_up.view_rows(0, n)?.view_cols(0, self.mlp_in_cols(m.inter))?;
        self.project(input, x, hq, &m.w_in, &mut gu)?;
        let mut act = act.view_rows(0, n)?.view_cols(0, m.inter)?;
        self.activate(&gu, &mut act)?;
        linear(&self.dev, &act, &m.w_down, out)?;
        Ok(())
    }

    /// Columns of an MLP's input projection of `inter` features: `inter` for a plain GELU MLP,
    /// `2 · inter` (gate, then up) for the gated ones.
    pub(super) fn mlp_in_cols(&self, inter: usize) -> usize {
        match self.spec.mlp {
            MlpKind::Gelu => inter,
            _ => 2 * inter,
        }
    }

    /// The MLP's activation of its input projection `gu` (`[n, mlp_in_cols]`) into `act`
    /// (`[n, inter]`).
    pub(super) fn activate(&self, gu: &Tensor, act: &mut Tensor) -> Result<(), ModelError> {
        let inter = act.cols();
        match self.spec.mlp {
            MlpKind::Gelu => activation::gelu::run(&self.dev, gu, act)?,
            kind => {
                let (g, u) = (gu.view_cols(0, inter)?, gu.view_cols(inter, inter)?);
                match kind {
                    MlpKind::GatedGeluTanh => activation::gelu_tanh_mul::run(&self.dev, &g, &u, act)?,
                    _ => activation::silu_mul::run(&self.dev, &g, &u, act)?,
                }
            }
        }
        Ok(())
    }
}

/// The Llama-3 kernel's four scalars for a layer's scaling, `None` for plain RoPE. Linear
/// scaling (Gemma 3's global layers) is the Llama-3 schedule with every wavelength in the
/// "low frequency" band (an original context of ~0 tokens), where it divides each frequency
/// by `factor`: the same function, so no third pair of RoPE kernels.
fn llama3_params(rope: &RopeSpec) -> Option<[f32; 4]> {
    let s = rope.scaling.as_ref()?;
    match s.kind {
        RopeScalingKind::Llama3 => {
            Some([s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings as f32])
        }
        RopeScalingKind::Linear => Some([s.factor, 1.0, 2.0, 1e-30]),
        RopeScalingKind::None => None,
    }
}

impl StepModel for Decoder {
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
        let c = &self.spec.cfg;
        Heads {
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            per_head_rows: self.spec.qk_norm,
        }
    }
    fn captures_graphs(&self) -> bool {
        // The MoE routing reads the router's logits on the host.
        self.spec.moe.is_none()
    }
    fn waits_on_peers(&self) -> bool {
        self.tp.is_some()
    }
    fn fp8_kv_supported(&self) -> bool {
        true
    }
    fn checkpoint_kv_scales(&self) -> Option<&[kv_fp8::KvScale]> {
        self.kv_scales.as_deref()
    }
    fn observe_projection_inputs(&mut self) -> Result<Vec<kiln_runtime::model::ProjectionInputs>, ModelError> {
        self.observe_projection_inputs()
    }

    fn workspace(&self, capacity: usize) -> Result<Workspace, ModelError> {
        let s = &self.spec;
        let c = &s.cfg;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let t = |cols: usize| Tensor::uninit(&self.dev, self.dtype, capacity, cols);
        let heads_per_token = nh + 2 * nkv;
        let inter = c.intermediate_size.max(s.moe.map_or(0, |m| m.intermediate));
        Ok(Workspace {
            residual: [t(c.hidden_size)?, t(c.hidden_size)?],
            h: t(c.hidden_size)?,
            qkv: t(heads_per_token * hd)?,
            q: t(nh * hd)?,
            attn: t(nh * hd)?,
            proj: t(c.hidden_size)?,
            proj2: t(c.hidden_size)?,
            gate_up: t(2 * inter)?,
            act: t(inter)?,
            hq: match self.norm_codes() {
                Some(codes) => Some(quant_rows(&self.dev, codes, capacity, c.hidden_size)?),
                None => None,
            },
            picked: t(c.hidden_size)?,
            kv_stage: [t(nkv * hd)?, t(nkv * hd)?],
            moe: match s.moe {
                Some(m) => Some(moe::Workspace::new(&self.dev, self.dtype, capacity, c.hidden_size, m)?),
                None => None,
            },
            logits_shard: match &self.tp {
                Some(tp) => {
                    let (world, cols) = (tp.world(), c.vocab_size / tp.world());
                    Some((t(cols)?, Tensor::uninit(&self.dev, self.dtype, world * capacity, cols)?))
                }
                None => None,
            },
        })
    }

    fn step(
        &self,
        inp: &StepInputs,
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Tensor,
    ) -> Result<(), ModelError> {
        let s = &self.spec;
        let c = &s.cfg;
        let n = inp.tokens();
        let hd = c.head_dim;
        let rows = |t: &Tensor| t.view_rows(0, n);
        let [r0, r1] = &ws.residual;
        let (mut residual, mut next_residual) = (rows(r0)?, rows(r1)?);
        let (mut h, mut qkv, mut q, mut attn) = (rows(&ws.h)?, rows(&ws.qkv)?, rows(&ws.q)?, rows(&ws.attn)?);
        let (mut proj, mut proj2) = (rows(&ws.proj)?, rows(&ws.proj2)?);

        match self.embed.as_ref().map(|e| (e, e.as_dense())) {
            Some((_, Some(table))) => gather::gather_rows::run(&self.dev, table, &inp.ids, &mut residual)?,
            Some((e, None)) => gather_rows_quantized(e, &inp.ids, &mut residual)?,
            None => {} // a tensor-parallel rank other than 0: the rows come from rank 0
        }
        if let Some(tp) = &self.tp {
            tp.broadcast(&mut residual, 0)?;
        }
        if let Some(k) = s.embed_scale {
            let x = residual.clone(); // elementwise in place: each value is read before it is written
            epilogue::scale::run(&self.dev, &x, k, &mut residual)?;
        }
        let mut hq = match &ws.hq {
            Some([q, sc]) => Some([rows(q)?, rows(sc)?]),
            None => None,
        };
        let first = &self.layers[0];
        let mut normed = self.norm_for(&residual, &first.attn_norm, Some(&first.wqkv), &mut h, hq.as_mut())?;
        for (l, layer) in self.layers.iter().enumerate() {
            self.qkv(layer, normed, &h, hq.as_ref(), &mut qkv)?;
            let fp8 = match &kv.fp8 {
                None => None,
                Some(s) => Some(*s.get(l).ok_or_else(|| {
                    ModelError::Batch(format!("an FP8 KV cache with {} scales for layer {l}", s.len()))
                })?),
            };
            match (fp8, &inp.kv_stage) {
                (None, _) => {
                    let hr = inp.head_rows.as_ref().map(|r| (&r.k_row, &r.v_row));
                    let target = KvTarget { slots: &inp.slots, head_rows: hr, k: &mut kv.k[l], v: &mut kv.v[l] };
                    self.write_kv(layer, &qkv, inp, &mut q, target)?;
                }
                (Some(scale), Some(stage)) => {
                    let [ks, vs] = &ws.kv_stage;
                    let (mut ks, mut vs) = (rows(ks)?, rows(vs)?);
                    let hr = stage.head_rows.as_ref().map(|[k, v]| (k, v));
                    let target = KvTarget { slots: &stage.slots, head_rows: hr, k: &mut ks, v: &mut vs };
                    self.write_kv(layer, &qkv, inp, &mut q, target)?;
                    kv_fp8::store(&self.dev, &ks, &vs, &inp.slots, scale, &mut kv.k[l], &mut kv.v[l])?;
                }
                (Some(_), None) => return Err(ModelError::Batch("an FP8 KV cache without staging rows".into())),
            }
            let cache = PagedKv { k: &kv.k[l], v: &kv.v[l], head_dim: hd, fp8 };
            self.attend(layer, &q, &cache, inp, &mut attn)?;
            linear(&self.dev, &attn, &layer.wo, &mut proj)?;
            self.reduce(&mut proj)?;
            let next_norm = self.layers.get(l + 1).map_or(&self.final_norm, |nl| &nl.attn_norm);

            if s.parallel_residual {
                // x + attn(ln(x)) + mlp(ln(x)): the MLP reads the same normed input `h`.
                self.ffn(layer, Normed::Dense, &h, None, ws, &mut proj2)?;
                self.reduce(&mut proj2)?;
                let b =
                    next_norm.b.as_ref().ok_or_else(|| ModelError::Load("parallel residual needs LayerNorm".into()))?;
                let eps = c.rms_norm_eps;
                norm::add2_layer_norm::run(
                    &self.dev,
                    &proj,
                    &proj2,
                    &residual,
                    &next_norm.w,
                    b,
                    eps,
                    &mut next_residual,
                    &mut h,
                )?;
                std::mem::swap(&mut residual, &mut next_residual);
                normed = Normed::Dense;
                continue;
            }
            let ffn_norm = layer.ffn_norm.as_ref().ok_or_else(|| ModelError::Load("no MLP norm".into()))?;
            let attn_out = match &layer.post_attn_norm {
                Some(pn) => {
                    self.norm(&proj, pn, &mut proj2)?;
                    &proj2
                }
                None => &proj,
            };
            let w_in = Self::mlp_input(layer);
            normed = self.add_norm_for(attn_out, &residual, ffn_norm, w_in, &mut next_residual, &mut h, hq.as_mut())?;
            std::mem::swap(&mut residual, &mut next_residual);

            self.ffn(layer, normed, &h, hq.as_ref(), ws, &mut proj)?;
            self.reduce(&mut proj)?;
            let mlp_out = match &layer.post_ffn_norm {
                Some(pn) => {
                    self.norm(&proj, pn, &mut proj2)?;
                    &proj2
                }
                None => &proj,
            };
            let next_w = self.layers.get(l + 1).map(|nl| &nl.wqkv);
            normed =
                self.add_norm_for(mlp_out, &residual, next_norm, next_w, &mut next_residual, &mut h, hq.as_mut())?;
            std::mem::swap(&mut residual, &mut next_residual);
        }
        // `h` now holds the final-normed hidden states; only the asked-for rows reach lm_head.
        let m = inp.logits_rows.cols();
        if m == 0 {
            return Ok(());
        }
        let head_in = if inp.all_rows {
            h
        } else {
            let mut picked = ws.picked.view_rows(0, m)?;
            gather::gather_rows::run(&self.dev, &h, &inp.logits_rows, &mut picked)?;
            picked
        };
        match (&self.tp, &ws.logits_shard) {
            (Some(tp), Some((mine, all))) => {
                // Vocabulary-parallel head: this rank's columns of the logits, then every rank's.
                let (world, cols) = (tp.world(), mine.cols());
                let mut mine = mine.view_rows(0, m)?;
                linear(&self.dev, &head_in, &self.lm_head, &mut mine)?;
                let mut all = all.view_rows(0, world * m)?;
                tp.all_gather_rows(&mine, &mut all)?;
                for k in 0..world {
                    logits.view_cols(k * cols, cols)?.copy_from(&all.view_rows(k * m, m)?)?;
                }
            }
            _ => linear(&self.dev, &head_in, &self.lm_head, logits)?,
        }
        if let Some(cap) = s.final_softcap {
            let x = logits.clone(); // elementwise in place
            epilogue::softcap::run(&self.dev, &x, cap, logits)?;
        }
        Ok(())
    }
}

impl Decoder {
    /// Tensor-parallel: sum a row-parallel projection's partial products over the ranks.
    fn reduce(&self, t: &mut Tensor) -> Result<(), ModelError> {
        if let Some(tp) = &self.tp {
            tp.all_reduce_sum(t)?;
        }
        Ok(())
    }

    /// The fused q/k/v projection of `h` into `qkv`, with its bias (unless the RoPE kernels
    /// add it: [`Self::rope_bias`]).
    fn qkv(
        &self,
        layer: &Layer,
        input: Normed,
        h: &Tensor,
        hq: Option<&QuantRows>,
        qkv: &mut Tensor,
    ) -> Result<(), ModelError> {
        self.project(input, h, hq, &layer.wqkv, qkv)?;
        if let Some(b) = layer.qkv_bias.as_ref().filter(|_| self.rope_bias(layer).is_none()) {
            let x = qkv.clone(); // elementwise in place
            epilogue::bias_add::run(&self.dev, &x, b, qkv)?;
        }
        Ok(())
    }

    /// RoPE of the layer's new q (into `q`) and k, and the write of k and v to `target`.
    fn write_kv(
        &self,
        layer: &Layer,
        qkv: &Tensor,
        inp: &StepInputs,
        q: &mut Tensor,
        target: KvTarget<'_>,
    ) -> Result<(), ModelError> {
        let c = &self.spec.cfg;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        if let Some((wq, wk)) = &layer.qk_norm {
            return self.qk_norm_rope_store(layer, (wq, wk), qkv, inp, q, target);
        }
        self.rope_q(layer, &qkv.view_cols(0, nh * hd)?, &inp.pos, q)?;
        let (k_new, v_new) = (qkv.view_cols(nh * hd, nkv * hd)?, qkv.view_cols((nh + nkv) * hd, nkv * hd)?);
        self.store_kv(layer, &k_new, &v_new, inp, target)
    }

    /// Per-head q/k norms, RoPE of q and k, and the KV write of one layer in one kernel over
    /// the projection seen as one row per (token, head) ([`kiln_runtime::model::step::HeadRows`]).
    fn qk_norm_rope_store(
        &self,
        layer: &Layer,
        (wq, wk): (&Tensor, &Tensor),
        qkv: &Tensor,
        inp: &StepInputs,
        q: &mut Tensor,
        target: KvTarget<'_>,
    ) -> Result<(), ModelError> {
        let (k_pool, v_pool) = (target.k, target.v);
        let c = &self.spec.cfg;
        let hr = inp.head_rows.as_ref().ok_or_else(|| ModelError::Load("q/k norms without per-head rows".into()))?;
        if layer.rope_freqs.is_some() {
            return Err(ModelError::Unsupported("q/k norms with a RoPE frequency table".into()));
        }
        let (hd, n) = (c.head_dim, inp.tokens());
        let x = qkv.reshape(n * (c.num_attention_heads + 2 * c.num_key_value_heads), hd)?;
        let mut q = q.reshape(n * c.num_attention_heads, hd)?;
        let cache_rows = |t: &Tensor| t.reshape(t.rows() * c.num_key_value_heads, hd);
        let (mut kc, mut vc) = (cache_rows(k_pool)?, cache_rows(v_pool)?);
        let (eps, rope, head_dim) = (c.rms_norm_eps, &layer.spec.rope, hd as i32);
        let (kr, vr) = target.head_rows.ok_or_else(|| ModelError::Load("q/k norms without per-head KV rows".into()))?;
        let (pos, qr) = (&hr.pos, &hr.q_row);
        match llama3_params(rope) {
            Some([f, lo, hi, orig]) => qk_norm_rope::qk_norm_rope_write_llama3::run(
                &self.dev, &x, wq, wk, pos, qr, kr, vr, eps, rope.theta, head_dim, f, lo, hi, orig, &mut q, &mut kc,
                &mut vc,
            )?,
            None => qk_norm_rope::qk_norm_rope_write::run(
                &self.dev, &x, wq, wk, pos, qr, kr, vr, eps, rope.theta, head_dim, &mut q, &mut kc, &mut vc,
            )?,
        }
        Ok(())
    }

    /// The layer's feed-forward of `h` into `out`.
    fn ffn(
        &self,
        layer: &Layer,
        input: Normed,
        h: &Tensor,
        hq: Option<&QuantRows>,
        ws: &mut Workspace,
        out: &mut Tensor,
    ) -> Result<(), ModelError> {
        match &layer.ffn {
            Ffn::Dense(m) => self.mlp(m, (input, h, hq), &mut ws.gate_up, &mut ws.act, out),
            Ffn::Moe { router, experts } => {
                // The router reads the normed rows too: MoE layers keep them dense.
                debug_assert_eq!(input, Normed::Dense);
                let spec = self.spec.moe.ok_or_else(|| ModelError::Load("MoE layer without MoeSpec".into()))?;
                let mw = ws.moe.as_mut().ok_or_else(|| ModelError::Load("MoE layer without its workspace".into()))?;
                moe::forward(self, spec, router, experts, h, mw, (&mut ws.gate_up, &mut ws.act), out)
            }
        }
    }
}
