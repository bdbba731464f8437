//! The input of the projection after a norm, in the form that projection multiplies: the
//! normed rows in the storage dtype, or — before a W8A8 projection with a scale per row
//! ([`quantized_rows_for`]: FP8 or INT8) — their e4m3 or int8 codes and per-row scale, written
//! by the norm's own kernel (`rms_norm_quant_e4m3` / `_i8`, `add_rms_norm_quant_e4m3` / `_i8`):
//! no copy of the normed row in the storage dtype is written and read back, and no separate
//! quantization kernel runs.
//!
//! Invariant: a norm writes the quantized form only for a projection that is the one reader of
//! its output (a layer's q/k/v after the attention norm, a dense MLP's gate/up after the MLP
//! norm, on an RMSNorm model with sequential branches); the final norm (lm_head and the rows
//! gathered for it), LayerNorm and parallel-branch models and MoE layers (whose router reads the
//! normed rows too) keep the dense form. `KILN_FUSED_NORM_QUANT=0` keeps the dense form always
//! (the projection then quantizes its input itself: a measurement switch). The workspace holds
//! one code type, that of the model's first layer projection that takes codes; a projection
//! taking another (a checkpoint mixing FP8 and INT8 layers) gets the dense form.

use super::{Decoder, Ffn, Layer, NormKind, NormW};
use crate::kernels::norm_quant;
use crate::model::ModelError;
use kiln_runtime::device::linear::{linear, linear_quantized, quantized_rows_for, QuantizedRows, Weight};
use kiln_runtime::{DType, Device, Tensor};

/// Where a norm's output for the next projection lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Normed {
    /// In `h`, the storage dtype.
    Dense,
    /// In the workspace's quantized rows and scales ([`QuantRows`]).
    Quantized,
}

/// A step's quantized rows `[n, hidden]` (e4m3 or int8 codes) and their `[n, 1]` f32 scales.
pub(super) type QuantRows = [Tensor; 2];

/// The rows of `codes` (e4m3 or int8) and scales of `capacity` tokens of `width` inputs.
pub(super) fn quant_rows(dev: &Device, codes: DType, capacity: usize, width: usize) -> Result<QuantRows, ModelError> {
    Ok([Tensor::uninit(dev, codes, capacity, width)?, Tensor::uninit(dev, DType::F32, capacity, 1)?])
}

/// Read when a workspace is made (not once per process, so that one test can run both forms,
/// nor at each norm of a step): a workspace made while it was off has no e4m3 rows, and its
/// steps keep the dense form.
fn enabled() -> bool {
    std::env::var_os("KILN_FUSED_NORM_QUANT").is_none_or(|v| v != "0")
}

impl Decoder {
    /// The code type the norm before `w` would quantize its output to for it (see the module
    /// header); `w` is `None` where the output has another reader.
    fn codes_for(&self, n: &NormW, w: Option<&Weight>) -> Option<DType> {
        let plain = self.spec.norm == NormKind::Rms && n.b.is_none() && !self.spec.parallel_residual;
        w.filter(|_| plain).and_then(quantized_rows_for)
    }

    /// The weight that alone reads the MLP norm's output of `layer`, if any (a dense MLP).
    pub(super) fn mlp_input(layer: &Layer) -> Option<&Weight> {
        match &layer.ffn {
            Ffn::Dense(m) => Some(&m.w_in),
            Ffn::Moe { .. } => None,
        }
    }

    /// The code type of the rows this model's norms write quantized, if any norm does (the
    /// workspace then holds them; without them every norm writes the dense form).
    pub(super) fn norm_codes(&self) -> Option<DType> {
        if !enabled() {
            return None;
        }
        self.layers.iter().find_map(|l| {
            self.codes_for(&l.attn_norm, Some(&l.wqkv))
                .or_else(|| l.ffn_norm.as_ref().and_then(|n| self.codes_for(n, Self::mlp_input(l))))
        })
    }

    /// The workspace's quantized rows, when the norm before `w` writes into them.
    fn quantized_into<'a>(
        &self,
        n: &NormW,
        w: Option<&Weight>,
        hq: Option<&'a mut QuantRows>,
    ) -> Option<&'a mut QuantRows> {
        hq.filter(|[q, _]| self.codes_for(n, w) == Some(q.dtype()))
    }

    /// `norm(x)` for the projection `w`: into `hq` when it takes quantized rows, else into `h`.
    pub(super) fn norm_for(
        &self,
        x: &Tensor,
        n: &NormW,
        w: Option<&Weight>,
        h: &mut Tensor,
        hq: Option<&mut QuantRows>,
    ) -> Result<Normed, ModelError> {
        match self.quantized_into(n, w, hq) {
            Some([q, s]) => {
                let eps = self.spec.cfg.rms_norm_eps;
                match q.dtype() {
                    DType::I8 => norm_quant::rms_norm_quant_i8::run(&self.dev, x, &n.w, eps, q, s)?,
                    _ => norm_quant::rms_norm_quant_e4m3::run(&self.dev, x, &n.w, eps, q, s)?,
                }
                Ok(Normed::Quantized)
            }
            None => {
                self.norm(x, n, h)?;
                Ok(Normed::Dense)
            }
        }
    }

    /// `sum = x + residual; norm(sum)` for the projection `w`: the normed rows into `hq` when it
    /// takes quantized rows, else into `h`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_norm_for(
        &self,
        x: &Tensor,
        residual: &Tensor,
        n: &NormW,
        w: Option<&Weight>,
        sum: &mut Tensor,
        h: &mut Tensor,
        hq: Option<&mut QuantRows>,
    ) -> Result<Normed, ModelError> {
        match self.quantized_into(n, w, hq) {
            Some([q, s]) => {
                let eps = self.spec.cfg.rms_norm_eps;
                match q.dtype() {
                    DType::I8 => norm_quant::add_rms_norm_quant_i8::run(&self.dev, x, residual, &n.w, eps, sum, q, s)?,
                    _ => norm_quant::add_rms_norm_quant_e4m3::run(&self.dev, x, residual, &n.w, eps, sum, q, s)?,
                }
                Ok(Normed::Quantized)
            }
            None => {
                self.add_norm(x, residual, n, sum, h)?;
                Ok(Normed::Dense)
            }
        }
    }

    /// `out = input · wᵀ` from the form the norm wrote.
    pub(super) fn project(
        &self,
        input: Normed,
        h: &Tensor,
        hq: Option<&QuantRows>,
        w: &Weight,
        out: &mut Tensor,
    ) -> Result<(), ModelError> {
        match (input, hq) {
            (Normed::Dense, _) => linear(&self.dev, h, w, out)?,
            (Normed::Quantized, Some([q, scales])) => linear_quantized(&self.dev, QuantizedRows { q, scales }, w, out)?,
            (Normed::Quantized, None) => {
                return Err(ModelError::Batch("quantized rows without their workspace".into()))
            }
        }
        Ok(())
    }
}
