//! Synthetic decoders: a spec's shapes (dense Llama-like layers) with seeded random weights made
//! on the device itself (see [`crate::synth`]), whole or as one tensor-parallel rank's parts.
//!
//! Invariant: tensor `n` is filled with `tensor_seed(seed, n)` in the order `synth` documents,
//! and a rank fills exactly its rows and columns of each whole tensor, so a model split over any
//! number of ranks holds the same weights as the whole one (and as `kiln synth-model`'s file).

// Row parts are lists of ranges; a list of one is the common case, not a mistaken `Vec` of a range.
#![allow(clippy::single_range_in_vec_init)]

use super::tp::{shifted, RankPlan};
use super::{rope_table, Decoder, DecoderSpec, Ffn, Layer, Mlp, NormW};
use crate::model::ModelError;
use crate::synth::{tensor_seed, Init};
use kiln_runtime::comm::Communicator;
use kiln_runtime::device::device_kernels::{fill_uniform_part, uniform_value, FillPart};
use kiln_runtime::device::linear::Weight;
use kiln_runtime::device::quant::int4::{Grouping, Int4Matrix};
use kiln_runtime::device::quant::int4_cuda::Int4Cuda;
use kiln_runtime::device::quant::w8::{W8Elem, W8Matrix};
use kiln_runtime::device::quant::w8_cuda::W8Cuda;
use kiln_runtime::sample::rng::bits;
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};
use std::ops::Range;
use std::sync::Arc;

/// Fills the weights of a synthetic model in order, each whole or a rank's part of it.
struct Filler<'a> {
    dev: &'a Device,
    dtype: DType,
    seed: u64,
    /// Tensors made so far: the next one is tensor `n + 1`.
    n: u64,
}

impl Filler<'_> {
    /// The next tensor (`rows × cols` whole) as `row_parts` stacked, each of columns `cols_part`;
    /// `None` skips it (a rank that does not hold it), keeping the numbering.
    fn next(
        &mut self,
        (rows, cols): (usize, usize),
        init: Init,
        parts: Option<(&[Range<usize>], Range<usize>)>,
    ) -> Result<Option<Tensor>, ModelError> {
        self.n += 1;
        let Some((row_parts, col_part)) = parts else { return Ok(None) };
        if row_parts.iter().any(|r| r.end > rows) || col_part.end > cols {
            return Err(ModelError::Load(format!("a part {row_parts:?} × {col_part:?} of a {rows} × {cols} tensor")));
        }
        let total = row_parts.iter().map(|r| r.len()).sum();
        let t = Tensor::uninit(self.dev, self.dtype, total, col_part.len())?;
        let (lo, hi) = init.range();
        let mut at = 0;
        for r in row_parts {
            let mut view = t.view_rows(at, r.len())?;
            let part = FillPart { full_cols: cols, row0: r.start, col0: col_part.start };
            fill_uniform_part(&mut view, tensor_seed(self.seed, self.n), lo, hi, part)
                .map_err(|e| ModelError::Load(e.to_string()))?;
            at += r.len();
        }
        Ok(Some(t))
    }

    /// The next tensor, whole.
    fn whole(&mut self, shape: (usize, usize), init: Init) -> Result<Tensor, ModelError> {
        let parts = [0..shape.0];
        self.next(shape, init, Some((&parts, 0..shape.1)))?.ok_or_else(|| ModelError::Load("no tensor".into()))
    }

    /// The next tensor: `rows` of it (all columns), or all of it without a plan.
    fn rows(&mut self, shape: (usize, usize), init: Init, rows: &[Range<usize>]) -> Result<Tensor, ModelError> {
        self.next(shape, init, Some((rows, 0..shape.1)))?.ok_or_else(|| ModelError::Load("no tensor".into()))
    }
}

impl Decoder {
    /// A model of `spec`'s shapes with seeded random weights made on `dev`: for speed work
    /// without the real weights.
    pub fn random(spec: DecoderSpec, dev: &Device, dtype: DType, seed: u64) -> Result<Decoder, ModelError> {
        Decoder::random_rank(spec, dev, dtype, seed, None)
    }

