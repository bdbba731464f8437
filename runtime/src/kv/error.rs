//! Errors of the KV-cache bookkeeping. Invariant: nothing in `kv/` panics on bad input; a request
//! the pool cannot satisfy, an impossible configuration or a broken internal invariant comes back
//! as one of these variants with the numbers involved. A failed operation leaves the allocator and
//! the table it was given unchanged.

/// Why a KV-cache operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Not enough free or evictable blocks for the request.
    #[error("out of KV blocks: need {needed} more, only {available} free or evictable")]
    OutOfBlocks {
        /// Blocks the operation needed to take from the pool.
        needed: usize,
        /// Blocks that were free or evictable (cached but unreferenced).
        available: usize,
    },
    /// A configuration value is out of range (zero blocks, zero block size, too many blocks...).
    #[error("invalid KV-cache configuration: {0}")]
    InvalidConfig(String),
    /// `cache_full_blocks` was given fewer token ids than the table's full blocks it must hash.
    #[error("{given} token ids given, but the table holds {needed} computed tokens to hash")]
    TooFewTokens {
        /// Tokens passed.
        given: usize,
        /// Tokens the table holds.
        needed: usize,
    },
    /// The memory budget does not hold a single block.
    #[error("a KV memory budget of {budget} bytes holds no block of {block_bytes} bytes")]
    BudgetTooSmall {
        /// The budget in bytes.
        budget: u64,
        /// Bytes one block takes across all layers (K and V).
        block_bytes: u64,
    },
}

/// A broken bookkeeping invariant found by `check_invariants` (a bug in kiln, never bad input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV-cache invariant violated: {0}")]
pub struct InvariantViolation(pub String);
