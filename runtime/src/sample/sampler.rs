//! [`Sampler`]: the per-sequence sampler that runs the pipeline documented in [`super`].
//!
//! Invariants:
//! - A `Sampler` only exists with validated parameters ([`Sampler::new`] validates).
//! - Draw `n` (the `n`-th successful [`Sampler::sample`] call, greedy included) uses
//!   [`super::rng::below`]`(seed, n, ·)` and nothing else random, so output depends only on the
//!   sequence's own inputs. A failed call consumes no draw.
//! - Once its buffers have grown to the vocabulary size, `sample` allocates nothing except the
//!   returned `top_logprobs` vector (and only when log-probabilities were requested): the
//!   penalised logits, weights and truncation scratch are reused across calls.

use super::device::SampleJob;
use super::draw::draw;
use super::error::SamplingError;
use super::history::TokenHistory;
use super::params::SamplingParams;
use super::penalty::apply_penalties;
use super::softmax::{log_mass, log_normalizer, logprob, scan, tempered_weights};
use super::truncate::{select, top_n, Scratch, Truncation};

/// One sampled token with its log-probabilities (of the penalised, untempered distribution).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The chosen token id.
    pub token: u32,
    /// `ln p(token)` under the log-softmax of the penalised logits.
    pub logprob: f32,
    /// The `logprobs` best tokens by rank (logit descending, lower id first on ties), each with
    /// its log-probability; empty when `logprobs` is `None` or `Some(0)`.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Samples tokens for one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    draws: u64,
    logits: Vec<f32>,
    weights: Vec<f32>,
    scratch: Scratch,
    top: Vec<u64>,
}

