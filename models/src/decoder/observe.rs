//! A calibration pass's view of a decoder: the projections that read a norm's output (each
//! layer's q/k/v and its dense MLP's first projection) wrapped so that their products record
//! the largest |x| of each input column ([`Weight::Observed`]); SmoothQuant's activation
//! statistics (`kiln quantize --method int8-sq`).
//!
//! Invariant: observing changes no product (the wrapped weight multiplies as before); wrapping
//! twice is refused, so a layer's statistics come from one pass.

use super::{Decoder, Ffn};
use crate::model::ModelError;
use kiln_runtime::device::linear::{InputStats, Weight};
use kiln_runtime::model::NormInputs;
use std::sync::Arc;

/// `w` wrapped to record into a new [`InputStats`], which is returned.
fn observe(w: &mut Weight) -> Result<Arc<InputStats>, ModelError> {
    if matches!(w, Weight::Observed(..)) {
        return Err(ModelError::Unsupported("observing a projection twice".into()));
    }
    let stats = Arc::new(InputStats::default());
    let inner = std::mem::replace(w, Weight::Rows(vec![]));
    *w = Weight::Observed(Box::new(inner), stats.clone());
    Ok(stats)
}

impl Decoder {
    /// See [`kiln_runtime::model::CausalLm::observe_norm_inputs`].
    pub(super) fn observe_projection_inputs(&mut self) -> Result<Vec<NormInputs>, ModelError> {
        self.layers
            .iter_mut()
            .map(|l| {
                let attention = observe(&mut l.wqkv)?;
                let mlp = match &mut l.ffn {
                    Ffn::Dense(m) => Some(observe(&mut m.w_in)?),
                    Ffn::Moe { .. } => None,
                };
                Ok(NormInputs { attention, mlp })
            })
            .collect()
    }
}
