//! One scheduling pass: `Scheduler::schedule_into`.
//!
//! Order of a pass, all within the step's token budget (`max_batched_tokens`):
//! 1. **decode**: every running sequence with exactly one token to run, oldest first;
//! 2. **prefill chunks** of running sequences (a long prompt is split across steps, so it never
//!    stalls the streams in 1);
//! 3. **admission**, FCFS from the front of the waiting queue, while fewer than `max_num_seqs`
//!    run; it stops at the first request whose chunk does not fit (no overtaking), and is skipped
//!    in a pass that preempted (what was just freed would be taken back at once).
//!
//! When a running sequence needs a block and none is free or evictable, the most recently
//! admitted running sequence is preempted: its blocks are freed, any decision already made for
//! it in this pass is taken back, and it goes to the front of the waiting queue to be recomputed
//! from its prompt and generated tokens. If it is the one asking, it preempts itself. A prefill
//! chunk that only partly fits is shortened instead.
//!
//! Liveness: the oldest running sequence is never chosen as a victim by another, it always gets
//! budget (`max_batched_tokens >= max_num_seqs` leaves at least one token after the decodes of
//! the others), and its total KV need fits the whole pool (checked at admission), so it advances
//! every step until it finishes; then the next oldest does. Admission with nothing running always
//! fits. So every accepted request finishes in a bounded number of steps.
//!
//! Prefix-cache registration happens at the start of each sequence's turn and at retirement, for
//! tokens computed by *earlier* plans: a block is never found by a sequence of the same plan that
//! writes it, so the engine need not order writes and reads across sequences within one step
//! (plans must only run in the order they were produced).

use crate::kv::{KvError, SlotMapping};

use super::plan::{ScheduledSeq, StepPlan};
use super::scheduler::{Decision, Scheduler};
use super::seq::Phase;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Decode,
    Prefill,
}

impl Scheduler {
    /// Fills `plan` (cleared first, buffers reused) with the next step. Never fails: a pool or
    /// budget shortage means fewer tokens this step, preemption, or waiting.
    pub fn schedule_into(&mut self, plan: &mut StepPlan) {
        plan.clear();
        plan.finished.append(&mut self.just_finished);
        self.decisions.clear();
        self.step_copies.clear();
        let mut budget = self.cfg.max_batched_tokens;
        let mut preempted = false;
        for pass in [Pass::Decode, Pass::Prefill] {
            self.schedule_running(pass, &mut budget, &mut preempted, plan);
        }
        if !preempted {
            self.admit(&mut budget);
        }
        self.emit(plan);
        self.stats.steps += 1;
        self.stats.scheduled_tokens += plan.num_tokens() as u64;
    }

