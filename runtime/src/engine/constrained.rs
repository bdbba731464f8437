//! One sequence's constraint inside the engine: masks its logits row on the host, or hands its
//! mask to the device sampler, advances with each token it takes, forks with the sequence.
//!
//! The next mask is computed ahead: accepting a token records it as pending and starts a job on
//! the rayon pool that advances the grammar past it and computes the new state's mask, so both
//! run while the engine thread runs the next model step (on a GPU the host is idle then; on the
//! CPU a worker kept hot by the step picks it up) — the engine thread pays for neither, which
//! for a batch of constrained rows on a fast model step was most of the step (H100, 64 rows:
//! constrained throughput 47% of unconstrained with the advance on the engine thread) — and
//! sampling only waits for what is left of it. A sequence's first mask is started when the
//! engine admits it ([`Constrained::prefetch`]), so it runs beside the prefill. Both are
//! measured: each mask's computation (`times`) and how long sampling waited for it (`waits`;
//! zero when it was ready). Slow masks are never skipped.
//!
//! Invariants: a mask is always the one of the constraint's current state — computed ahead
//! from the state right after the pending token, and used only by the first `fill` after it,
//! for the same vocabulary; anything else (a fork, another vocabulary, a lost job) computes it
//! anew. Whoever locks the state first applies a pending token ([`State::settle`]), so a fork or
//! a mask never sees the state before an accepted token; a token the grammar refuses makes
//! every later mask an error (reported by the next `fill`, as `accept` reported it before).
//! Preemption keeps the constraint and its state, so a mask computed ahead stays valid.

use super::shared::lock;
use crate::sample::constraint::{apply_mask, mask_words, MaskTimes};
use crate::sample::TokenConstraint;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

type MaskResult = Result<Vec<u32>, String>;

/// The constraint with the token accepted but not yet applied, and the error of one refused.
struct State {
    c: Box<dyn TokenConstraint>,
    pending: Option<u32>,
    failed: Option<String>,
}

impl State {
    /// Applies the pending token; the error of a refused one, now or before.
    fn settle(&mut self) -> Result<(), String> {
        if let Some(t) = self.pending.take() {
            if let Err(e) = self.c.accept(t) {
                self.failed = Some(e.to_string());
            }
        }
        self.failed.clone().map_or(Ok(()), Err)
    }
}

pub(crate) struct Constrained {
    /// The constraint, shared with the job computing its next mask.
    inner: Arc<Mutex<State>>,
    /// The mask of the current state being computed ahead, over a vocabulary of `.0` ids.
    ahead: Option<(usize, Receiver<MaskResult>)>,
    /// The vocabulary of the last mask: what the next one is computed over.
    vocab: Option<usize>,
    mask: Vec<u32>,
    masked: Vec<f32>,
    times: Arc<Mutex<MaskTimes>>,
    waits: Arc<Mutex<MaskTimes>>,
}

/// The mask of `inner`'s current state (its pending token applied) over `vocab` ids, its
/// computation timed into `times`.
fn compute(inner: &Mutex<State>, vocab: usize, times: &Mutex<MaskTimes>) -> MaskResult {
    let mut mask = vec![0u32; mask_words(vocab)];
    let mut s = lock(inner);
    s.settle()?;
    let t = Instant::now();
    let r = s.c.fill_mask(&mut mask);
    lock(times).record(t.elapsed());
    r.map(|()| mask).map_err(|e| e.to_string())
}

impl Constrained {
    pub fn new(inner: Box<dyn TokenConstraint>, times: Arc<Mutex<MaskTimes>>, waits: Arc<Mutex<MaskTimes>>) -> Self {
        Self::of(State { c: inner, pending: None, failed: None }, times, waits)
    }

    fn of(state: State, times: Arc<Mutex<MaskTimes>>, waits: Arc<Mutex<MaskTimes>>) -> Self {
        let inner = Arc::new(Mutex::new(state));
        Constrained { inner, ahead: None, vocab: None, mask: Vec::new(), masked: Vec::new(), times, waits }
    }

