//! The scheduler's record of one live sequence.
//!
//! Invariants (checked by `Scheduler::check_invariants`):
//! - `tokens = prompt ++ generated`, `prompt_len <= tokens.len()`;
//! - running: `num_computed == table.num_tokens() <= tokens.len()`; the tokens in
//!   `num_computed..` are the ones still to run (0 of them while a sampled token is awaited);
//! - waiting: the table is empty and `num_computed == 0` (a preempted sequence recomputes all of
//!   `tokens`, which reproduces its KV exactly, so its output so far stands).

use crate::kv::{BlockTable, TokenId};

use super::request::SeqId;

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Waiting,
    Running,
}

#[derive(Debug)]
pub(crate) struct Seq {
    pub(crate) id: SeqId,
    pub(crate) tokens: Vec<TokenId>,
    pub(crate) prompt_len: usize,
    pub(crate) max_tokens: usize,
    /// Tokens whose KV is in the cache or scheduled to be written by an already issued plan.
    pub(crate) num_computed: usize,
    pub(crate) table: BlockTable,
    pub(crate) phase: Phase,
    /// A plan asked for this sequence's logits and its sampled token has not come back yet.
    pub(crate) awaiting_sample: bool,
    /// The `update` call that last accepted a sampled token for it (duplicate detection).
    pub(crate) last_sample_epoch: u64,
}

impl Seq {
    pub(crate) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to run before the next sample (0 while one is awaited).
    #[inline]
    pub(crate) fn pending(&self) -> usize {
        if self.awaiting_sample {
            0
        } else {
            self.tokens.len() - self.num_computed
        }
    }
}
