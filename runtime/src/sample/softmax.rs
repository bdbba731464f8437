//! Numerically stable pieces of the softmax used by the sampler: one validating scan for the
//! maximum and the greedy argmax, the log-normaliser for log-probabilities, and the tempered
//! weights `exp((l - max) / T)`, all with the spec's [`exp_nonpos`]; sums of weights are exact
//! integer sums of quantized weights, so they vectorise and do not depend on order.
//!
//! Invariant established by [`scan`] and relied on by everything after it: the vocabulary has
//! `1..=MAX_VOCAB` entries, every logit is finite or `-inf`, and at least one is finite, so
//! `max` is finite, the token at `argmax` has weight exactly 1 (`exp_nonpos(0) == 1`), and the
//! normaliser is `>= 1` (never 0, never NaN).

use super::error::SamplingError;
use super::math::{exp_nonpos, total_mass, MAX_VOCAB, WEIGHT_SCALE};

/// Result of the validating pass over the (penalised) logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scan {
    /// Largest logit (finite).
    pub max: f32,
    /// Lowest token id holding `max`: the greedy choice and the top of the rank order.
    pub argmax: u32,
}

/// Independent accumulators in the validating scan, so the compiler can vectorise it (a
/// single running max is a serial dependency chain).
const LANES: usize = 8;

/// NaN and `+inf` are the logits no sampling rule can rank; `-inf` is a legitimate mask.
#[inline]
fn is_bad(l: f32) -> bool {
    l.is_nan() || l == f32::INFINITY
}

/// Checks that logits are finite or `-inf` with at least one finite, and finds max and argmax.
pub(crate) fn scan(logits: &[f32]) -> Result<Scan, SamplingError> {
    if logits.is_empty() {
        return Err(SamplingError::EmptyLogits);
    }
    if logits.len() > MAX_VOCAB {
        return Err(SamplingError::VocabTooLarge { vocab: logits.len() });
    }
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut bad = [false; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            bad[j] |= is_bad(c[j]);
            maxes[j] = if c[j] > maxes[j] { c[j] } else { maxes[j] };
        }
    }
    for &l in rest {
        bad[0] |= is_bad(l);
        maxes[0] = if l > maxes[0] { l } else { maxes[0] };
    }
    if bad.iter().any(|&b| b) {
        // Report the first offender; this slow path runs only on broken input.
        if let Some(i) = logits.iter().position(|&l| is_bad(l)) {
            return Err(SamplingError::NonFiniteLogit { token: i as u32, value: logits[i] });
        }
    }
    let max = maxes.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if max == f32::NEG_INFINITY {
        return Err(SamplingError::AllMasked);
    }
    // The first index holding the max is the lowest id among equal maxima.
    let argmax = logits.iter().position(|&l| l == max).unwrap_or(0) as u32;
    Ok(Scan { max, argmax })
}

/// `ln(Q / 2^40)` where `Q` is the exact integer sum of the quantized weights: the log of the
/// total weight, independent of summation order.
pub(crate) fn log_mass(weights: &[f32]) -> f64 {
    let total = total_mass(weights.iter().copied());
    (total as f64 / f64::from(WEIGHT_SCALE)).ln()
}

/// Tokens per block when the log-normaliser computes weights into a stack buffer.
const BLOCK: usize = 256;

/// The log-softmax normaliser `ln(sum_j e(l_j - max))`, via [`log_mass`], without a
/// vocabulary-sized buffer. `>= 0`: the top token alone contributes exactly 1.
pub(crate) fn log_normalizer(logits: &[f32], max: f32) -> f64 {
    let mut buf = [0f32; BLOCK];
    let mut total = 0u64;
    for chunk in logits.chunks(BLOCK) {
        let w = &mut buf[..chunk.len()];
        exp_shifted(w, chunk, max, 1.0);
        total += total_mass(w.iter().copied());
    }
    (total as f64 / f64::from(WEIGHT_SCALE)).ln()
}

