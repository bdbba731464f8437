//! Scheduler limits, validated once at construction so the scheduling loop can rely on them.
//!
//! Invariant after [`SchedulerConfig::validate`]: every limit is at least 1,
//! `max_model_len <= u32::MAX` (plan positions are `u32`) and
//! `max_batched_tokens >= max_num_seqs`, so every running sequence can get its decode token in
//! every step and the oldest running sequence always makes progress (the liveness argument in
//! `step.rs` rests on this).

use super::error::SchedError;

/// Limits of one scheduler (and of its KV pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Token budget of one step, shared by decode tokens and prefill chunks.
    pub max_batched_tokens: usize,
    /// Most sequences running (holding KV blocks) at once.
    pub max_num_seqs: usize,
    /// The model's context length: prompt + generated tokens may not exceed it.
    pub max_model_len: usize,
    /// Token slots per KV block.
    pub block_size: usize,
    /// KV blocks in the pool.
    pub num_blocks: usize,
    /// Reuse cached KV of identical prompt prefixes.
    pub enable_prefix_caching: bool,
    /// Most requests waiting for admission; past it `add` answers `QueueFull` (HTTP 429).
    /// Preempted requests return to the queue regardless (they were already accepted).
    pub max_queue: usize,
}

impl SchedulerConfig {
    /// Checks the limits (see the module invariant).
    pub fn validate(&self) -> Result<(), SchedError> {
        let fields = [
            ("max_batched_tokens", self.max_batched_tokens),
            ("max_num_seqs", self.max_num_seqs),
            ("max_model_len", self.max_model_len),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
            ("max_queue", self.max_queue),
        ];
        for (name, v) in fields {
            if v == 0 {
                return Err(SchedError::InvalidConfig(format!("`{name}` is 0; it must be at least 1")));
            }
        }
        if self.max_model_len > u32::MAX as usize {
            return Err(SchedError::InvalidConfig(format!(
                "`max_model_len` ({}) exceeds the u32 positions of a plan",
                self.max_model_len
            )));
        }
        if self.max_batched_tokens < self.max_num_seqs {
            return Err(SchedError::InvalidConfig(format!(
                "`max_batched_tokens` ({}) is below `max_num_seqs` ({}): running sequences could \
                 not all decode in one step",
                self.max_batched_tokens, self.max_num_seqs
            )));
        }
        Ok(())
    }
}
