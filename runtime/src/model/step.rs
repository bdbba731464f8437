//! [`StepInputs`]: what one forward step reads besides the weights and the cache, on the
//! model's device — token ids, positions, KV slots and the rows that need logits (one packed
//! `int32` upload, viewed as four vectors) and the attention plan (its own upload). Every
//! architecture builds these the same way, so the kernels of a step read only device memory:
//! nothing is copied between launches, which is what lets a decode step be captured in a
//! CUDA graph.
//!
//! A model with per-head q/k norms also gets [`HeadRows`]: the same step seen as one row per
//! (token, head) of its fused q/k/v projection, so that one kernel norms, rotates and stores
//! every head (q into the query buffer, k and v into the cache) with no host work between.
//!
//! Two forms: [`StepInputs::new`] sizes the buffers for one batch (eager steps);
//! [`StepInputs::for_decode`] makes fixed buffers for `bucket` one-token sequences that
//! [`StepInputs::refresh_decode`] rewrites in place every step (a captured graph reads them).
//! Rows past the batch are padding: token 0 at position 0, slot -1 (its K/V is not written),
//! no sequence (its attention output is zeros); their logits are computed and ignored.

use super::{ForwardBatch, KvCache, ModelError};
use crate::attention::{AttnPlan, SPLIT_TOKENS};
use crate::{Device, Tensor};

pub struct StepInputs {
    /// `1 × tokens` i32: the token ids.
    pub ids: Tensor,
    /// `1 × tokens` i32: each token's position.
    pub pos: Tensor,
    /// `1 × tokens` i32: each token's KV slot (`-1`: not written).
    pub slots: Tensor,
    /// `1 × rows` i32: the token rows whose logits are wanted, in output order.
    pub logits_rows: Tensor,
    /// Whether `logits_rows` is every row in order (the logits need no gather).
    pub all_rows: bool,
    pub plan: AttnPlan,
    /// One row per (token, head) of the q/k/v projection, when [`Heads::per_head_rows`].
    pub head_rows: Option<HeadRows>,
    /// For an FP8 KV cache: where the KV-write kernels put the new K and V instead of the
    /// pools (then `kv_fp8::store` moves them to `slots`).
    pub kv_stage: Option<KvStage>,
    /// The packed buffer the vectors view.
    packed: Tensor,
    heads: Heads,
}

/// The attention heads of a model, as the plan needs them.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Whether the model wants [`HeadRows`] (per-head q/k norms fused with RoPE and the KV write).
    pub per_head_rows: bool,
}

impl Heads {
    /// Heads of one token's fused q/k/v projection: queries, then keys, then values.
    pub fn qkv_heads(&self) -> usize {
        self.n_heads + 2 * self.n_kv_heads
    }
}

/// The step as rows of `head_dim` columns, row `t * qkv_heads + h` being head `h` of token `t`
/// (`1 × tokens * qkv_heads` i32 each). Exactly one of `q_row`, `k_row`, `v_row` is `>= 0` on a
/// row, except that `k_row`/`v_row` are `-1` for a token that writes no K/V (slot -1).
pub struct HeadRows {
    /// The token's position.
    pub pos: Tensor,
    /// Query heads: the row of the `[tokens * n_heads, head_dim]` query buffer.
    pub q_row: Tensor,
    /// Key heads: the row of the `[slots * n_kv_heads, head_dim]` key cache (`slot * n_kv + h`).
    pub k_row: Tensor,
    /// Value heads: the same for the value cache.
    pub v_row: Tensor,
}

/// The KV-write kernels' targets in a staging buffer of one row per token (an FP8 cache's new
/// K and V before they are rounded into the pools): `slots[t]` is `t`, or `-1` where the
/// token's own slot is `-1` (it writes nothing); with [`HeadRows`], `k_row` / `v_row` are
/// `t * n_kv_heads + h` likewise.
pub struct KvStage {
    pub slots: Tensor,
    pub head_rows: Option<[Tensor; 2]>,
}

fn to_i32(what: &str, x: u64) -> Result<i32, ModelError> {
    i32::try_from(x).map_err(|_| ModelError::Batch(format!("{what} {x} does not fit an i32")))
}

