//! One sequence's constraint inside the engine: masks its logits row on the host, or hands its
//! mask to the device sampler (timed either way), advances with each token it takes, forks
//! with the sequence.
//!
//! Invariant: the mask is recomputed from the constraint's state for every row, so nothing
//! cached here can go stale across preemption (the constraint object is kept while the KV is
//! recomputed) or forks.

use super::shared::lock;
use crate::sample::constraint::{apply_mask, mask_words, MaskTimes};
use crate::sample::TokenConstraint;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) struct Constrained {
    inner: Box<dyn TokenConstraint>,
    mask: Vec<u32>,
    masked: Vec<f32>,
    times: Arc<Mutex<MaskTimes>>,
}

impl Constrained {
    pub fn new(inner: Box<dyn TokenConstraint>, times: Arc<Mutex<MaskTimes>>) -> Self {
        Constrained { inner, mask: Vec::new(), masked: Vec::new(), times }
    }

    fn fill(&mut self, vocab: usize) -> Result<(), String> {
        self.mask.clear();
        self.mask.resize(mask_words(vocab), 0);
        let t = Instant::now();
        let r = self.inner.fill_mask(&mut self.mask);
        lock(&self.times).record(t.elapsed());
        r.map_err(|e| e.to_string())
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

    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        self.inner.accept(token).map_err(|e| e.to_string())
    }

    pub fn fork(&self) -> Self {
        Constrained::new(self.inner.fork(), Arc::clone(&self.times))
    }
}