/// `out[i] = e((inp[i] - max) / temperature)`, skipping the division at temperature 1 (`x / 1
/// == x` exactly, so no value changes). Taking slices, not a `Vec`, tells the compiler the
/// buffers do not overlap, which is what lets it vectorise the polynomial.
fn exp_shifted(out: &mut [f32], inp: &[f32], max: f32, temperature: f32) {
    if temperature == 1.0 {
        for (o, &l) in out.iter_mut().zip(inp) {
            *o = exp_nonpos(l - max);
        }
    } else {
        for (o, &l) in out.iter_mut().zip(inp) {
            *o = exp_nonpos((l - max) / temperature);
        }
    }
}

/// Log-probability of one logit given the scan's max and [`log_normalizer`].
pub(crate) fn logprob(l: f32, max: f32, log_norm: f64) -> f32 {
    (f64::from(l - max) - log_norm) as f32
}

/// Fills `out` with `exp_nonpos((l_i - max) / temperature)`; `temperature > 0`.
pub(crate) fn tempered_weights(logits: &[f32], max: f32, temperature: f32, out: &mut Vec<f32>) {
    out.clear();
    out.resize(logits.len(), 0.0);
    exp_shifted(out, logits, max, temperature);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NINF: f32 = f32::NEG_INFINITY;

    #[test]
    fn scan_finds_lowest_argmax() {
        assert_eq!(scan(&[1.0, 3.0, 3.0, 2.0]).unwrap(), Scan { max: 3.0, argmax: 1 });
        assert_eq!(scan(&[NINF, -5.0, NINF]).unwrap(), Scan { max: -5.0, argmax: 1 });
        assert_eq!(scan(&[-0.0, 0.0]).unwrap().argmax, 0);
        // Long enough to exercise the lanes and the remainder.
        let mut l: Vec<f32> = (0..37).map(|i| (i % 7) as f32).collect();
        l[33] = 9.0;
        l[20] = 9.0;
        assert_eq!(scan(&l).unwrap(), Scan { max: 9.0, argmax: 20 });
        l[35] = f32::NAN;
        l[30] = f32::INFINITY;
        assert_eq!(scan(&l), Err(SamplingError::NonFiniteLogit { token: 30, value: f32::INFINITY }));
    }

    #[test]
    fn scan_rejects_bad_logits() {
        assert_eq!(scan(&[]), Err(SamplingError::EmptyLogits));
        assert_eq!(scan(&[NINF, NINF]), Err(SamplingError::AllMasked));
        assert_eq!(scan(&[0.0, f32::INFINITY]), Err(SamplingError::NonFiniteLogit { token: 1, value: f32::INFINITY }));
        assert!(matches!(scan(&[f32::NAN]), Err(SamplingError::NonFiniteLogit { token: 0, .. })));
        let huge = vec![0.0f32; MAX_VOCAB + 1];
        assert_eq!(scan(&huge), Err(SamplingError::VocabTooLarge { vocab: MAX_VOCAB + 1 }));
    }

    #[test]
    fn logprobs_normalise() {
        let l = [0.0f32, 1.0, 2.0, NINF];
        let s = scan(&l).unwrap();
        let ln = log_normalizer(&l, s.max);
        let total: f64 = l.iter().map(|&x| f64::from(logprob(x, s.max, ln)).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let expect = 2.0 - (1.0 + 1f64.exp() + 2f64.exp()).ln();
        assert!((f64::from(logprob(2.0, s.max, ln)) - expect).abs() < 1e-6);
        assert_eq!(logprob(NINF, s.max, ln), NINF);
    }

    #[test]
    fn tempered_weights_have_unit_max() {
        let mut w = Vec::new();
        tempered_weights(&[1.0, 3.0, NINF], 3.0, 0.5, &mut w);
        assert_eq!(w[1], 1.0);
        assert!((w[0] - (-4.0f32).exp()).abs() < 1e-7);
        assert_eq!(w[2], 0.0);
    }
}
