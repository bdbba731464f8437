//! The scheduler's state and its request-level operations: `new`, `add`, `abort`, `fork`,
//! counters and the invariant check. The per-step logic is in `step.rs` (schedule) and
//! `update.rs` (update).
//!
//! Invariants (checked by [`Scheduler::check_invariants`]):
//! - every live sequence is in exactly one of `running` (admission order, oldest first) and
//!   `waiting` (FCFS order, preempted sequences at the front);
//! - `running.len() <= max_num_seqs`;
//! - KV blocks are held only by running sequences' tables, and the allocator's own invariants
//!   hold against exactly those tables;
//! - a sequence's KV need at full length fits the whole pool (checked at admission), which
//!   together with the config invariant guarantees progress (see `step.rs`).

use std::collections::VecDeque;

use crate::kv::{BlockAllocator, BlockTable, InvariantViolation, KvStats};
use crate::sample::FinishReason;

use super::config::SchedulerConfig;
use super::error::{AdmissionError, SchedError};
use super::idmap::IdMap;
use super::plan::StepPlan;
use super::request::{Request, SeqId};
use super::seq::{Phase, Seq};
use super::stats::SchedulerStats;

/// A scheduling decision of the current pass, emitted into the plan at the end of the pass (a
/// later preemption in the same pass can still take it back).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decision {
    pub(crate) slot: u32,
    pub(crate) start: usize,
    pub(crate) n: usize,
}

