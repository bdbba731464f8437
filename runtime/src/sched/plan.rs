//! The data exchanged with the engine each step: [`StepPlan`] out of `schedule`, [`StepResult`]
//! into `update`.
//!
//! A plan is flat (struct of arrays) so the engine can upload it as-is: the token ids, positions
//! and slots of all scheduled sequences are concatenated, and each [`ScheduledSeq`] names its
//! ranges. Invariants of a plan:
//! - `token_ids`, `positions` and `slots` have the same length, at most `max_batched_tokens`;
//! - a sequence's positions are `context_len .. context_len + n`, consecutive, and its slots are
//!   those its block table gives for these positions;
//! - decode sequences (one token) come first, then prefill chunks of running sequences, then
//!   newly admitted ones;
//! - `copies` must run, in order, before any K/V of this step is written.

use std::ops::Range;

use crate::kv::{BlockId, CopyBlock, SlotMapping, TokenId};
use crate::sample::FinishReason;

use super::request::SeqId;

/// One sequence's part of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// The sequence.
    pub id: SeqId,
    /// Its tokens' range in [`StepPlan::token_ids`], [`StepPlan::positions`] and
    /// [`StepPlan::slots`]: a prefill chunk, or one decode token.
    pub tokens: Range<usize>,
    /// Tokens of this sequence already in the KV cache before this step (the first position).
    pub context_len: usize,
    /// Its block table's range in [`StepPlan::block_tables`] (covers `context_len + n` tokens).
    pub block_table: Range<usize>,
    /// True when this chunk ends at the sequence's last token: sample one token from its logits
    /// (last prefill chunk, or decode). Other chunks only fill the cache.
    pub needs_logits: bool,
}

/// Everything the engine needs to run one step, and what changed since the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Scheduled sequences, in the order their tokens appear.
    pub seqs: Vec<ScheduledSeq>,
    /// Token ids to run, all sequences concatenated.
    pub token_ids: Vec<TokenId>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// Cache slot each token's K/V is written to.
    pub slots: Vec<SlotMapping>,
    /// Block tables of the scheduled sequences, concatenated.
    pub block_tables: Vec<BlockId>,
    /// Copy-on-write block copies to run first, in order.
    pub copies: Vec<CopyBlock>,
    /// Sequences preempted during this scheduling pass (their KV is gone; they will be
    /// recomputed from prompt + generated tokens, their output so far is kept).
    pub preempted: Vec<SeqId>,
    /// Sequences that left the scheduler since the previous plan (finished, stopped by the
    /// engine, or aborted), with the reason.
    pub finished: Vec<(SeqId, FinishReason)>,
}

impl StepPlan {
    /// Empties the plan, keeping its buffers.
    pub fn clear(&mut self) {
        self.seqs.clear();
        self.token_ids.clear();
        self.positions.clear();
        self.slots.clear();
        self.block_tables.clear();
        self.copies.clear();
        self.preempted.clear();
        self.finished.clear();
    }

    /// Tokens scheduled (the step's share of the token budget).
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// True when no token is to be run (there may still be finished or preempted ids).
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The token ids of `s`.
    pub fn tokens_of(&self, s: &ScheduledSeq) -> &[TokenId] {
        self.token_ids.get(s.tokens.clone()).unwrap_or(&[])
    }

    /// The positions of `s`.
    pub fn positions_of(&self, s: &ScheduledSeq) -> &[u32] {
        self.positions.get(s.tokens.clone()).unwrap_or(&[])
    }

    /// The slots of `s`.
    pub fn slots_of(&self, s: &ScheduledSeq) -> &[SlotMapping] {
        self.slots.get(s.tokens.clone()).unwrap_or(&[])
    }

    /// The block table of `s`.
    pub fn block_table_of(&self, s: &ScheduledSeq) -> &[BlockId] {
        self.block_tables.get(s.block_table.clone()).unwrap_or(&[])
    }
}

/// What the engine reports after running a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepResult {
    /// One sampled token for each scheduled sequence whose `needs_logits` was set (and for the
    /// children the engine forked from them). Tokens for sequences aborted meanwhile are ignored.
    pub sampled: Vec<(SeqId, TokenId)>,
    /// Sequences the engine ends (stop token or string, error), applied after `sampled`.
    pub finished: Vec<(SeqId, FinishReason)>,
}
