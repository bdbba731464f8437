//! Errors of the sampling module. Invariant: nothing in `sample/` panics on bad input; every
//! rejected parameter, malformed logits vector or misuse of a finished sequence comes back as one
//! of these variants, naming what was wrong.

use super::finish::FinishReason;

/// Why sampling parameters were rejected, sampling failed, or a stop check was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A field of [`super::SamplingParams`] is out of its documented range.
    #[error("invalid sampling parameter `{field}`: {reason}")]
    InvalidParam {
        /// The field's name as spelled in `SamplingParams`.
        field: &'static str,
        /// What the value was and what is allowed.
        reason: String,
    },
    /// The logits slice has no entries.
    #[error("logits are empty: the vocabulary must have at least one token")]
    EmptyLogits,
    /// More logits than a `u32` token id can address.
    #[error("vocabulary of {vocab} logits exceeds the u32 token-id range")]
    VocabTooLarge {
        /// Length of the logits slice.
        vocab: usize,
    },
    /// A logit was NaN or `+inf` after penalties (`-inf` is allowed: it masks a token).
    #[error("logit of token {token} is {value} after penalties; logits must be finite or -inf")]
    NonFiniteLogit {
        /// The offending token id.
        token: u32,
        /// Its value after penalties.
        value: f32,
    },
    /// Every logit is `-inf`, so no token has positive probability.
    #[error("every logit is -inf; there is no token to sample")]
    AllMasked,
    /// A penalty needs a history token that the logits do not cover.
    #[error("history token {token} is outside the vocabulary of {vocab} logits")]
    TokenOutOfRange {
        /// The largest token id in the history.
        token: u32,
        /// Length of the logits slice.
        vocab: usize,
    },
    /// [`super::StopChecker::step`] or `finish` was called after the sequence finished.
    #[error("the sequence already finished ({0}); it takes no more tokens")]
    AlreadyFinished(FinishReason),
}

impl SamplingError {
    /// Shorthand for [`SamplingError::InvalidParam`].
    pub(crate) fn param(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParam { field, reason: reason.into() }
    }
}
