//! Small value types shared by the KV-cache bookkeeping: physical block ids, token ids, slot
//! mappings and copy-on-write instructions. Invariant: a [`BlockId`] is always `< num_blocks` of
//! the allocator that produced it; a [`SlotMapping`]'s offset is always `< block_size`.

use std::fmt;

/// A token id, as the tokenizer and the sampler produce it.
pub type TokenId = u32;

/// The index of one physical block in the per-layer K and V pools (the same index in every
/// layer, so one id names a block of `block_size` token slots across the whole model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

impl BlockId {
    /// The id as an index into per-block arrays.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {}", self.0)
    }
}

/// Where one token's K and V go: slot `offset` of physical block `block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotMapping {
    /// The physical block.
    pub block: BlockId,
    /// The slot inside the block, `< block_size`.
    pub offset: u32,
}

impl SlotMapping {
    /// The flat slot index `block * block_size + offset`, the form cache-write kernels take.
    #[inline]
    pub fn flat(self, block_size: usize) -> usize {
        self.block.index() * block_size + self.offset as usize
    }
}

/// A device-side copy the engine must perform (every layer, K and V) before it writes the step's
/// new tokens: the whole block `src` is copied to `dst`. Produced by copy-on-write when a
/// sequence appends into a partially filled block that another sequence also holds.
///
/// Copies of one step must be executed in the order given: a block freed later in the same
/// scheduling pass may be handed out again as the `dst` of a later copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CopyBlock {
    /// The shared block to read.
    pub src: BlockId,
    /// The freshly allocated block to write; it replaces `src` in the appending sequence's table.
    pub dst: BlockId,
}
