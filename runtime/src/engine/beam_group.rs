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
//! A constrained search keeps one constraint per live beam: each beam's log-probabilities are
//! masked before the search ranks candidates (HF's `prefix_allowed_tokens_fn` semantics: the
//! mask applies after `log_softmax`, without renormalising), a fork copies its parent's
//! constraint before either takes its token, and a dropped beam's constraint goes with it.
//!
//! Invariant: every live beam is either attached (its key is a live scheduler sequence that is
//! awaiting a token or computing) or detached (no scheduler sequence, logits kept in `pending`).

use super::beam::{log_softmax, BeamConfig, BeamError, BeamMoves, BeamSearch, Hypothesis};
use super::constrained::Constrained;
use crate::sched::{Request, Scheduler, SeqId, StepResult};
use std::collections::{HashMap, HashSet};

pub(crate) struct BeamGroup {
    pub search: BeamSearch,
    /// Beams to return.
    pub n: usize,
    /// Log-probabilities of this step, by beam key.
    pending: HashMap<u64, Vec<f32>>,
    detached: HashSet<u64>,
    /// Per live beam key, when the request is constrained.
    constraints: HashMap<u64, Constrained>,
}

/// What applying a step changed, for the engine's sequence -> request map.
#[derive(Default)]
pub(crate) struct Remap {
    pub added: Vec<u64>,
    pub removed: Vec<u64>,
}

impl BeamGroup {
    pub fn new(cfg: BeamConfig, n: usize, key: u64, constraint: Option<Constrained>) -> Result<Self, BeamError> {
        Ok(BeamGroup {
            search: BeamSearch::new(cfg, key)?,
            n,
            pending: HashMap::new(),
            detached: HashSet::new(),
            constraints: constraint.map(|c| (key, c)).into_iter().collect(),
        })
    }

    /// Keys of beams with a live scheduler sequence.
    pub fn attached(&self) -> Vec<u64> {
        self.search.live_keys().filter(|k| !self.detached.contains(k)).collect()
    }

    pub fn on_logits(&mut self, key: u64, logits: &[f32]) -> Result<(), String> {
        let mut lp = log_softmax(logits);
        if let Some(c) = self.constraints.get_mut(&key) {
            c.mask_in_place(&mut lp)?;
        }
        self.pending.insert(key, lp);
        Ok(())
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
        self.advance_constraints(&m)?;
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

    /// Moves the beams' constraints with the step: forks copy the parent's state (before the
    /// parent takes its own token), then each new or continuing beam takes its token.
    fn advance_constraints(&mut self, m: &BeamMoves) -> Result<(), String> {
        if self.constraints.is_empty() {
            return Ok(());
        }
        let mut forked = Vec::with_capacity(m.forked.len());
        for &(parent, child, token) in &m.forked {
            let mut c = self.constraints.get(&parent).ok_or_else(|| format!("beam {parent} has no constraint"))?.fork();
            c.accept(token)?;
            forked.push((child, c));
        }
        for &(key, token) in &m.advanced {
            self.constraints.get_mut(&key).ok_or_else(|| format!("beam {key} has no constraint"))?.accept(token)?;
        }
        for &key in &m.dropped {
            self.constraints.remove(&key);
        }
        self.constraints.extend(forked);
        Ok(())
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
