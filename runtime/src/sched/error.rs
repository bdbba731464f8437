//! Errors of the scheduler. Invariant: the scheduler never panics on bad input; a request that
//! can never run, a full queue, an unknown or duplicate id and an inconsistent step result all
//! come back as typed errors carrying the numbers, and a refused call changes nothing.

use super::request::SeqId;

/// Why `Scheduler::add` refused a request. Every variant except [`Self::QueueFull`] is permanent
/// (HTTP 400); `QueueFull` is overload (HTTP 429), the client may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The prompt has no token.
    #[error("request {id}: the prompt is empty; at least one token is needed")]
    EmptyPrompt {
        /// The request.
        id: SeqId,
    },
    /// `max_tokens` is 0.
    #[error("request {id}: max_tokens is 0; at least one token must be generated")]
    ZeroMaxTokens {
        /// The request.
        id: SeqId,
    },
    /// Prompt plus `max_tokens` exceeds the model's context length.
    #[error(
        "request {id}: prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = {} tokens \
         exceeds the model's context length of {max_model_len} tokens",
        prompt_tokens + max_tokens
    )]
    ExceedsContext {
        /// The request.
        id: SeqId,
        /// Prompt length.
        prompt_tokens: usize,
        /// Requested completion length.
        max_tokens: usize,
        /// The model's context length.
        max_model_len: usize,
    },
    /// At full length the request needs more KV blocks than the whole pool holds.
    #[error(
        "request {id}: {tokens} tokens of KV need {needed_blocks} blocks of {block_size}, but the \
         whole KV cache has {total_blocks} blocks ({} tokens)",
        total_blocks * block_size
    )]
    ExceedsKvPool {
        /// The request.
        id: SeqId,
        /// Tokens whose KV must be stored at the longest (prompt + max_tokens - 1).
        tokens: usize,
        /// Blocks that takes.
        needed_blocks: usize,
        /// Blocks in the pool.
        total_blocks: usize,
        /// Tokens per block.
        block_size: usize,
    },
    /// The waiting queue is full: try again later (HTTP 429).
    #[error("server overloaded: {waiting} requests are waiting (limit {max_queue}); retry later")]
    QueueFull {
        /// Requests waiting now.
        waiting: usize,
        /// The limit.
        max_queue: usize,
    },
    /// A live sequence already has this id.
    #[error("request id {id} is already in use")]
    DuplicateId {
        /// The id.
        id: SeqId,
    },
}

impl AdmissionError {
    /// True for overload (retry later, HTTP 429); false for a request that can never run (400).
    pub fn is_overload(&self) -> bool {
        matches!(self, Self::QueueFull { .. })
    }
}

/// Why a scheduler call other than `add` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// A configuration limit is out of range.
    #[error("invalid scheduler configuration: {0}")]
    InvalidConfig(String),
    /// No live sequence has this id (it may have finished or been aborted already).
    #[error("no live sequence has id {0}")]
    UnknownSequence(SeqId),
    /// `fork` was given a child id that is already live.
    #[error("sequence id {0} is already in use")]
    DuplicateId(SeqId),
    /// A sampled token arrived for a sequence that is not waiting for one.
    #[error("sequence {0} got a sampled token but no logits were scheduled for it")]
    UnexpectedSample(SeqId),
    /// Two sampled tokens arrived for one sequence in one step.
    #[error("sequence {0} got two sampled tokens in one step")]
    DuplicateSample(SeqId),
}
