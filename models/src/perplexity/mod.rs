//! Perplexity over non-overlapping windows, computed as llama.cpp's `llama-perplexity` does it
//! (`kiln perplexity`), and the KL divergence of a model from a base model over the same
//! positions.
//!
//! The recipe, split by concern:
//! - [`windows`]: the text is tokenized once; window `i` is `tokens[i*ctx .. (i+1)*ctx]` for
//!   the whole windows only, its first token replaced by BOS when the model adds one.
//! - [`source`]: each window is evaluated from an empty KV cache, and the logits of the scored
//!   rows come back ([`LogitSource`]; [`ModelSource`] over any `CausalLm`).
//! - [`score`]: only the second half of a window is scored: for `j` in `[ctx/2, ctx-1)`, the
//!   negative log-likelihood of `window[j+1]` under `softmax(logits[j])`, in f64; the KL of the
//!   base's distribution to the model's at the same rows.
//! - [`eval`]: the loop over windows, the running values and the [`Report`].
//! - [`vocab`]: the check that a base model's tokenizer is the model's.
//!
//! Invariants: perplexity is `exp(mean NLL)` over every scored position of every window; its
//! standard error is llama.cpp's (`ppl * sqrt(var(NLL) / (count - 1))`); the model and the
//! base see exactly the same token windows, and their vocabularies must be equal.

pub mod eval;
pub mod score;
pub mod source;
pub mod vocab;
pub mod windows;

#[cfg(test)]
mod tests;

pub use eval::{evaluate, ChunkReport, KlReport, Report, SideReport};
pub use score::{kl_divergence, nll, Running};
pub use source::{LogitSource, ModelSource};
pub use vocab::same_vocabulary;
pub use windows::Windows;

use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error("--ctx {0}: the window must be an even number of tokens, at least 4 (half of it is context, the other half scored)")]
    BadCtx(usize),
    #[error("--ctx {ctx} is longer than the model's maximum context of {max} tokens")]
    CtxTooLong { ctx: usize, max: usize },
    #[error("the text is {tokens} tokens, shorter than one window of {ctx}")]
    TooShort { tokens: usize, ctx: usize },
    #[error("--max-chunks 0: at least one window must be evaluated")]
    NoChunks,
    #[error("the base model's vocabulary differs from the model's: {0}")]
    VocabMismatch(String),
    #[error("token id {token} is outside the model's vocabulary of {vocab}")]
    TokenOutOfVocab { token: u32, vocab: usize },
    #[error("the logit source returned {got} values for {rows} rows of {vocab}")]
    BadLogits { got: usize, rows: usize, vocab: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tensor(#[from] kiln_runtime::TensorError),
}
