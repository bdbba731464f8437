//! Beam search inside the engine: maps the beams of [`super::beam::BeamSearch`] to scheduler
//! sequences and applies each step's moves with `fork` / `abort` / sampled tokens.
//!
//! A beam's key is the id of the sequence computing it. All live beams must have their logits
//! before a step can run. Normally they all decode in the same engine step; when they do not
//! (a beam was preempted, or a fork is waiting for a free running slot), the beams that already
//! have logits are *detached*: their sequences are aborted (freeing blocks and running slots, so
//! the missing beams can run — holding them would deadlock a full running set) and their
//! log-probabilities kept. When the step finally runs, a detached beam's continuations are
//! re-added to the scheduler as new sequences whose prompt is the original prompt plus the
//! beam's tokens (the prefix cache makes most of that recompute free).
//!
//! Invariant: every live beam is either attached (its key is a live scheduler sequence that is
//! awaiting a token or computing) or detached (no scheduler sequence, logits kept in `pending`).

use super::beam::{log_softmax, BeamConfig, BeamError, BeamMoves, BeamSearch, Hypothesis};
use crate::sched::{Request, Scheduler, SeqId, StepResult};
use std::collections::{HashMap, HashSet};

pub(crate) struct BeamGroup {
    pub search: BeamSearch,
    /// Beams to return.
    pub n: usize,
    /// Log-probabilities of this step, by beam key.
    pending: HashMap<u64, Vec<f32>>,
    detached: HashSet<u64>,
}

/// What applying a step changed, for the engine's sequence -> request map.
#[derive(Default)]
pub(crate) struct Remap {
    pub added: Vec<u64>,
    pub removed: Vec<u64>,
}

impl BeamGroup {
    pub fn new(cfg: BeamConfig, n: usize, key: u64) -> Result<Self, BeamError> {
        Ok(BeamGroup { search: BeamSearch::new(cfg, key)?, n, pending: HashMap::new(), detached: HashSet::new() })
    }

    /// Keys of beams with a live scheduler sequence.
    pub fn attached(&self) -> Vec<u64> {
        self.search.live_keys().filter(|k| !self.detached.contains(k)).collect()
    }

    pub fn on_logits(&mut self, key: u64, logits: &[f32]) {
        self.pending.insert(key, log_softmax(logits));
    }

    /// Every live beam has its logits: the step can run.
    pub fn ready(&self) -> bool {
        !self.pending.is_empty() && self.search.live_keys().all(|k| self.pending.contains_key(&k))
    }

    /// Runs the step and applies its moves: tokens for continuing and forked attached beams go
    /// into `result`, forks and drops go to the scheduler, continuations of detached beams are
    /// re-added as new sequences.
    pub fn step(
        &mut self,
        prompt: &[u32],
        sched: &mut Scheduler,
        result: &mut StepResult,
        new_key: impl FnMut() -> u64,
    ) -> Result<Remap, String> {
        let pending = std::mem::take(&mut self.pending);
        let moves = self.search.step(|k| pending.get(&k).map(|v| v.as_slice()), new_key).map_err(|e| e.to_string())?;
        self.apply(moves, prompt, sched, result)
    }

    fn apply(
        &mut self,
        m: BeamMoves,
        prompt: &[u32],
        sched: &mut Scheduler,
        result: &mut StepResult,
    ) -> Result<Remap, String> {
        let mut remap = Remap::default();
        // Forks first: a parent must still be live (and not yet advanced) when it is copied.
        for &(parent, child, token) in &m.forked {
            if self.detached.contains(&parent) {
                self.readd(child, prompt, sched)?;
            } else {
                sched.fork(SeqId(parent), SeqId(child)).map_err(|e| format!("forking beam {parent}: {e}"))?;
                result.sampled.push((SeqId(child), token));
            }
            remap.added.push(child);
        }
        for &(key, token) in &m.advanced {
            if self.detached.remove(&key) {
                self.readd(key, prompt, sched)?;
                remap.added.push(key);
            } else {
                result.sampled.push((SeqId(key), token));
            }
        }
        for &key in &m.dropped {
            if !self.detached.remove(&key) {
                let _ = sched.abort(SeqId(key));
            }
            remap.removed.push(key);
        }
        Ok(remap)
    }

    /// A continuation of a detached beam as a new sequence: prompt + the beam's tokens (the new
    /// one last, so the model runs it), for the tokens the search may still generate.
    fn readd(&mut self, key: u64, prompt: &[u32], sched: &mut Scheduler) -> Result<(), String> {
        let tokens = self.search.tokens_of(key).ok_or_else(|| format!("beam {key} is not live"))?;
        let mut ids = Vec::with_capacity(prompt.len() + tokens.len());
        ids.extend_from_slice(prompt);
        ids.extend_from_slice(tokens);
        let max_tokens = self.search.config().max_new_tokens.saturating_sub(self.search.generated()).max(1);
        sched
            .add(Request { id: SeqId(key), prompt_ids: ids, max_tokens })
            .map_err(|e| format!("re-adding beam {key}: {e}"))
    }

    /// Beams whose logits arrived while others' did not: abort their sequences (see the module
    /// header). Returns the keys detached now.
    pub fn detach_waiting(&mut self, sched: &mut Scheduler) -> Vec<u64> {
        if self.pending.is_empty() || self.ready() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for &key in self.pending.keys() {
            if self.detached.insert(key) {
                let _ = sched.abort(SeqId(key));
                out.push(key);
            }
        }
        out
    }

    pub fn results(&self) -> Vec<Hypothesis> {
        self.search.results(self.n)
    }
}