/// `[ids | positions | slots | logits rows]` of `batch`, each padded to `rows` entries, then
/// for a model with [`Heads::per_head_rows`] the four vectors of [`HeadRows`] over those rows,
/// then with `stage` the vectors of [`KvStage`].
fn pack(
    batch: &ForwardBatch<'_>,
    rows: usize,
    logit_rows: usize,
    heads: Heads,
    stage: bool,
) -> Result<Vec<i32>, ModelError> {
    let mut packed = Vec::with_capacity(3 * rows + logit_rows);
    for &t in batch.tokens {
        packed.push(to_i32("token id", t as u64)?);
    }
    packed.resize(rows, 0);
    packed.extend_from_slice(batch.positions);
    packed.resize(2 * rows, 0);
    for &s in batch.slots {
        packed.push(to_i32("slot", s as u64)?);
    }
    packed.resize(3 * rows, -1);
    for &r in batch.logits_rows {
        packed.push(to_i32("logits row", r as u64)?);
    }
    let next = packed.len() - 3 * rows;
    packed.extend((next..logit_rows).map(|r| r as i32));
    if heads.per_head_rows {
        let (nh, nkv, all) = (heads.n_heads, heads.n_kv_heads, heads.qkv_heads());
        let (pos, slots) = (packed[rows..2 * rows].to_vec(), packed[2 * rows..3 * rows].to_vec());
        let cache_row = |t: usize, h: usize| -> Result<i32, ModelError> {
            match slots[t] {
                s if s < 0 => Ok(-1),
                s => to_i32("cache row", s as u64 * nkv as u64 + h as u64),
            }
        };
        let mut q_row = Vec::with_capacity(rows * all);
        let (mut k_row, mut v_row) = (q_row.clone(), q_row.clone());
        for t in 0..rows {
            for h in 0..all {
                q_row.push(if h < nh { to_i32("query row", (t * nh + h) as u64)? } else { -1 });
                k_row.push(if (nh..nh + nkv).contains(&h) { cache_row(t, h - nh)? } else { -1 });
                v_row.push(if h >= nh + nkv { cache_row(t, h - nh - nkv)? } else { -1 });
            }
        }
        packed.extend(pos.iter().flat_map(|&p| std::iter::repeat_n(p, all)));
        packed.extend(q_row.into_iter().chain(k_row).chain(v_row));
    }
    if stage {
        // The token's own row where it has a slot; per head, rows of the staging buffer seen
        // as `[tokens * n_kv_heads, head_dim]`.
        let written: Vec<bool> = packed[2 * rows..3 * rows].iter().map(|&s| s >= 0).collect();
        packed.extend(written.iter().enumerate().map(|(t, &w)| if w { t as i32 } else { -1 }));
        if heads.per_head_rows {
            let (nh, nkv, all) = (heads.n_heads, heads.n_kv_heads, heads.qkv_heads());
            let stage_row = |t: usize, h: usize| if written[t] { (t * nkv + h) as i32 } else { -1 };
            let per_head = |first: usize| {
                (0..rows).flat_map(move |t| {
                    (0..all).map(move |h| if (first..first + nkv).contains(&h) { stage_row(t, h - first) } else { -1 })
                })
            };
            let (k_rows, v_rows): (Vec<i32>, Vec<i32>) = (per_head(nh).collect(), per_head(nh + nkv).collect());
            packed.extend(k_rows.into_iter().chain(v_rows));
        }
    }
    Ok(packed)
}