    /// [`Decoder::random`], or with `tp` the rank `tp.rank()` of it: its parts of the same
    /// weights, in `tp`'s group.
    pub fn random_rank(
        spec: DecoderSpec,
        dev: &Device,
        dtype: DType,
        seed: u64,
        tp: Option<Arc<dyn Communicator>>,
    ) -> Result<Decoder, ModelError> {
        let plan = tp.as_ref().map(|c| RankPlan::new(&spec, c.rank(), c.world())).transpose()?;
        let c = &spec.cfg;
        let (h, nh, nkv, hd, inter, vocab) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size,
        );
        let (q, kv) = (nh * hd, nkv * hd);
        let [qr, kr, vr] = plan.as_ref().map_or([0..q, 0..kv, 0..kv], |p| p.qkv_rows(hd));
        let ir = plan.as_ref().map_or(0..inter, |p| p.inter(false));
        let o_cols = plan.as_ref().map_or(0..q, |p| p.o_cols(hd));
        let vocab_rows = plan.as_ref().map_or(0..vocab, |p| p.vocab.clone());
        let rank_cfg = plan.as_ref().map_or_else(|| c.clone(), |p| p.rank_spec(&spec).cfg);
        let mut f = Filler { dev, dtype, seed, n: 0 };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let attn_norm = NormW { w: f.whole((1, h), Init::Norm)?, b: None };
            let qkv_rows = [qr.clone(), shifted(&kr, q), shifted(&vr, q + kv)];
            let wqkv = f.rows((q + 2 * kv, h), Init::Linear { fan_in: h }, &qkv_rows)?.into();
            let wo = f.next((h, q), Init::Linear { fan_in: q }, Some((&[0..h], o_cols.clone())))?;
            let ffn_norm = NormW { w: f.whole((1, h), Init::Norm)?, b: None };
            let w_in = f.rows((2 * inter, h), Init::Linear { fan_in: h }, &[ir.clone(), shifted(&ir, inter)])?.into();
            let w_down = f.next((h, inter), Init::Linear { fan_in: inter }, Some((&[0..h], ir.clone())))?;
            let missing = || ModelError::Load("a synthetic weight was not made".into());
            layers.push(Layer {
                spec: spec.layers[l].clone(),
                attn_norm,
                wqkv,
                qkv_bias: None,
                qk_norm: None,
                rope_freqs: rope_table::device_freqs(spec.layers[l].rope.table.as_ref(), &rank_cfg, dev)?,
                wo: wo.ok_or_else(missing)?.into(),
                post_attn_norm: None,
                post_ffn_norm: None,
                ffn_norm: Some(ffn_norm),
                ffn: Ffn::Dense(Mlp { w_in, w_down: w_down.ok_or_else(missing)?.into(), inter: ir.len() }),
            });
        }
        // The embedding on rank 0 only; the head's vocabulary rows on every rank (of the embedding
        // tensor itself when tied).
        let embed_n = f.n + 1;
        let holds_embed = plan.as_ref().is_none_or(|p| p.rank == 0);
        let embed = f.next((vocab, h), Init::Embedding, holds_embed.then_some((&[0..vocab][..], 0..h)))?;
        let lm_head = match (c.tie_word_embeddings, &embed, &plan) {
            (true, Some(e), None) => e.clone(),
            (true, _, _) => {
                let mut tied = Filler { dev, dtype, seed, n: embed_n - 1 };
                tied.rows((vocab, h), Init::Embedding, &[vocab_rows])?
            }
            (false, _, _) => f.rows((vocab, h), Init::Linear { fan_in: h }, &[vocab_rows])?,
        };
        let final_norm = NormW { w: f.whole((1, h), Init::Norm)?, b: None };
        let spec = match &plan {
            Some(p) => p.rank_spec(&spec),
            None => spec,
        };
        let mut model = Decoder::assemble(spec, dev, dtype, embed.map(Into::into), lm_head.into(), final_norm, layers);
        model.tp = tp;
        Ok(model)
    }

    /// The same model with every dense layer projection (q/k/v, o, gate/up, down) replaced by
    /// seeded random 4-bit weights of its shape in groups of `group` inputs (or 64 or 32 where it does not divide them; values in about
    /// the same range): a synthetic W4A16 model (`synth:NAME+int4`) for speed work.
    pub fn with_random_int4(self, group: usize, seed: u64) -> Result<Decoder, ModelError> {
        let dev = self.dev.clone();
        let dtype = self.dtype;
        self.replace_projections(|(rows, cols), n| {
            // Smaller groups where `group` does not divide the inputs (SmolLM2's 576); else dense.
            let Some(group) = [group, 64, 32].into_iter().find(|g| cols.is_multiple_of(*g)) else { return Ok(None) };
            let m = random_int4((rows, cols), group, tensor_seed(seed ^ 0x1247, n))?;
            Ok(Some(if dev.is_cpu() {
                Weight::Int4(vec![m])
            } else {
                let on_gpu = Int4Cuda::upload(&dev, dtype, &[m]).map_err(|e| ModelError::Load(e.to_string()))?;
                Weight::Int4Cuda(on_gpu.ok_or_else(|| ModelError::Load(format!("int4 groups of {group}")))?)
            }))
        })
    }

    /// The same model with every dense layer projection replaced by seeded random 8-bit weights
    /// of its shape (FP8 E4M3 or INT8) with a scale per output channel (values in about the
    /// same range), uploaded as W8A8: a synthetic FP8 or SmoothQuant-style INT8 model
    /// (`synth:NAME+fp8`, `synth:NAME+int8`) for speed work; GPU only (the CPU reads 8-bit
    /// checkpoints as f32).
    pub fn with_random_w8(self, elem: W8Elem, seed: u64) -> Result<Decoder, ModelError> {
        let dev = self.dev.clone();
        let dtype = self.dtype;
        if dev.is_cpu() {
            return Err(ModelError::Unsupported("synthetic 8-bit weights run on a GPU".into()));
        }
        self.replace_projections(|(rows, cols), n| {
            let m = random_w8(elem, (rows, cols), tensor_seed(seed ^ 0xF8, n))?;
            let on_gpu = W8Cuda::upload(&dev, dtype, &[m], true).map_err(|e| ModelError::Load(e.to_string()))?;
            Ok(on_gpu.map(Weight::W8Cuda))
        })
    }

    /// Every dense layer projection (q/k/v, o, gate/up, down) replaced by `make((rows, cols),
    /// n)` for the n-th of them (1-based), where it gives a weight.
    fn replace_projections(
        mut self,
        mut make: impl FnMut((usize, usize), u64) -> Result<Option<Weight>, ModelError>,
    ) -> Result<Decoder, ModelError> {
        let mut n = 0u64;
        let mut swap = |w: &mut Weight| -> Result<(), ModelError> {
            let Some(shape) = w.as_dense().map(|t| (t.rows(), t.cols())) else { return Ok(()) };
            n += 1;
            if let Some(q) = make(shape, n)? {
                *w = q;
            }
            Ok(())
        };
        for l in &mut self.layers {
            swap(&mut l.wqkv)?;
            swap(&mut l.wo)?;
            if let Ffn::Dense(mlp) = &mut l.ffn {
                swap(&mut mlp.w_in)?;
                swap(&mut mlp.w_down)?;
            }
        }
        Ok(self)
    }
}

