//! Token sampling and stop handling for one sequence at a time.
//!
//! This module is the *specification* of kiln's sampling semantics. The device sampler
//! ([`device`]: a CUDA kernel and its CPU twin) picks the same token for the same `(logits,
//! history, params, seed, step)` — exactly, not just in distribution (see "Numerics" below) —
//! and its tests compare against [`Sampler`].
//!
//! # Pipeline (one call to [`Sampler::sample`])
//!
//! Let `l` be the model's logits (length `V`, the vocabulary) for the next token.
//!
//! 1. **Penalties** ([`penalty`]), on a copy of `l`, in this order and in `f32`:
//!    - repetition (Hugging Face semantics), for every *distinct* token seen in the prompt or
//!      the output: `l = if l > 0 { l / r } else { l * r }`;
//!    - frequency and presence (OpenAI semantics), for every token that occurs `c >= 1` times in
//!      the *output only*: `l = l - c as f32 * frequency - presence`.
//!
//!    After this step every logit must be finite or `-inf` (`-inf` masks a token), else
//!    [`SamplingError::NonFiniteLogit`]; at least one must be finite, else
//!    [`SamplingError::AllMasked`].
//! 2. **Log-probabilities** are those of the *penalised* logits before temperature and before
//!    any truncation: `logprob_i = (l_i - m) - ln(Z)`, `m = max l`, `Z = sum_j e(l_j - m)`
//!    with `e` = [`math::exp_nonpos`] and the sum taken exactly over quantized terms (see 4).
//!    This is the OpenAI-style choice: what the model, after penalties, thinks of each token;
//!    they do not change with `temperature`, `top_k`, `top_p` or `min_p`.
//! 3. **Greedy** (`temperature == 0`): the token is the argmax of the penalised logits, the
//!    lowest id among equal maxima. Steps 4–7 are skipped (but a draw is still counted, see
//!    "Randomness").
//! 4. **Temperature**: weights `w_i = e((l_i - m) / T)` in f32, with `e` = [`math::exp_nonpos`]
//!    (a fixed polynomial, so every implementation gets the same bits). The most likely token
//!    has `w = 1` exactly. Probability *mass* is measured in integers: `q_i =
//!    floor(w_i * 2^40)` ([`math::quantize`]), so sums are exact in any order.
//! 5. **Candidate order**: tokens are ranked by penalised logit, descending, ties by *lower id
//!    first* (`-0.0` and `0.0` tie); [`math::rank_key`] encodes this as one integer. Every
//!    truncation below keeps a *prefix* of this order, so the kept set is always "the first `n`
//!    tokens" for some `n >= 1`, described by the last kept token.
//! 6. **Truncation**, applied in order, each on the survivors of the previous one:
//!    - top-k (`top_k = Some(k)`, `0 < k < V`): keep the first `k` tokens — exactly `k`, ties at
//!      the boundary broken by lower id (so `top_k = 1` is greedy);
//!    - top-p (`top_p < 1`): over the top-k survivors, renormalised, keep the *shortest* prefix
//!      whose cumulative probability reaches `top_p`: the smallest `n` with
//!      `(q_1 + .. + q_n) as f64 >= top_p as f64 * Q as f64`, `Q` the survivors' total (a prefix
//!      that reaches `top_p` exactly stops there);
//!    - min-p (`min_p > 0`): keep tokens with `p_i >= min_p * p_max`. Because the most likely
//!      token always survives, the ratio `p_i / p_max` does not depend on renormalisation, so
//!      this is `w_i >= min_p` (f32 comparison).
//! 7. **Draw**: with `Q` the kept set's total quantized weight, `r = rng::below(seed, n, Q)`
//!    (`0 <= r < Q`); walk the kept tokens in *ascending id order* summing `q`; the token is the
//!    first whose running sum exceeds `r`. Walking in id order, not rank order, lets a GPU do
//!    this as one masked prefix sum with no sort. Tokens with `q = 0` (masked, or below `2^-40`
//!    of the top token) are never drawn.
//!
//! # Randomness
//!
//! Each [`Sampler`] belongs to one sequence and owns its generator: draw number `n` (the
//! `n`-th successful call to `sample`, from 0, greedy calls included) uses [`rng::below`]`(seed,
//! n, ·)`, a counter-based SplitMix64. The result depends only on `(seed, n)`, never on which
//! other sequences share the batch or in which order they are sampled. `seed: None` takes a seed
//! from the OS once, at construction; [`Sampler::seed`] reports it so a run can be replayed.
//!
//! # Numerics
//!
//! Given the same penalised logits, steps 3–7 are exact: the weights come from a fixed sequence
//! of f32 operations, and every decision after that is an integer sum or a single, fully
//! specified f64 comparison. A port that reproduces [`math`] bit-for-bit therefore picks the same
//! token; log-probabilities match up to the port's `ln`.
//!
//! # Stopping
//!
//! [`StopChecker`] (in [`stop`]) turns per-token text deltas into text that is safe to emit and
//! decides when a sequence finishes ([`FinishReason`]); its module header states its rules.

pub mod constraint;
pub mod deferred;
pub mod device;
mod draw;
pub mod error;
pub mod finish;
pub mod history;
pub mod math;
pub mod params;
pub mod penalty;
pub mod rng;
pub mod sampler;
mod softmax;
pub mod stop;
mod truncate;

pub use constraint::{ConstraintError, ConstraintSource, TokenConstraint};
pub use error::SamplingError;
pub use finish::FinishReason;
pub use history::TokenHistory;
pub use params::SamplingParams;
pub use sampler::{Sampled, Sampler};
pub use stop::{StopChecker, StopMatch, StopOutput};
