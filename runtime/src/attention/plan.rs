//! [`AttnPlan`]: one forward step's attention layout — which sequence and position each query
//! token has and where each sequence's keys live — in the `int32` form of
//! `kiln_codegen::attention::abi`, on the host and (after [`AttnPlan::upload`]) on the device,
//! with the split-softmax scratch the CUDA kernels need. One plan serves every layer.
//!
//! Invariants (checked by [`AttnPlan::new`]): the sequences' query rows tile `0..tokens` in
//! order; `1 <= q_len <= ctx_len`; every block table covers its context and names blocks
//! inside the pool; tokens past the sequences are padding (`tok_seq = -1`). Uploading reuses
//! the device buffers when they are large enough, so a captured CUDA graph that reads them
//! stays valid while later steps rewrite them in place.

use super::{AttnError, SeqAttn};
use crate::{Device, Tensor};
use kiln_codegen::attention::abi::{PlanLayout, TILE};

/// A step whose longest chunk of new tokens reaches this many goes to the tensor-core kernel.
pub const MMA_MIN_QUERIES: usize = 8;

/// Keys per split of the default split (two tiles): short enough that one long sequence
/// spreads over many blocks, long enough that the combine stays cheap.
pub const SPLIT_TOKENS: usize = 2 * TILE;
use crate::DType;

/// A sequence as the CPU path walks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlanSeq {
    pub q_start: usize,
    pub q_len: usize,
    pub ctx_len: usize,
}

/// The plan and scratch on a GPU.
pub(crate) struct DevicePlan {
    pub plan: Tensor,
    /// The tensor-core kernel's blocks of queries (4 i32 each), when the plan has them.
    pub items: Option<Tensor>,
    /// `[n_tokens * n_heads * n_splits, head_dim]` f32 partial outputs (splits > 1).
    pub part_o: Tensor,
    /// `[n_tokens * n_heads * n_splits, 2]` f32 running max and sum.
    pub part_ml: Tensor,
}

pub struct AttnPlan {
    pub(crate) layout: PlanLayout,
    pub(crate) host: Vec<i32>,
    pub(crate) seqs: Vec<PlanSeq>,
    pub(crate) block_size: usize,
    pub(crate) n_splits: usize,
    pub(crate) max_ctx: usize,
    /// Blocks in the pools the tables were checked against.
    pub(crate) pool_blocks: usize,
    /// Blocks of queries for the tensor-core kernel (see [`AttnPlan::prepare_mma`]).
    pub(crate) mma_items: Option<Vec<i32>>,
    pub(crate) device: Option<DevicePlan>,
}