/// A `[rows, cols]` 8-bit matrix of SplitMix64 bytes (FP8: NaN bytes moved to the largest
/// finite value; INT8: -128 moved to -127, as symmetric quantizers write) with a scale per row
/// near `1 / (top·√cols)` (`top` 448 or 127): values within about ±1/√cols.
fn random_w8(elem: W8Elem, (rows, cols): (usize, usize), seed: u64) -> Result<W8Matrix, ModelError> {
    use rayon::prelude::*;
    let bytes: Vec<u8> = (0..rows * cols)
        .into_par_iter()
        .map(|i| match ((bits(seed, i as u64) >> 56) as u8, elem) {
            (b, W8Elem::Fp8E4M3) if b & 0x7F == 0x7F => b - 1,
            (0x80, W8Elem::Int8) => 0x81,
            (b, _) => b,
        })
        .collect();
    let top = if elem == W8Elem::Int8 { 127.0 } else { 448.0 };
    let scale = 1.0 / (top * (cols as f32).sqrt());
    let scales = (0..rows).map(|i| scale * (0.75 + 0.5 * uniform_value(seed ^ 1, i as u64, 0.0, 1.0))).collect();
    W8Matrix::new((rows, cols), elem, bytes, scales, [1, cols]).map_err(|e| ModelError::Load(e.to_string()))
}

/// A `[rows, cols]` 4-bit matrix of SplitMix64 words, zero 8 and f16-exact scales near
/// `1 / (8·√cols)`: values within about ±1/√cols, like `Init::Linear`.
fn random_int4((rows, cols): (usize, usize), group: usize, seed: u64) -> Result<Int4Matrix, ModelError> {
    use rayon::prelude::*;
    let words: Vec<u32> = (0..rows * cols / 8).into_par_iter().map(|i| (bits(seed, i as u64) >> 32) as u32).collect();
    let groups = cols / group.max(1);
    let scale = half::f16::from_f32(1.0 / (8.0 * (cols as f32).sqrt())).to_f32();
    let scales = (0..rows * groups)
        .map(|i| scale * (0.75 + 0.5 * uniform_value(seed ^ 1, i as u64, 0.0, 1.0)))
        .map(|s| half::f16::from_f32(s).to_f32())
        .collect();
    Int4Matrix::new((rows, cols), Grouping::Contiguous(group), words, scales, vec![8; rows * groups])
        .map_err(|e| ModelError::Load(e.to_string()))
}
