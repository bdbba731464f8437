//! The input of the projection after a norm, in the form that projection multiplies: the
//! normed rows in the storage dtype, or — before an FP8 W8A8 projection with a scale per row
//! ([`takes_e4m3_rows`]) — their e4m3 bytes and per-row scale, written by the norm's own kernel
//! (`rms_norm_quant_e4m3`, `add_rms_norm_quant_e4m3`): no copy of the normed row in the storage
//! dtype is written and read back, and no separate quantization kernel runs.
//!
//! Invariant: a norm writes the quantized form only for a projection that is the one reader of
//! its output (a layer's q/k/v after the attention norm, a dense MLP's gate/up after the MLP
//! norm, on an RMSNorm model with sequential branches); the final norm (lm_head and the rows
//! gathered for it), LayerNorm and parallel-branch models and MoE layers (whose router reads the
//! normed rows too) keep the dense form. `KILN_FUSED_NORM_QUANT=0` keeps the dense form always
//! (the projection then quantizes its input itself: a measurement switch).

use super::{Decoder, Ffn, Layer, NormKind, NormW};
use crate::kernels::norm_quant;
use crate::model::ModelError;
use kiln_runtime::device::linear::{linear, linear_e4m3, takes_e4m3_rows, E4m3Rows, Weight};
use kiln_runtime::{DType, Device, Tensor};

/// Where a norm's output for the next projection lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Normed {
    /// In `h`, the storage dtype.
    Dense,
    /// In the workspace's e4m3 rows and scales ([`QuantRows`]).
    E4m3,
}

/// A step's e4m3 rows `[n, hidden]` and their `[n, 1]` f32 scales.
pub(super) type QuantRows = [Tensor; 2];

/// The e4m3 rows and scales of `capacity` tokens of `width` inputs.
pub(super) fn quant_rows(dev: &Device, capacity: usize, width: usize) -> Result<QuantRows, ModelError> {
    Ok([Tensor::uninit(dev, DType::F8E4M3, capacity, width)?, Tensor::uninit(dev, DType::F32, capacity, 1)?])
}

/// Read when a workspace is made (not once per process, so that one test can run both forms,
/// nor at each norm of a step): a workspace made while it was off has no e4m3 rows, and its
/// steps keep the dense form.
fn enabled() -> bool {
    std::env::var_os("KILN_FUSED_NORM_QUANT").is_none_or(|v| v != "0")
}

impl Decoder {
    /// Whether the norm before `w` writes its output quantized for it (see the module header);
    /// `w` is `None` where the output has another reader.
    fn quantizes_for(&self, n: &NormW, w: Option<&Weight>) -> bool {
        self.spec.norm == NormKind::Rms
            && n.b.is_none()
            && !self.spec.parallel_residual
            && w.is_some_and(takes_e4m3_rows)
    }

    /// The weight that alone reads the MLP norm's output of `layer`, if any (a dense MLP).
    pub(super) fn mlp_input(layer: &Layer) -> Option<&Weight> {
        match &layer.ffn {
            Ffn::Dense(m) => Some(&m.w_in),
            Ffn::Moe { .. } => None,
        }
    }

    /// Whether any norm of this model writes quantized rows (the workspace then holds them;
    /// without them every norm writes the dense form).
    pub(super) fn quantizes_norms(&self) -> bool {
        enabled()
            && self.layers.iter().any(|l| {
                self.quantizes_for(&l.attn_norm, Some(&l.wqkv))
                    || l.ffn_norm.as_ref().is_some_and(|n| self.quantizes_for(n, Self::mlp_input(l)))
            })
    }

    /// `norm(x)` for the projection `w`: into `hq` when it takes e4m3 rows, else into `h`.
    pub(super) fn norm_for(
        &self,
        x: &Tensor,
        n: &NormW,
        w: Option<&Weight>,
        h: &mut Tensor,
        hq: Option<&mut QuantRows>,
    ) -> Result<Normed, ModelError> {
        match hq.filter(|_| self.quantizes_for(n, w)) {
            Some([q, s]) => {
                norm_quant::rms_norm_quant_e4m3::run(&self.dev, x, &n.w, self.spec.cfg.rms_norm_eps, q, s)?;
                Ok(Normed::E4m3)
            }
            None => {
                self.norm(x, n, h)?;
                Ok(Normed::Dense)
            }
        }
    }

    /// `sum = x + residual; norm(sum)` for the projection `w`: the normed rows into `hq` when it
    /// takes e4m3 rows, else into `h`.
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
        match hq.filter(|_| self.quantizes_for(n, w)) {
            Some([q, s]) => {
                let eps = self.spec.cfg.rms_norm_eps;
                norm_quant::add_rms_norm_quant_e4m3::run(&self.dev, x, residual, &n.w, eps, sum, q, s)?;
                Ok(Normed::E4m3)
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
            (Normed::E4m3, Some([q, scales])) => linear_e4m3(&self.dev, E4m3Rows { q, scales }, w, out)?,
            (Normed::E4m3, None) => return Err(ModelError::Batch("e4m3 rows without their workspace".into())),
        }
        Ok(())
    }
}
