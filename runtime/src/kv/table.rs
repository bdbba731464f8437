//! A sequence's block table: its logical blocks in order, each naming a physical block, and how
//! many token slots are filled.
//!
//! Invariants (checked by `BlockAllocator::check_invariants`):
//! - `blocks.len() == ceil(num_tokens / block_size)`: a table never holds a block it has not
//!   started to fill, so no slot is reserved ahead of need;
//! - no physical block appears twice in one table;
//! - the first `num_hashed` blocks are full and their prefix-cache chain is known
//!   (`num_hashed <= num_tokens / block_size`).
//!
//! A table is owned by its sequence, not by the allocator: dropping one without giving it back
//! through `BlockAllocator::free` leaks its blocks, which `check_invariants` reports.

use super::hash::{BlockHash, ROOT_HASH};
use super::types::{BlockId, SlotMapping};

/// Names one cached block and the generation it had when its content was registered; a block
/// reused for other content gets a new generation, so a stale name never matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub(crate) block: BlockId,
    pub(crate) generation: u32,
}

/// Logical-to-physical block map of one sequence.
// Not `Clone`: a copy would be a second owner of the same references (a double free waiting to
// happen). Sharing goes through `BlockAllocator::fork`, which counts the new references.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a block table holds references to KV blocks; give it back with BlockAllocator::free"]
pub struct BlockTable {
    pub(crate) blocks: Vec<BlockId>,
    pub(crate) num_tokens: usize,
    /// Leading full blocks whose chained hash is known (registered or found in the cache).
    pub(crate) num_hashed: usize,
    /// Hash of block `num_hashed - 1` (or the root hash).
    pub(crate) chain_hash: BlockHash,
    /// The cached block whose content equals block `num_hashed - 1`: the parent that the next
    /// registered block names. `None` at the root.
    pub(crate) chain_parent: Option<CacheKey>,
    /// Set when a hash collision made the chain unverifiable: no further block of this table is
    /// registered (correctness over reuse).
    pub(crate) chain_broken: bool,
}

impl Default for BlockTable {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockTable {
    /// An empty table (no blocks, no tokens).
    pub fn new() -> Self {
        Self {
            blocks: Vec::new(),
            num_tokens: 0,
            num_hashed: 0,
            chain_hash: ROOT_HASH,
            chain_parent: None,
            chain_broken: false,
        }
    }

    /// The physical blocks, in logical order.
    #[inline]
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Token slots filled (the sequence's tokens whose KV is, or is being, written).
    #[inline]
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// True when the table holds no block.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The slot of token position `pos`, if the table covers it.
    pub fn slot(&self, pos: usize, block_size: usize) -> Option<SlotMapping> {
        if pos >= self.num_tokens || block_size == 0 {
            return None;
        }
        let block = *self.blocks.get(pos / block_size)?;
        Some(SlotMapping { block, offset: (pos % block_size) as u32 })
    }

    /// A field-by-field copy; only `fork` may call it, after counting the new references.
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            blocks: self.blocks.clone(),
            num_tokens: self.num_tokens,
            num_hashed: self.num_hashed,
            chain_hash: self.chain_hash,
            chain_parent: self.chain_parent,
            chain_broken: self.chain_broken,
        }
    }

    /// Resets to the empty state (blocks must already have been released).
    pub(crate) fn clear(&mut self) {
        self.blocks.clear();
        self.num_tokens = 0;
        self.num_hashed = 0;
        self.chain_hash = ROOT_HASH;
        self.chain_parent = None;
        self.chain_broken = false;
    }
}
