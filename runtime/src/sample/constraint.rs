//! Constrained decoding's seam: a grammar's state for one sequence, as the engine sees it.
//!
//! The engine knows nothing of grammars or tokenizers (the HTTP layer implements these traits
//! over llguidance, `server/src/http/structured/`). It asks a [`TokenConstraint`] for the set
//! of tokens allowed next, masks every other logit to `-inf` before the sampling pipeline of
//! [`super`] runs (so a masked token is never drawn, by that pipeline's own rules), and tells
//! the constraint which token was taken.
//!
//! Invariants a constraint must keep:
//! - [`TokenConstraint::fill_mask`] is a pure function of the tokens accepted so far: asking
//!   twice gives the same mask, so a sequence that is preempted and recomputed (its KV is
//!   rebuilt, its constraint object kept) continues exactly where it was;
//! - the mask allows the sequence's end ids (given to [`ConstraintSource::start`]: the EOS
//!   ids unless `ignore_eos`, and the stop token ids) exactly where the grammar may end, and
//!   only them once it must end; a sequence ends on such a token, so it is never accepted;
//! - [`TokenConstraint::fork`] gives an independent copy in the same state (`n > 1` choices
//!   before their first token, beams that branch).

use std::time::Duration;

/// A constraint refused a token or could not compute a mask (its grammar failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("constrained decoding: {0}")]
pub struct ConstraintError(pub String);

/// A grammar's state for one sequence. See the module header for the invariants.
pub trait TokenConstraint: Send {
    /// Writes the tokens allowed next into `mask`: bit `t % 32` of word `t / 32`. The caller
    /// zero-fills `mask` with enough words for the vocabulary.
    fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), ConstraintError>;
    /// Advances past `token` (one the last mask allowed).
    fn accept(&mut self, token: u32) -> Result<(), ConstraintError>;
    /// An independent copy in the same state.
    fn fork(&self) -> Box<dyn TokenConstraint>;
    /// Whether `fill_mask` and `accept` can answer without waiting for something outside the
    /// constraint (a grammar still compiling, [`super::deferred`]): the engine computes masks
    /// ahead on its pool only for a ready constraint.
    fn ready(&self) -> bool {
        true
    }
}

/// Starts one [`TokenConstraint`] per sequence of a request: a compiled grammar.
pub trait ConstraintSource: Send + Sync + std::fmt::Debug {
    /// A constraint at the grammar's start for a sequence that ends on any of `ends`.
    fn start(&self, ends: &[u32]) -> Result<Box<dyn TokenConstraint>, ConstraintError>;
}

/// Words of a mask over `vocab` ids.
pub fn mask_words(vocab: usize) -> usize {
    vocab.div_ceil(32)
}

/// Sets every logit whose bit in `mask` is clear (or lies past it) to `-inf`.
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = mask.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Whether `token` is allowed by `mask`.
pub fn allows(mask: &[u32], token: u32) -> bool {
    mask.get(token as usize / 32).is_some_and(|w| w & (1 << (token % 32)) != 0)
}

/// Durations of mask computations: every one counted, the last [`MaskTimes::WINDOW`] kept for
/// percentiles. Slow masks are measured and reported here, never skipped.
#[derive(Debug, Default)]
pub struct MaskTimes {
    recent: std::collections::VecDeque<Duration>,
    count: u64,
    total: Duration,
    max: Duration,
}

/// A summary of [`MaskTimes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct MaskSummary {
    pub count: u64,
    pub mean_seconds: f64,
    /// Over the most recent [`MaskTimes::WINDOW`] masks.
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

impl MaskTimes {
    pub const WINDOW: usize = 8192;

    pub fn record(&mut self, d: Duration) {
        if self.recent.len() == Self::WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
        self.count += 1;
        self.total += d;
        self.max = self.max.max(d);
    }

    pub fn summary(&self) -> MaskSummary {
        let mut v: Vec<Duration> = self.recent.iter().copied().collect();
        v.sort_unstable();
        let pct = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64()
        };
        MaskSummary {
            count: self.count,
            mean_seconds: if self.count == 0 { 0.0 } else { self.total.as_secs_f64() / self.count as f64 },
            p50_seconds: pct(0.50),
            p99_seconds: pct(0.99),
            max_seconds: self.max.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_set_bits_and_drops_the_rest() {
        let mut logits = vec![1.0f32; 70];
        let mut mask = vec![0u32; mask_words(70)];
        for t in [0u32, 31, 32, 69] {
            mask[t as usize / 32] |= 1 << (t % 32);
        }
        apply_mask(&mut logits, &mask[..2]);
        let kept: Vec<usize> = logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, _)| i).collect();
        assert_eq!(kept, vec![0, 31, 32], "69 lies past the two words given");
        assert!(allows(&mask, 69) && !allows(&mask, 68) && !allows(&mask, 1000));
    }

    #[test]
    fn percentiles_are_of_the_recent_window() {
        let mut t = MaskTimes::default();
        for i in 1..=100u64 {
            t.record(Duration::from_micros(i));
        }
        let s = t.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_seconds, 50e-6);
        assert_eq!(s.p99_seconds, 99e-6);
        assert_eq!(s.max_seconds, 100e-6);
        assert_eq!(MaskTimes::default().summary(), MaskSummary::default());
    }
}
