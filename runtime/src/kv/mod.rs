//! The paged KV cache's bookkeeping, pure data on the host (the K/V tensors themselves live on
//! the device and are indexed by what this module hands out).
//!
//! - [`BlockAllocator`]: a pool of `num_blocks` blocks of `block_size` token slots (default
//!   [`DEFAULT_BLOCK_SIZE`]) with a free list, reference counts, copy-on-write and an optional
//!   prefix cache with LRU eviction.
//! - [`BlockTable`]: one sequence's logical -> physical block map; owned by the sequence, given
//!   back with [`BlockAllocator::free`].
//! - [`KvLayout`]: pool size from a memory budget.
//!
//! Invariants (verified by [`BlockAllocator::check_invariants`] in tests after every operation):
//! reference counts equal the number of tables holding each block; free, evictable (cached and
//! unreferenced) and referenced blocks partition the pool; a table never holds a block it has
//! not started to fill; cached blocks are full and immutable; a prefix hit is verified token by
//! token, never by hash alone; a failed operation changes nothing.
//!
//! Protocol for the engine: run a step's [`CopyBlock`]s, in order, before writing its new K/V.

mod allocator;
mod error;
mod hash;
mod invariants;
mod lru;
mod prefix;
mod sizing;
mod table;
mod types;

pub use allocator::{BlockAllocator, KvStats};
pub use error::{InvariantViolation, KvError};
pub use hash::{chain_hash, BlockHash, ROOT_HASH};
pub use prefix::PrefixPeek;
pub use sizing::KvLayout;
pub use table::BlockTable;
pub use types::{BlockId, CopyBlock, SlotMapping, TokenId};

/// Token slots per block unless configured otherwise.
pub const DEFAULT_BLOCK_SIZE: usize = 16;