    fn fill(&mut self, vocab: usize) -> Result<(), String> {
        self.vocab = Some(vocab);
        if let Some((v, rx)) = self.ahead.take() {
            let t = Instant::now();
            // A job that panicked dropped its sender: compute the mask here instead.
            if let (true, Ok(r)) = (v == vocab, rx.recv()) {
                lock(&self.waits).record(t.elapsed());
                self.mask = r?;
                return Ok(());
            }
        }
        lock(&self.waits).record(std::time::Duration::ZERO);
        self.mask = compute(&self.inner, vocab, &self.times)?;
        Ok(())
    }

    /// A copy of `logits` with every token the constraint forbids at `-inf`.
    pub fn mask(&mut self, logits: &[f32]) -> Result<&[f32], String> {
        self.fill(logits.len())?;
        self.masked.clear();
        self.masked.extend_from_slice(logits);
        apply_mask(&mut self.masked, &self.mask);
        Ok(&self.masked)
    }

    /// The allowed-token bitmask over `vocab` ids, for a device-sampler job.
    pub fn allowed(&mut self, vocab: usize) -> Result<Vec<u32>, String> {
        self.fill(vocab)?;
        Ok(self.mask.clone())
    }

    /// Masks `row` (log-probabilities of a beam) in place.
    pub fn mask_in_place(&mut self, row: &mut [f32]) -> Result<(), String> {
        self.fill(row.len())?;
        apply_mask(row, &self.mask);
        Ok(())
    }