impl AttnPlan {
    /// The plan of `seqs` over `n_tokens` query rows (rows past the sequences are padding),
    /// with `n_seqs` sequence slots (at least `seqs.len()`; extra slots are empty) and block
    /// tables `bt_stride` entries apart (at least the longest table). `pool_blocks`: blocks in
    /// the KV pools, which every table entry must be below.
    pub fn new(
        seqs: &[SeqAttn<'_>],
        n_tokens: usize,
        n_seqs: usize,
        bt_stride: usize,
        block_size: usize,
        pool_blocks: usize,
    ) -> Result<AttnPlan, AttnError> {
        let bad = |m: String| Err(AttnError::Shape(m));
        if block_size == 0 {
            return bad("block size 0".into());
        }
        if n_seqs < seqs.len() {
            return bad(format!("{} sequences in {n_seqs} slots", seqs.len()));
        }
        let layout = PlanLayout { n_tokens, n_seqs, bt_stride };
        let mut host = vec![0i32; layout.len()];
        for t in 0..n_tokens {
            host[layout.tok_seq() + t] = -1;
        }
        let mut next = 0;
        let mut max_ctx = 0;
        let mut plan_seqs = Vec::with_capacity(seqs.len());
        for (i, s) in seqs.iter().enumerate() {
            if s.q_start != next {
                return bad(format!("sequence {i} starts at row {} instead of {next}", s.q_start));
            }
            if s.q_len == 0 || s.q_len > s.ctx_len {
                return bad(format!("sequence {i}: q_len {} ctx_len {}", s.q_len, s.ctx_len));
            }
            if s.q_start + s.q_len > n_tokens {
                return bad(format!(
                    "sequence {i}: rows {}..{} past {n_tokens} tokens",
                    s.q_start,
                    s.q_start + s.q_len
                ));
            }
            let blocks = s.ctx_len.div_ceil(block_size);
            if blocks > s.block_table.len() || blocks > bt_stride {
                return bad(format!(
                    "sequence {i}: {} tokens need {blocks} blocks of {block_size}; its table has {} (stride {bt_stride})",
                    s.ctx_len,
                    s.block_table.len()
                ));
            }
            if let Some(&b) = s.block_table[..blocks].iter().find(|&&b| b as usize >= pool_blocks) {
                return bad(format!("sequence {i}: block {b} is outside the pool of {pool_blocks}"));
            }
            let to_i32 = |x: usize| i32::try_from(x).map_err(|_| AttnError::Shape(format!("{x} does not fit an i32")));
            for j in 0..s.q_len {
                host[layout.tok_seq() + s.q_start + j] = to_i32(i)?;
                host[layout.tok_pos() + s.q_start + j] = to_i32(s.ctx_len - s.q_len + j)?;
            }
            host[layout.seq_ctx() + i] = to_i32(s.ctx_len)?;
            let row = layout.block_tables() + i * bt_stride;
            for (k, &b) in s.block_table[..blocks].iter().enumerate() {
                host[row + k] = to_i32(b as usize)?;
            }
            plan_seqs.push(PlanSeq { q_start: s.q_start, q_len: s.q_len, ctx_len: s.ctx_len });
            max_ctx = max_ctx.max(s.ctx_len);
            next += s.q_len;
        }
        let mut plan = AttnPlan {
            layout,
            host,
            seqs: plan_seqs,
            block_size,
            n_splits: 1,
            max_ctx,
            pool_blocks,
            mma_items: None,
            device: None,
        };
        plan.set_splits(1);
        Ok(plan)
    }

    pub fn n_tokens(&self) -> usize {
        self.layout.n_tokens
    }
    pub fn n_splits(&self) -> usize {
        self.n_splits
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// The longest context of the step.
    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }
    /// The tensor-core kernel's blocks of queries (4 i32 each), if the step takes that route.
    pub fn mma_blocks(&self) -> Option<&[i32]> {
        self.mma_items.as_deref()
    }
    /// Entries between consecutive sequences' block tables.
    pub fn bt_stride(&self) -> usize {
        self.layout.bt_stride
    }
    /// The plan array (for tools and tests).
    pub fn host(&self) -> &[i32] {
        &self.host
    }

    /// Split every context into `n` parts of equal length (a multiple of the tile), each
    /// scored by its own thread block and merged by the combine kernel (flash-decoding). The
    /// boundaries depend on the longest context of the batch: for tests; steps use
    /// [`AttnPlan::split_default`].
    pub fn set_splits(&mut self, n: usize) {
        let n = n.max(1);
        self.n_splits = n;
        self.host[0] =
            if n == 1 { i32::MAX } else { (self.max_ctx.div_ceil(n).div_ceil(TILE) * TILE).max(TILE) as i32 };
    }

    /// The default split: every [`SPLIT_TOKENS`] keys of a context form one split (as many
    /// splits as the longest context needs). The split boundaries of a sequence depend on
    /// nothing else in the batch, and empty splits add exact zeros in the combine, so a
    /// token's output is the same bits whatever it is batched with (batching invariance).
    pub fn split_default(&mut self) {
        self.split_fixed(self.max_ctx.div_ceil(SPLIT_TOKENS).max(1));
    }

    /// `n` splits of [`SPLIT_TOKENS`] keys (`n` at least what the longest context needs): a
    /// grid fixed ahead of the step, as a captured CUDA graph has; splits past a context end
    /// at once.
    pub fn split_fixed(&mut self, n: usize) {
        let n = n.max(self.max_ctx.div_ceil(SPLIT_TOKENS)).max(1);
        self.n_splits = n;
        self.host[0] = if n == 1 { i32::MAX } else { SPLIT_TOKENS as i32 };
    }

    /// Route the step to the tensor-core kernel (f16/bf16 on a GPU) when it has a prefill —
    /// some sequence with at least [`MMA_MIN_QUERIES`] new tokens: cut every sequence into
    /// blocks of `64 / group` queries (`group` query heads per KV head). Decode-only steps
    /// keep the split kernel, whose blocks serve one query each and split long contexts.
    pub fn prepare_mma(&mut self, group: usize) {
        let per = kiln_codegen::attention::abi::mma_queries(group);
        if per == 0 || !self.seqs.iter().any(|s| s.q_len >= MMA_MIN_QUERIES) {
            self.mma_items = None;
            return;
        }
        let mut items = vec![];
        for (i, s) in self.seqs.iter().enumerate() {
            for b in (0..s.q_len).step_by(per) {
                let nq = per.min(s.q_len - b);
                items.extend([i as i32, (s.q_start + b) as i32, nq as i32, (s.ctx_len - s.q_len + b) as i32]);
            }
        }
        // Padding rows past the sequences get zeros, as from the split kernel.
        let covered = self.seqs.last().map_or(0, |s| s.q_start + s.q_len);
        for r in (covered..self.layout.n_tokens).step_by(per) {
            items.extend([-1, r as i32, per.min(self.layout.n_tokens - r) as i32, 0]);
        }
        self.mma_items = Some(items);
    }

    /// Copy the plan to `dev` (a no-op on the CPU), reusing earlier device buffers when the
    /// layout and scratch sizes still fit.
    pub fn upload(&mut self, dev: &Device, n_heads: usize, head_dim: usize) -> Result<(), AttnError> {
        if dev.is_cpu() {
            return Ok(());
        }
        let part_rows = self.layout.n_tokens * n_heads * self.n_splits;
        let fits = self.device.as_ref().is_some_and(|d| {
            d.plan.cols() == self.host.len()
                && d.part_o.rows() >= part_rows
                && d.part_o.cols() == head_dim
                && d.plan.device() == dev
        });
        if !fits {
            self.device = Some(DevicePlan {
                items: None,
                plan: Tensor::zeros(dev, DType::I32, 1, self.host.len())?,
                part_o: Tensor::zeros(dev, DType::F32, part_rows.max(1), head_dim)?,
                part_ml: Tensor::zeros(dev, DType::F32, part_rows.max(1), 2)?,
            });
        }
        if let Some(d) = &mut self.device {
            d.plan.copy_from_host(&self.host)?;
            d.items = match &self.mma_items {
                Some(items) => Some(Tensor::vector(dev, items)?),
                None => None,
            };
        }
        Ok(())
    }

    /// Replace the host plan with `other`'s (same layout), keeping this plan's device
    /// buffers, and upload it: how a captured graph's inputs are refreshed in place.
    pub fn refresh_from(
        &mut self,
        other: AttnPlan,
        dev: &Device,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<(), AttnError> {
        if other.layout != self.layout {
            return Err(AttnError::Shape(format!("plan layout {:?} differs from {:?}", other.layout, self.layout)));
        }
        let splits = self.n_splits;
        let device = self.device.take();
        *self = AttnPlan { device, ..other };
        self.split_fixed(splits);
        self.upload(dev, n_heads, head_dim)
    }

    /// Sequence `i`'s physical block of its key `t`.
    pub(crate) fn block(&self, i: usize, t: usize) -> usize {
        self.host[self.layout.block_tables() + i * self.layout.bt_stride + t / self.block_size] as usize
    }
}