impl Sampler {
    /// Validates `params` and builds a sampler; `params.seed == None` takes a seed from the OS.
    pub fn new(params: &SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(Self {
            params: params.clone(),
            seed: params.seed.unwrap_or_else(rand::random),
            draws: 0,
            logits: Vec::new(),
            weights: Vec::new(),
            scratch: Scratch::default(),
            top: Vec::new(),
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The seed in use (the OS-drawn one when none was given), for replaying a run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether the token this sampler picks is the row's argmax with nothing else asked: greedy,
    /// no penalties, no logprobs. Such a row can be sampled where the logits are (the GPU).
    pub fn is_plain_greedy(&self) -> bool {
        self.params.is_greedy() && super::penalty::penalties_off(&self.params) && self.params.logprobs.is_none()
    }

    /// The job that makes the device sampler ([`super::device`]) pick, from row `row` of a
    /// `vocab`-wide logits tensor, exactly the token [`Sampler::sample`] would pick given
    /// `history`. Refuses what `sample` refuses before it looks at the logits. The sampler
    /// itself is unchanged: call [`Sampler::accept_external`] once the token is taken.
    pub fn device_job(&self, history: &TokenHistory, vocab: usize, row: usize) -> Result<SampleJob, SamplingError> {
        if vocab == 0 {
            return Err(SamplingError::EmptyLogits);
        }
        if vocab > super::math::MAX_VOCAB {
            return Err(SamplingError::VocabTooLarge { vocab });
        }
        let p = &self.params;
        let penalties = if super::penalty::penalties_off(p) {
            Vec::new()
        } else {
            if let Some(max) = history.max_token().filter(|&t| t as usize >= vocab) {
                return Err(SamplingError::TokenOutOfRange { token: max, vocab });
            }
            // Without a repetition penalty, prompt-only tokens are left as they are.
            history
                .distinct()
                .filter(|(_, c)| p.repetition_penalty != 1.0 || c.output > 0)
                .map(|(t, c)| (t, c.output))
                .collect()
        };
        let top_k = p.top_k_or_zero();
        Ok(SampleJob {
            row,
            temperature: p.temperature,
            top_k: if top_k < vocab { top_k as u32 } else { 0 },
            top_p: p.top_p,
            min_p: p.min_p,
            repetition: p.repetition_penalty,
            presence: p.presence_penalty,
            frequency: p.frequency_penalty,
            seed: self.seed,
            draw: self.draws,
            logprobs: p.logprobs.map(|n| n.min(super::params::MAX_LOGPROBS) as u32),
            penalties,
            mask: None,
        })
    }

    /// Record a token chosen elsewhere by this sampler's rule (see [`Sampler::is_plain_greedy`]
    /// and [`Sampler::device_job`]).
    pub fn accept_external(&mut self) {
        self.draws += 1;
    }

    /// Number of successful `sample` calls so far: the counter of the next draw.
    pub fn draws(&self) -> u64 {
        self.draws
    }

    /// Chooses the next token from `logits` (one per vocabulary entry) given the sequence's
    /// `history`. Errors leave the sampler unchanged.
    pub fn sample(&mut self, logits: &[f32], history: &TokenHistory) -> Result<Sampled, SamplingError> {
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        apply_penalties(&mut self.logits, history, &self.params)?;
        let top = scan(&self.logits)?;
        let l = &self.logits;
        let t = self.params.temperature;

        let (token, log_norm) = if self.params.is_greedy() {
            (top.argmax, log_normalizer(l, top.max))
        } else {
            tempered_weights(l, top.max, t, &mut self.weights);
            // At T = 1 the weights are exactly the log-softmax's exponentials: reuse their sum.
            let log_norm = if t == 1.0 { log_mass(&self.weights) } else { log_normalizer(l, top.max) };
            let trunc =
                Truncation { top_k: self.params.top_k_or_zero(), top_p: self.params.top_p, min_p: self.params.min_p };
            let sel = select(l, &self.weights, top.max, t, trunc, &mut self.scratch);
            (draw(l, &self.weights, sel, self.seed, self.draws, top.argmax), log_norm)
        };

        let top_logprobs = match self.params.logprobs {
            Some(n) if n > 0 => {
                top_n(l, n, &mut self.top).map(|i| (i, logprob(l[i as usize], top.max, log_norm))).collect()
            }
            _ => Vec::new(),
        };
        self.draws += 1;
        Ok(Sampled { token, logprob: logprob(l[token as usize], top.max, log_norm), top_logprobs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(&p).unwrap()
    }

    fn seeded(seed: u64) -> SamplingParams {
        SamplingParams { seed: Some(seed), ..SamplingParams::default() }
    }

    #[test]
    fn new_rejects_invalid_params() {
        let p = SamplingParams { min_p: 2.0, ..SamplingParams::default() };
        assert!(matches!(Sampler::new(&p), Err(SamplingError::InvalidParam { field: "min_p", .. })));
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut s = sampler(SamplingParams::greedy());
        let h = TokenHistory::new(&[]);
        assert_eq!(s.sample(&[0.1, 5.0, -3.0, 5.0], &h).unwrap().token, 1);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, -1.0, -0.5], &h).unwrap().token, 2);
        assert_eq!(s.draws(), 2);
    }

    #[test]
    fn greedy_sees_penalised_logits() {
        let mut s = sampler(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() });
        // Token 0 (logit 4) was in the prompt: 4 / 2 = 2 < 3.
        let h = TokenHistory::new(&[0]);
        assert_eq!(s.sample(&[4.0, 3.0], &h).unwrap().token, 1);
    }

    #[test]
    fn logprobs_are_of_penalised_untempered_distribution() {
        let logits = [1.0f32, 2.0, 0.5, -1.0];
        let h = TokenHistory::new(&[]);
        let ln_z = logits.iter().map(|&l| f64::from(l).exp()).sum::<f64>().ln();
        for temperature in [0.0, 0.3, 1.0, 7.0] {
            let mut s = sampler(SamplingParams {
                temperature,
                top_k: Some(2),
                logprobs: Some(3),
                seed: Some(9),
                ..SamplingParams::default()
            });
            let out = s.sample(&logits, &h).unwrap();
            let want = |i: u32| (f64::from(logits[i as usize]) - ln_z) as f32;
            assert!((out.logprob - want(out.token)).abs() < 1e-6);
            let ids: Vec<u32> = out.top_logprobs.iter().map(|&(i, _)| i).collect();
            assert_eq!(ids, vec![1, 0, 2]);
            for &(i, lp) in &out.top_logprobs {
                assert!((lp - want(i)).abs() < 1e-6, "T {temperature} token {i}");
            }
        }
    }

    #[test]
    fn no_top_logprobs_unless_asked() {
        let h = TokenHistory::new(&[]);
        for logprobs in [None, Some(0)] {
            let mut s = sampler(SamplingParams { logprobs, ..seeded(1) });
            assert!(s.sample(&[0.0, 1.0], &h).unwrap().top_logprobs.is_empty());
        }
        let mut s = sampler(SamplingParams { logprobs: Some(20), ..seeded(1) });
        assert_eq!(s.sample(&[0.0, 1.0], &h).unwrap().top_logprobs.len(), 2);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) * 0.01).collect();
        let h = TokenHistory::new(&[]);
        let run = |seed: u64| {
            let mut s = sampler(seeded(seed));
            (0..64).map(|_| s.sample(&logits, &h).unwrap().token).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn seed_is_reported_and_drawn_when_absent() {
        assert_eq!(sampler(seeded(77)).seed(), 77);
        let a = sampler(SamplingParams::default()).seed();
        let b = sampler(SamplingParams::default()).seed();
        assert_ne!(a, b, "two OS-drawn seeds should differ");
    }

    #[test]
    fn errors_consume_no_draw_and_name_the_problem() {
        let mut s = sampler(seeded(3));
        let h = TokenHistory::new(&[]);
        assert_eq!(s.sample(&[], &h), Err(SamplingError::EmptyLogits));
        // NaN != NaN, so match rather than compare.
        assert!(matches!(
            s.sample(&[0.0, f32::NAN], &h),
            Err(SamplingError::NonFiniteLogit { token: 1, value }) if value.is_nan()
        ));
        let mut big = sampler(SamplingParams { repetition_penalty: 0.5, ..seeded(3) });
        // A finite logit that the penalty pushes to +inf is reported after penalties.
        assert_eq!(
            big.sample(&[f32::MAX, 0.0], &TokenHistory::new(&[0])),
            Err(SamplingError::NonFiniteLogit { token: 0, value: f32::INFINITY })
        );
        assert_eq!(
            s.sample(&[0.0, 1.0], &TokenHistory::new(&[5])).map(|_| ()),
            Ok(()),
            "penalties off: out-of-range history is not read"
        );
        let mut pen = sampler(SamplingParams { frequency_penalty: 0.5, ..seeded(3) });
        assert_eq!(
            pen.sample(&[0.0, 1.0], &TokenHistory::new(&[5])),
            Err(SamplingError::TokenOutOfRange { token: 5, vocab: 2 })
        );
        assert_eq!(pen.draws(), 0);
        assert_eq!(s.sample(&[f32::NEG_INFINITY; 3], &h), Err(SamplingError::AllMasked));
        assert_eq!(s.draws(), 1, "only the one successful call counted");
    }

    #[test]
    fn tiny_temperature_behaves_like_greedy() {
        let h = TokenHistory::new(&[]);
        let mut s = sampler(SamplingParams { temperature: 1e-6, ..seeded(11) });
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.999, -2.0], &h).unwrap().token, 1);
        }
    }

    #[test]
    fn masked_tokens_are_never_sampled() {
        let h = TokenHistory::new(&[]);
        let mut s = sampler(SamplingParams { temperature: 100.0, ..seeded(2) });
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        for _ in 0..500 {
            let t = s.sample(&logits, &h).unwrap().token;
            assert!(t == 1 || t == 3);
        }
    }
}