    fn schedule_running(&mut self, pass: Pass, budget: &mut usize, preempted: &mut bool, plan: &mut StepPlan) {
        let caching = self.alloc.prefix_caching();
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let slot = self.running[i];
            let Some(seq) = self.slab[slot as usize].as_ref() else {
                i += 1;
                continue;
            };
            let want = seq.pending();
            if want == 0 || (pass == Pass::Decode) != (want == 1) {
                i += 1;
                continue;
            }
            if caching {
                self.cache_computed(slot);
            }
            // Find room, preempting the newest running sequence while there is none.
            let n = loop {
                let Some(seq) = self.slab[slot as usize].as_ref() else {
                    break 0;
                };
                let room = self.alloc.appendable_tokens(&seq.table);
                if room > 0 {
                    break want.min(*budget).min(room);
                }
                let Some(&victim) = self.running.last() else {
                    break 0;
                };
                self.preempt(victim, budget, plan);
                *preempted = true;
                if victim == slot {
                    break 0;
                }
            };
            if n == 0 {
                // Preempted itself (it was the last entry, so the loop ends); the guard only
                // keeps the loop finite should that ever not hold.
                if self.running.get(i) == Some(&slot) {
                    i += 1;
                }
                continue;
            }
            // `n <= room`, so this cannot fail; if it did, the sequence just waits a step.
            let _ = self.take(slot, n, budget);
            i += 1;
        }
    }

    /// Admits waiting sequences FCFS while the budget, the running cap and the pool allow.
    fn admit(&mut self, budget: &mut usize) {
        let bs = self.cfg.block_size;
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(&slot) = self.waiting.front() else {
                break;
            };
            let Some(seq) = self.slab[slot as usize].as_mut() else {
                break;
            };
            if seq.awaiting_sample {
                break; // its last token is still coming back from the engine
            }
            // All but the last token may come from the cache: the model must run at least one
            // token to give logits.
            let len = seq.tokens.len();
            let peek = self.alloc.peek_prefix(&seq.tokens[..len - 1]);
            let n = (len - peek.tokens).min(*budget);
            let new_blocks = (peek.tokens + n).div_ceil(bs) - peek.tokens / bs;
            if new_blocks + peek.evictable_blocks > self.alloc.num_available() {
                break; // FCFS: nobody overtakes the head
            }
            let (table, hit) = self.alloc.match_prefix(&seq.tokens[..len - 1]);
            seq.table = table;
            seq.num_computed = hit;
            seq.phase = Phase::Running;
            self.waiting.pop_front();
            self.running.push(slot);
            if self.take(slot, n, budget).is_err() {
                // Unreachable after the check above; undo the admission and keep waiting.
                self.running.pop();
                self.unadmit(slot);
                break;
            }
        }
    }

    /// Puts a just-admitted sequence back at the front of the queue, blocks released.
    fn unadmit(&mut self, slot: u32) {
        if let Some(seq) = self.slab[slot as usize].as_mut() {
            self.alloc.free(&mut seq.table);
            seq.num_computed = 0;
            seq.phase = Phase::Waiting;
            self.waiting.push_front(slot);
        }
    }

    /// Reserves slots for the next `n` tokens of `slot` and records the decision.
    fn take(&mut self, slot: u32, n: usize, budget: &mut usize) -> Result<(), KvError> {
        let Some(seq) = self.slab[slot as usize].as_mut() else {
            return Ok(());
        };
        let start = seq.num_computed;
        if let Some(copy) = self.alloc.reserve_slots(&mut seq.table, n)? {
            self.step_copies.push((slot, copy));
        }
        seq.num_computed += n;
        *budget -= n;
        self.decisions.push(Decision { slot, start, n });
        Ok(())
    }

    /// Preempts running sequence `slot` (the newest): takes back its decision of this pass, frees
    /// its blocks (computed full blocks stay in the prefix cache, which makes the recompute
    /// cheap) and puts it at the front of the waiting queue.
    fn preempt(&mut self, slot: u32, budget: &mut usize, plan: &mut StepPlan) {
        if self.running.last() == Some(&slot) {
            self.running.pop();
        } else {
            self.running.retain(|&s| s != slot);
        }
        let Some(seq) = self.slab[slot as usize].as_mut() else {
            return;
        };
        if let Some(k) = self.decisions.iter().rposition(|d| d.slot == slot) {
            let d = self.decisions.remove(k);
            *budget += d.n;
            seq.num_computed -= d.n;
            self.step_copies.retain(|&(s, _)| s != slot);
        }
        let id = seq.id;
        self.cache_computed(slot);
        if let Some(seq) = self.slab[slot as usize].as_mut() {
            self.alloc.free(&mut seq.table);
            seq.num_computed = 0;
            seq.phase = Phase::Waiting;
        }
        self.waiting.push_front(slot);
        self.stats.preemptions += 1;
        plan.preempted.push(id);
    }

    /// Writes the pass's decisions into the plan.
    fn emit(&mut self, plan: &mut StepPlan) {
        let bs = self.cfg.block_size;
        for d in &self.decisions {
            let Some(seq) = self.slab[d.slot as usize].as_mut() else {
                continue;
            };
            let end = d.start + d.n;
            let blocks = seq.table.blocks();
            // Reservation guarantees coverage; a table that did not cover the chunk would be a
            // bug, and is left out rather than emitted with wrong slots.
            if end > seq.tokens.len() || end > blocks.len() * bs {
                continue;
            }
            let t0 = plan.token_ids.len();
            plan.token_ids.extend_from_slice(&seq.tokens[d.start..end]);
            plan.positions.extend((d.start..end).map(|p| p as u32));
            plan.slots.extend((d.start..end).map(|p| SlotMapping { block: blocks[p / bs], offset: (p % bs) as u32 }));
            let b0 = plan.block_tables.len();
            plan.block_tables.extend_from_slice(blocks);
            let needs_logits = end == seq.tokens.len();
            seq.awaiting_sample |= needs_logits;
            plan.seqs.push(ScheduledSeq {
                id: seq.id,
                tokens: t0..plan.token_ids.len(),
                context_len: d.start,
                block_table: b0..plan.block_tables.len(),
                needs_logits,
            });
        }
        plan.copies.extend(self.step_copies.iter().map(|&(_, c)| c));
    }
}
