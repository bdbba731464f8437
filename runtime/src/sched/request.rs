//! What a client asks the scheduler for, and the id that names it from admission to its end.

use std::fmt;

use crate::kv::TokenId;

/// Names one sequence (a request, or a fork of one) while it is live. Ids are chosen by the
/// engine and may be reused after the sequence has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A generation request as the scheduler sees it: tokens in, a limit on tokens out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The sequence's id.
    pub id: SeqId,
    /// The tokenized prompt (at least one token).
    pub prompt_ids: Vec<TokenId>,
    /// Most tokens to generate (at least 1); reaching it finishes the sequence with `Length`.
    pub max_tokens: usize,
}