    /// Records `token` as the next to apply, then starts the job that applies it and computes
    /// the new state's mask (see the module header); before any mask, applies it here.
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        // An unused mask computed ahead is dropped; its job (if still running) finishes under
        // the lock before the state moves on.
        self.ahead = None;
        {
            let mut s = lock(&self.inner);
            s.settle()?;
            s.pending = Some(token);
            if self.vocab.is_none() {
                return s.settle();
            }
        }
        if let Some(vocab) = self.vocab {
            self.compute_ahead(vocab);
        }
        Ok(())
    }

    /// Starts computing the first mask over `vocab` ids now, so that it runs while the engine
    /// runs the sequence's prefill: a new grammar's first mask is its slowest (llguidance builds
    /// its lexer's states as they are reached), and a time to first token waited for it.
    /// Nothing is started for a constraint that is not ready (its grammar still compiling):
    /// its first mask is computed when sampling needs it.
    pub fn prefetch(&mut self, vocab: usize) {
        if self.vocab.is_none() && self.ahead.is_none() && lock(&self.inner).c.ready() {
            self.vocab = Some(vocab);
            self.compute_ahead(vocab);
        }
    }

    /// Starts the job computing the current state's mask over `vocab` ids on the pool.
    fn compute_ahead(&mut self, vocab: usize) {
        let (tx, rx) = sync_channel(1);
        let (inner, times) = (Arc::clone(&self.inner), Arc::clone(&self.times));
        rayon::spawn(move || {
            // A panic in the grammar engine must not abort the pool's thread (rayon's default
            // for a spawned job): it becomes this mask's error.
            let r = catch_unwind(AssertUnwindSafe(|| compute(&inner, vocab, &times)))
                .unwrap_or_else(|_| Err("the token mask computation panicked".into()));
            let _ = tx.send(r);
        });
        self.ahead = Some((vocab, rx));
    }

    pub fn fork(&self) -> Self {
        let mut s = lock(&self.inner);
        // A refused token stays with the fork (its masks are errors too).
        let _ = s.settle();
        let state = State { c: s.c.fork(), pending: None, failed: s.failed.clone() };
        let mut c = Constrained::of(state, Arc::clone(&self.times), Arc::clone(&self.waits));
        c.vocab = self.vocab;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::constraint::ConstraintError;

    /// Allows token `state % vocab` and `state + 1`, one state per accepted token.
    struct Counter(u32);

    impl TokenConstraint for Counter {
        fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), ConstraintError> {
            for t in [self.0, self.0 + 1] {
                let t = t as usize % (mask.len() * 32);
                mask[t / 32] |= 1 << (t % 32);
            }
            Ok(())
        }
        fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
            self.0 += 1 + token % 2;
            Ok(())
        }
        fn fork(&self) -> Box<dyn TokenConstraint> {
            Box::new(Counter(self.0))
        }
    }

    fn allowed(mask: &[f32]) -> Vec<usize> {
        mask.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, _)| i).collect()
    }

    #[test]
    fn masks_computed_ahead_are_the_current_states() {
        let (times, waits) = (Arc::default(), Arc::default());
        let mut c = Constrained::new(Box::new(Counter(3)), Arc::clone(&times), Arc::clone(&waits));
        let logits = vec![0f32; 100];
        assert_eq!(allowed(c.mask(&logits).unwrap()), [3, 4]);
        for (token, want) in [(4u32, [4, 5]), (5, [6, 7]), (7, [8, 9]), (8, [9, 10])] {
            c.accept(token).unwrap();
            assert!(c.ahead.is_some(), "the next mask is computed ahead");
            assert_eq!(allowed(c.mask(&logits).unwrap()), want);
        }
        // A fork computes its own; accepting twice without a mask in between drops the first.
        let mut f = c.fork();
        assert_eq!(allowed(f.mask(&logits).unwrap()), [9, 10]);
        c.accept(1).unwrap();
        c.accept(1).unwrap();
        assert_eq!(allowed(c.mask(&logits).unwrap()), [13, 14]);
        // A first mask computed at admission: the one sampling then uses, timed as a wait.
        let mut p = Constrained::new(Box::new(Counter(20)), Arc::clone(&times), Arc::clone(&waits));
        p.prefetch(100);
        assert!(p.ahead.is_some(), "the first mask is computed ahead");
        p.prefetch(100); // a second call changes nothing
        assert_eq!(allowed(p.mask(&logits).unwrap()), [20, 21]);
        // Another vocabulary than the one computed ahead: computed anew.
        c.accept(0).unwrap();
        assert_eq!(allowed(c.mask(&[0f32; 40]).unwrap()), [14, 15]);
        let (t, w) = (lock(&times).summary(), lock(&waits).summary());
        assert_eq!(w.count, 9, "one wait per mask used");
        assert!(t.count >= 9, "every mask computed is timed, used or not: {}", t.count);
    }

    /// Refuses token 13 (and counts every token applied).
    struct Picky(u32);

    impl TokenConstraint for Picky {
        fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), ConstraintError> {
            mask[0] = 1 << (self.0 % 32);
            Ok(())
        }
        fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
            if token == 13 {
                return Err(ConstraintError("13 refused".into()));
            }
            self.0 += 1;
            Ok(())
        }
        fn fork(&self) -> Box<dyn TokenConstraint> {
            Box::new(Picky(self.0))
        }
    }

    #[test]
    fn a_fork_right_after_accept_has_the_token_and_a_refused_token_fails_the_next_mask() {
        let (times, waits) = (Arc::default(), Arc::default());
        let mut c = Constrained::new(Box::new(Picky(0)), times, waits);
        let logits = vec![0f32; 32];
        assert_eq!(allowed(c.mask(&logits).unwrap()), [0]);
        for _ in 0..50 {
            c.accept(1).unwrap();
            // Forked before or after the job ran: the token is applied either way.
            let mut f = c.fork();
            let want = allowed(c.mask(&logits).unwrap());
            assert_eq!(allowed(f.mask(&logits).unwrap()), want);
        }
        assert_eq!(allowed(c.mask(&logits).unwrap()), [50 % 32]);
        c.accept(13).unwrap();
        let f = c.fork();
        assert!(c.mask(&logits).unwrap_err().contains("13 refused"));
        assert!(c.accept(1).is_err(), "the state stays failed");
        let mut f = f;
        assert!(f.mask(&logits).is_err(), "a fork of a failed state fails too");
    }
}
