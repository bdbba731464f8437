//! [`StepInputs`]: what one forward step reads besides the weights and the cache, on the
//! model's device — token ids, positions, KV slots and the rows that need logits (one packed
//! `int32` upload, viewed as four vectors) and the attention plan (its own upload). Every
//! architecture builds these the same way, so the kernels of a step read only device memory:
//! nothing is copied between launches, which is what lets a decode step be captured in a
//! CUDA graph.

use crate::model::{ForwardBatch, KvCache, ModelError};
use kiln_runtime::attention::AttnPlan;
use kiln_runtime::{Device, Tensor};

pub struct StepInputs {
    /// `1 × tokens` i32: the token ids.
    pub ids: Tensor,
    /// `1 × tokens` i32: each token's position.
    pub pos: Tensor,
    /// `1 × tokens` i32: each token's KV slot (`-1`: not written).
    pub slots: Tensor,
    /// `1 × rows` i32: the token rows whose logits are wanted, in output order.
    pub logits_rows: Tensor,
    pub plan: AttnPlan,
}

/// The attention heads of a model, as the plan needs them.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

fn to_i32(what: &str, x: u64) -> Result<i32, ModelError> {
    i32::try_from(x).map_err(|_| ModelError::Batch(format!("{what} {x} does not fit an i32")))
}

impl StepInputs {
    /// Build and upload the inputs of `batch` (already validated) for a cache `kv`.
    pub fn new(dev: &Device, batch: &ForwardBatch<'_>, kv: &KvCache, heads: Heads) -> Result<StepInputs, ModelError> {
        let n = batch.tokens.len();
        let m = batch.logits_rows.len();
        let mut packed = Vec::with_capacity(3 * n + m);
        for &t in batch.tokens {
            packed.push(to_i32("token id", t as u64)?);
        }
        packed.extend_from_slice(batch.positions);
        for &s in batch.slots {
            packed.push(to_i32("slot", s as u64)?);
        }
        for &r in batch.logits_rows {
            packed.push(to_i32("logits row", r as u64)?);
        }
        let all = Tensor::vector(dev, &packed)?;
        let bt_stride = batch.seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(0).max(1);
        let mut plan = AttnPlan::new(batch.seqs, n, batch.seqs.len(), bt_stride, kv.block_size, kv.num_blocks)?;
        if !dev.is_cpu() {
            plan.split_default();
        }
        plan.upload(dev, heads.n_heads, heads.head_dim)?;
        Ok(StepInputs {
            ids: all.view_cols(0, n)?,
            pos: all.view_cols(n, n)?,
            slots: all.view_cols(2 * n, n)?,
            logits_rows: all.view_cols(3 * n, m)?,
            plan,
        })
    }

    pub fn tokens(&self) -> usize {
        self.ids.cols()
    }
}
