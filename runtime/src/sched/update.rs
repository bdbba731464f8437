//! Applying a step's results: `Scheduler::update`.
//!
//! The whole result is validated before anything changes, so a rejected result leaves the
//! scheduler as it was. Entries for ids that are no longer live (aborted or finished while the
//! step ran) are ignored: an abort may race with a step.

use crate::sample::FinishReason;

use super::error::SchedError;
use super::plan::StepResult;
use super::scheduler::Scheduler;

impl Scheduler {
    /// Appends each sampled token to its sequence, finishes sequences that reached `max_tokens`
    /// or the context length (`Length`), then those the engine ends, freeing their blocks.
    pub fn update(&mut self, result: &StepResult) -> Result<(), SchedError> {
        self.update_epoch += 1;
        let epoch = self.update_epoch;
        self.update_slots.clear();
        for &(id, _) in &result.sampled {
            let slot = match self.ids.get(&id) {
                Some(&s) => s,
                None => {
                    self.update_slots.push(u32::MAX); // not live: ignored
                    continue;
                }
            };
            let Some(seq) = self.slab.get_mut(slot as usize).and_then(|s| s.as_mut()) else {
                self.update_slots.push(u32::MAX); // unreachable: the id map names live slots
                continue;
            };
            if seq.last_sample_epoch == epoch {
                return Err(SchedError::DuplicateSample(id));
            }
            if !seq.awaiting_sample {
                return Err(SchedError::UnexpectedSample(id));
            }
            seq.last_sample_epoch = epoch;
            self.update_slots.push(slot);
        }
        let mut retired = false;
        for (k, &(_, token)) in result.sampled.iter().enumerate() {
            let slot = self.update_slots[k];
            let Some(seq) = self.slab.get_mut(slot as usize).and_then(|s| s.as_mut()) else {
                continue;
            };
            seq.tokens.push(token);
            seq.awaiting_sample = false;
            self.stats.generation_tokens += 1;
            if seq.generated() >= seq.max_tokens || seq.tokens.len() >= self.cfg.max_model_len {
                self.retire(slot, FinishReason::Length);
                retired = true;
            }
        }
        for &(id, reason) in &result.finished {
            if let Some(&slot) = self.ids.get(&id) {
                self.retire(slot, reason);
                retired = true;
            }
        }
        if retired {
            self.prune_lists();
        }
        Ok(())
    }
}
