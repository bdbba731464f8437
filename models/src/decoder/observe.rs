//! A calibration pass's view of a decoder: every dense layer projection (q/k/v, o, a dense
//! MLP's first and last) wrapped so that its products record the largest |x| of each input
//! column ([`Weight::Observed`]): SmoothQuant's activation statistics and static FP8
//! activation scales (`kiln quantize --method int8-sq | fp8`).
//!
//! Invariant: observing changes no product (the wrapped weight multiplies as before); wrapping
//! twice is refused, so a layer's statistics come from one pass.

use super::{Decoder, Ffn};
use crate::model::ModelError;
use kiln_runtime::device::linear::{InputStats, Weight};
use kiln_runtime::model::ProjectionInputs;
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
    /// See [`kiln_runtime::model::CausalLm::observe_projection_inputs`].
    pub(super) fn observe_projection_inputs(&mut self) -> Result<Vec<ProjectionInputs>, ModelError> {
        self.layers
            .iter_mut()
            .map(|l| {
                let (qkv, o) = (observe(&mut l.wqkv)?, observe(&mut l.wo)?);
                let (mlp_in, down) = match &mut l.ffn {
                    Ffn::Dense(m) => (Some(observe(&mut m.w_in)?), Some(observe(&mut m.w_down)?)),
                    Ffn::Moe { .. } => (None, None),
                };
                Ok(ProjectionInputs { qkv, o, mlp_in, down })
            })
            .collect()
    }
}