/// Iteration-level scheduler over a paged KV pool. Pure data: no device access.
#[derive(Debug)]
pub struct Scheduler {
    pub(crate) cfg: SchedulerConfig,
    pub(crate) alloc: BlockAllocator,
    /// Sequence slab; `None` marks a free slot.
    pub(crate) slab: Vec<Option<Seq>>,
    pub(crate) free_slots: Vec<u32>,
    pub(crate) ids: IdMap,
    pub(crate) running: Vec<u32>,
    pub(crate) waiting: VecDeque<u32>,
    /// Left since the last plan; drained into the next one.
    pub(crate) just_finished: Vec<(SeqId, FinishReason)>,
    // Scratch reused by every pass (no allocation in steady state).
    pub(crate) decisions: Vec<Decision>,
    pub(crate) step_copies: Vec<(u32, crate::kv::CopyBlock)>,
    pub(crate) update_slots: Vec<u32>,
    pub(crate) update_epoch: u64,
    pub(crate) stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler with an empty queue and a pool of `cfg.num_blocks` free blocks.
    pub fn new(cfg: SchedulerConfig) -> Result<Self, SchedError> {
        cfg.validate()?;
        let alloc = BlockAllocator::new(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
            .map_err(|e| SchedError::InvalidConfig(e.to_string()))?;
        Ok(Self {
            cfg,
            alloc,
            slab: Vec::new(),
            free_slots: Vec::new(),
            ids: IdMap::default(),
            running: Vec::with_capacity(cfg.max_num_seqs),
            waiting: VecDeque::new(),
            just_finished: Vec::new(),
            decisions: Vec::with_capacity(cfg.max_num_seqs),
            step_copies: Vec::new(),
            update_slots: Vec::new(),
            update_epoch: 0,
            stats: SchedulerStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Queues a request, or refuses it at once: when it could never run (empty, over the context
    /// length, over the whole KV pool) or when the waiting queue is full (overload).
    pub fn add(&mut self, req: Request) -> Result<(), AdmissionError> {
        let id = req.id;
        let prompt = req.prompt_ids.len();
        if prompt == 0 {
            return Err(AdmissionError::EmptyPrompt { id });
        }
        if req.max_tokens == 0 {
            return Err(AdmissionError::ZeroMaxTokens { id });
        }
        if prompt.saturating_add(req.max_tokens) > self.cfg.max_model_len {
            return Err(AdmissionError::ExceedsContext {
                id,
                prompt_tokens: prompt,
                max_tokens: req.max_tokens,
                max_model_len: self.cfg.max_model_len,
            });
        }
        // The last sampled token is never run, so the KV of `prompt + max_tokens - 1` tokens is
        // the most this sequence ever holds.
        let tokens = prompt + req.max_tokens - 1;
        let needed_blocks = tokens.div_ceil(self.cfg.block_size);
        if needed_blocks > self.cfg.num_blocks {
            return Err(AdmissionError::ExceedsKvPool {
                id,
                tokens,
                needed_blocks,
                total_blocks: self.cfg.num_blocks,
                block_size: self.cfg.block_size,
            });
        }
        if self.ids.contains_key(&id) {
            return Err(AdmissionError::DuplicateId { id });
        }
        if self.waiting.len() >= self.cfg.max_queue {
            return Err(AdmissionError::QueueFull { waiting: self.waiting.len(), max_queue: self.cfg.max_queue });
        }
        let slot = self.insert(Seq {
            id,
            tokens: req.prompt_ids,
            prompt_len: prompt,
            max_tokens: req.max_tokens,
            num_computed: 0,
            table: BlockTable::new(),
            phase: Phase::Waiting,
            awaiting_sample: false,
            last_sample_epoch: 0,
        });
        self.waiting.push_back(slot);
        self.stats.prompt_tokens += prompt as u64;
        Ok(())
    }

    /// Ends a live sequence now, wherever it is (waiting, mid-prefill, decoding, awaiting a
    /// sample): its blocks go back to the pool at once and it is reported in the next plan's
    /// `finished` with [`FinishReason::Abort`]. A token sampled for it later is ignored.
    pub fn abort(&mut self, id: SeqId) -> Result<(), SchedError> {
        let &slot = self.ids.get(&id).ok_or(SchedError::UnknownSequence(id))?;
        self.retire(slot, FinishReason::Abort);
        self.prune_lists();
        Ok(())
    }

    /// Starts `child` as a copy of live sequence `parent` (for `n > 1` and beam search). A running
    /// parent shares its blocks with the child (copy-on-write on the first append to a shared,
    /// partially filled block); if the running set is full, or the parent is waiting, the child
    /// waits (next to the front of the queue) and is computed when admitted. A parent awaiting a
    /// sampled token gives a child awaiting one too: report a token for each in `update`.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), SchedError> {
        let &p = self.ids.get(&parent).ok_or(SchedError::UnknownSequence(parent))?;
        if self.ids.contains_key(&child) {
            return Err(SchedError::DuplicateId(child));
        }
        let Some(ps) = self.slab[p as usize].as_ref() else {
            return Err(SchedError::UnknownSequence(parent));
        };
        let share = ps.phase == Phase::Running && self.running.len() < self.cfg.max_num_seqs;
        let mut seq = Seq {
            id: child,
            tokens: ps.tokens.clone(),
            prompt_len: ps.prompt_len,
            max_tokens: ps.max_tokens,
            num_computed: 0,
            table: BlockTable::new(),
            phase: Phase::Waiting,
            awaiting_sample: ps.awaiting_sample,
            last_sample_epoch: 0,
        };
        if share {
            seq.table = self.alloc.fork(&ps.table);
            seq.num_computed = ps.num_computed;
            seq.phase = Phase::Running;
        }
        let parent_phase = ps.phase;
        let slot = self.insert(seq);
        if share {
            self.running.push(slot);
        } else {
            // Right after a waiting parent, else at the front: the child is as old as its parent.
            let at = match parent_phase {
                Phase::Waiting => self.waiting.iter().position(|&s| s == p).map_or(0, |i| i + 1),
                Phase::Running => 0,
            };
            self.waiting.insert(at, slot);
        }
        Ok(())
    }

    /// Counters for metrics.
    pub fn stats(&self) -> SchedulerStats {
        let mut s = self.stats;
        s.running = self.running.len();
        s.waiting = self.waiting.len();
        s.kv = self.alloc.stats();
        s
    }

    /// The pool's counters.
    pub fn kv_stats(&self) -> KvStats {
        self.alloc.stats()
    }

    /// Number of live sequences (running + waiting).
    pub fn num_live(&self) -> usize {
        self.ids.len()
    }

    /// True when nothing is running or waiting.
    pub fn is_idle(&self) -> bool {
        self.ids.is_empty()
    }

    /// The tokens generated so far by a live sequence.
    pub fn output_tokens(&self, id: SeqId) -> Option<&[crate::kv::TokenId]> {
        let s = self.slab[*self.ids.get(&id)? as usize].as_ref()?;
        s.tokens.get(s.prompt_len..)
    }

    /// Allocated-but-unfilled slots of running sequences, over the pool's slots: the KV memory
    /// wasted by block granularity now. A block shared by several tables counts once, filled to
    /// its fullest holder. Costs O(pool): for reports and tests, not for every step.
    pub fn kv_waste(&self) -> f64 {
        let bs = self.cfg.block_size;
        let mut fill = vec![0usize; self.cfg.num_blocks];
        for &slot in &self.running {
            let Some(s) = self.slab[slot as usize].as_ref() else {
                continue;
            };
            let n = s.table.num_tokens();
            for (i, b) in s.table.blocks().iter().enumerate() {
                let f = n.saturating_sub(i * bs).min(bs);
                if let Some(x) = fill.get_mut(b.index()) {
                    *x = (*x).max(f);
                }
            }
        }
        let used = self.alloc.num_used();
        let filled: usize = fill.iter().sum();
        (used * bs).saturating_sub(filled) as f64 / (self.cfg.num_blocks * bs) as f64
    }

    /// Checks the scheduler's and the allocator's invariants (for tests).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let fail = |m: String| Err(InvariantViolation(m));
        if self.running.len() > self.cfg.max_num_seqs {
            return fail(format!("{} running, limit {}", self.running.len(), self.cfg.max_num_seqs));
        }
        let mut seen = vec![false; self.slab.len()];
        for (&slot, phase) in
            self.running.iter().map(|s| (s, Phase::Running)).chain(self.waiting.iter().map(|s| (s, Phase::Waiting)))
        {
            let Some(s) = self.slab.get(slot as usize).and_then(|s| s.as_ref()) else {
                return fail(format!("list names empty slot {slot}"));
            };
            if std::mem::replace(&mut seen[slot as usize], true) {
                return fail(format!("sequence {} listed twice", s.id));
            }
            if s.phase != phase || self.ids.get(&s.id) != Some(&slot) {
                return fail(format!("sequence {} is in the wrong list or id map", s.id));
            }
            let ok = match phase {
                Phase::Running => s.num_computed == s.table.num_tokens() && s.num_computed <= s.tokens.len(),
                Phase::Waiting => s.table.is_empty() && s.num_computed == 0,
            };
            if !ok || s.prompt_len > s.tokens.len() || s.generated() > s.max_tokens {
                return fail(format!(
                    "sequence {} ({phase:?}): computed {} of {} tokens, table {} tokens, prompt {}, max {}",
                    s.id,
                    s.num_computed,
                    s.tokens.len(),
                    s.table.num_tokens(),
                    s.prompt_len,
                    s.max_tokens
                ));
            }
        }
        if self.ids.len() != self.running.len() + self.waiting.len() {
            return fail(format!("{} ids but {} listed", self.ids.len(), self.running.len() + self.waiting.len()));
        }
        let tables = self.running.iter().filter_map(|&s| self.slab[s as usize].as_ref()).map(|s| &s.table);
        self.alloc.check_invariants(tables)
    }

    fn insert(&mut self, seq: Seq) -> u32 {
        let id = seq.id;
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(seq);
                s
            }
            None => {
                self.slab.push(Some(seq));
                (self.slab.len() - 1) as u32
            }
        };
        self.ids.insert(id, slot);
        slot
    }

    /// Registers a sequence's computed full blocks in the prefix cache (so they outlive it).
    pub(crate) fn cache_computed(&mut self, slot: u32) {
        if let Some(s) = self.slab[slot as usize].as_mut() {
            let computed = &s.tokens[..s.num_computed.min(s.tokens.len())];
            self.alloc.cache_full_blocks(&mut s.table, computed);
        }
    }

    /// Removes a sequence for good: blocks back to the pool (computed full blocks stay cached),
    /// id freed, reported in the next plan. The caller prunes `running`/`waiting` afterwards.
    pub(crate) fn retire(&mut self, slot: u32, reason: FinishReason) {
        self.cache_computed(slot);
        let Some(mut s) = self.slab[slot as usize].take() else {
            return;
        };
        self.alloc.free(&mut s.table);
        self.ids.remove(&s.id);
        self.free_slots.push(slot);
        self.just_finished.push((s.id, reason));
    }

    /// Drops retired slots from the running and waiting lists (order kept).
    pub(crate) fn prune_lists(&mut self) {
        let slab = &self.slab;
        self.running.retain(|&s| slab[s as usize].is_some());
        self.waiting.retain(|&s| slab[s as usize].is_some());
    }

    /// A fresh plan for the next step; see [`Self::schedule_into`].
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        self.schedule_into(&mut plan);
        plan
    }
}