impl StepInputs {
    fn views(
        packed: Tensor,
        n: usize,
        m: usize,
        all_rows: bool,
        plan: AttnPlan,
        heads: Heads,
        stage: bool,
    ) -> Result<StepInputs, ModelError> {
        let (mut at, len) = (3 * n + m, n * heads.qkv_heads());
        let head_rows = if heads.per_head_rows {
            at += 4 * len;
            Some(HeadRows {
                pos: packed.view_cols(at - 4 * len, len)?,
                q_row: packed.view_cols(at - 3 * len, len)?,
                k_row: packed.view_cols(at - 2 * len, len)?,
                v_row: packed.view_cols(at - len, len)?,
            })
        } else {
            None
        };
        let kv_stage = if stage {
            let head_rows = if heads.per_head_rows {
                Some([packed.view_cols(at + n, len)?, packed.view_cols(at + n + len, len)?])
            } else {
                None
            };
            Some(KvStage { slots: packed.view_cols(at, n)?, head_rows })
        } else {
            None
        };
        Ok(StepInputs {
            ids: packed.view_cols(0, n)?,
            pos: packed.view_cols(n, n)?,
            slots: packed.view_cols(2 * n, n)?,
            logits_rows: packed.view_cols(3 * n, m)?,
            all_rows,
            plan,
            head_rows,
            kv_stage,
            packed,
            heads,
        })
    }

    /// Build and upload the inputs of `batch` (already validated) for a cache `kv`.
    pub fn new(dev: &Device, batch: &ForwardBatch<'_>, kv: &KvCache, heads: Heads) -> Result<StepInputs, ModelError> {
        let n = batch.tokens.len();
        let m = batch.logits_rows.len();
        let stage = kv.fp8.is_some();
        let packed = Tensor::vector(dev, &pack(batch, n, m, heads, stage)?)?;
        let bt_stride = batch.seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(0).max(1);
        let mut plan = AttnPlan::new(batch.seqs, n, batch.seqs.len(), bt_stride, kv.block_size, kv.num_blocks)?;
        if !dev.is_cpu() {
            plan.split_default();
            plan.prepare_mma(heads.n_heads / heads.n_kv_heads);
        }
        plan.upload(dev, heads.n_heads, heads.head_dim)?;
        let all_rows = m == n && batch.logits_rows.iter().enumerate().all(|(i, &r)| i == r);
        Self::views(packed, n, m, all_rows, plan, heads, stage)
    }

    /// Fixed buffers for `bucket` one-token sequences with block tables of `bt_stride` entries
    /// (all padding until [`StepInputs::refresh_decode`]).
    pub fn for_decode(
        dev: &Device,
        bucket: usize,
        bt_stride: usize,
        kv: &KvCache,
        heads: Heads,
    ) -> Result<StepInputs, ModelError> {
        let stage = kv.fp8.is_some();
        let per_head = if heads.per_head_rows { 4 * heads.qkv_heads() } else { 0 };
        let staged = match (stage, heads.per_head_rows) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 1 + 2 * heads.qkv_heads(),
        };
        let packed = Tensor::zeros(dev, crate::DType::I32, 1, (4 + per_head + staged) * bucket)?;
        let mut plan = AttnPlan::new(&[], bucket, bucket, bt_stride, kv.block_size, kv.num_blocks)?;
        plan.split_fixed((bt_stride * kv.block_size).div_ceil(SPLIT_TOKENS));
        plan.upload(dev, heads.n_heads, heads.head_dim)?;
        Self::views(packed, bucket, bucket, true, plan, heads, stage)
    }

    /// Rewrite fixed decode buffers with `batch` (every sequence one token with logits, at
    /// most `tokens()` of them, tables within the buffers' stride), in place.
    pub fn refresh_decode(&mut self, dev: &Device, batch: &ForwardBatch<'_>, kv: &KvCache) -> Result<(), ModelError> {
        let b = self.tokens();
        if batch.tokens.len() > b || batch.seqs.iter().any(|s| s.q_len != 1) {
            return Err(ModelError::Batch(format!(
                "a decode step of {} tokens does not fit buffers for {b}",
                batch.tokens.len()
            )));
        }
        self.packed.copy_from_host(&pack(batch, b, b, self.heads, self.kv_stage.is_some())?)?;
        let plan = AttnPlan::new(batch.seqs, b, b, self.plan.bt_stride(), kv.block_size, kv.num_blocks)?;
        self.plan.refresh_from(plan, dev, self.heads.n_heads, self.heads.head_dim)?;
        Ok(())
    }

    pub fn tokens(&self) -> usize {
        self.ids.cols()
    }
}
