//! Turns a scheduler [`StepPlan`] into the model's [`ForwardBatch`] inputs: positions as `i32`,
//! flat slot indices, block tables as `u32`, and one logits row (the chunk's last token) per
//! sequence whose plan entry `needs_logits`.
//!
//! Invariant: `logits_seqs[i]` is the plan index of the sequence whose logits are row `i` of the
//! model's output, in plan order; the buffers are reused from step to step.

use crate::attention::SeqAttn;
use crate::model::ForwardBatch;
use crate::sched::StepPlan;

#[derive(Default)]
pub(crate) struct BatchBuf {
    positions: Vec<i32>,
    slots: Vec<u32>,
    tables: Vec<u32>,
    logits_rows: Vec<usize>,
    pub logits_seqs: Vec<usize>,
}

impl BatchBuf {
    pub fn fill(&mut self, plan: &StepPlan, block_size: usize) {
        self.positions.clear();
        self.positions.extend(plan.positions.iter().map(|&p| p as i32));
        self.slots.clear();
        self.slots.extend(plan.slots.iter().map(|s| s.flat(block_size) as u32));
        self.tables.clear();
        self.tables.extend(plan.block_tables.iter().map(|b| b.0));
        self.logits_rows.clear();
        self.logits_seqs.clear();
        for (i, s) in plan.seqs.iter().enumerate() {
            if s.needs_logits && !s.tokens.is_empty() {
                self.logits_rows.push(s.tokens.end - 1);
                self.logits_seqs.push(i);
            }
        }
    }

    pub fn seq_attn<'a>(&'a self, plan: &StepPlan) -> Vec<SeqAttn<'a>> {
        plan.seqs
            .iter()
            .map(|s| SeqAttn {
                q_start: s.tokens.start,
                q_len: s.tokens.len(),
                ctx_len: s.context_len + s.tokens.len(),
                block_table: self.tables.get(s.block_table.clone()).unwrap_or(&[]),
            })
            .collect()
    }

    pub fn batch<'a>(&'a self, plan: &'a StepPlan, seqs: &'a [SeqAttn<'a>]) -> ForwardBatch<'a> {
        ForwardBatch {
            tokens: &plan.token_ids,
            positions: &self.positions,
            slots: &self.slots,
            seqs,
            logits_rows: &self.logits_rows,
        }
    }
}
