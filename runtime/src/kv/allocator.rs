//! The physical block pool: a free list, reference counts, and the bookkeeping of cached blocks
//! (their eviction order lives in [`super::lru`], their hash index in [`super::prefix`]).
//!
//! Every block is in exactly one of three states:
//! - **free**: `ref == 0`, not cached, on the free list;
//! - **evictable**: `ref == 0`, cached (holds a registered full block), in the LRU list;
//! - **referenced**: `ref >= 1`, held by `ref` block tables, on neither list.
//!
//! A new block comes from the free list first and only then by evicting the least recently
//! released cached block, so reusable prefixes live as long as the pool allows. A failed operation
//! changes nothing: every operation checks what it needs before it takes anything.

use std::collections::HashMap;

use super::error::KvError;
use super::hash::BlockHash;
use super::lru::Lru;
use super::table::{BlockTable, CacheKey};
use super::types::{BlockId, CopyBlock, SlotMapping, TokenId};

/// Largest pool: block ids are `u32` and `u32::MAX` is the LRU's "none" link.
const MAX_BLOCKS: usize = (u32::MAX - 1) as usize;

/// A point-in-time view of the pool, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvStats {
    /// Blocks in the pool.
    pub total_blocks: usize,
    /// Blocks held by at least one table.
    pub used_blocks: usize,
    /// Unreferenced blocks kept for prefix reuse (evictable on demand).
    pub cached_blocks: usize,
    /// Blocks on the free list.
    pub free_blocks: usize,
    /// Prompt tokens looked up by `match_prefix` since creation.
    pub prefix_query_tokens: u64,
    /// Of those, tokens whose KV was found in the cache.
    pub prefix_hit_tokens: u64,
}

/// Reference-counted pool of `num_blocks` KV blocks of `block_size` token slots each, with
/// copy-on-write and an optional prefix cache.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    pub(crate) block_size: usize,
    pub(crate) refs: Vec<u32>,
    /// Bumped every time a block is handed out anew, so stale [`CacheKey`]s never match.
    pub(crate) generation: Vec<u32>,
    /// Stack of free block indices (last freed is reused first: warm in caches, and any order
    /// would be correct).
    pub(crate) free: Vec<u32>,
    pub(crate) lru: Lru,
    pub(crate) used: usize,
    pub(crate) prefix: Option<PrefixIndex>,
    pub(crate) prefix_query_tokens: u64,
    pub(crate) prefix_hit_tokens: u64,
}

/// What the prefix cache knows about registered blocks.
#[derive(Debug, Clone)]
pub(crate) struct PrefixIndex {
    /// Chained hash -> the one canonical block holding that content.
    pub(crate) by_hash: HashMap<BlockHash, BlockId>,
    /// Per block: `Some(hash)` while it is registered.
    pub(crate) hash: Vec<Option<BlockHash>>,
    /// Per block: the canonical parent named at registration (`None` for a first block).
    pub(crate) parent: Vec<Option<CacheKey>>,
    /// Per block: its `block_size` token ids, compared on every match (flat, `block * bs`).
    pub(crate) tokens: Vec<TokenId>,
}

impl BlockAllocator {
    /// A pool of `num_blocks` free blocks of `block_size` slots; `prefix_caching` turns on the
    /// hash index (it costs `num_blocks * block_size` token ids of host memory).
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Result<Self, KvError> {
        if num_blocks == 0 || num_blocks > MAX_BLOCKS {
            return Err(KvError::InvalidConfig(format!(
                "num_blocks is {num_blocks}; it must be between 1 and {MAX_BLOCKS}"
            )));
        }
        if block_size == 0 || block_size > u32::MAX as usize {
            return Err(KvError::InvalidConfig(format!(
                "block_size is {block_size}; it must be between 1 and {}",
                u32::MAX
            )));
        }
        let slots = num_blocks.checked_mul(block_size).ok_or_else(|| {
            KvError::InvalidConfig(format!("{num_blocks} blocks of {block_size} slots overflow the address space"))
        })?;
        let prefix = prefix_caching.then(|| PrefixIndex {
            by_hash: HashMap::new(),
            hash: vec![None; num_blocks],
            parent: vec![None; num_blocks],
            tokens: vec![0; slots],
        });
        Ok(Self {
            block_size,
            refs: vec![0; num_blocks],
            generation: vec![0; num_blocks],
            // Reversed so that block 0 is handed out first (readable traces and tests).
            free: (0..num_blocks as u32).rev().collect(),
            lru: Lru::new(num_blocks),
            used: 0,
            prefix,
            prefix_query_tokens: 0,
            prefix_hit_tokens: 0,
        })
    }

    /// Token slots per block.
    #[inline]
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    #[inline]
    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that an allocation can take now: free plus evictable.
    #[inline]
    pub fn num_available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Blocks held by at least one table.
    #[inline]
    pub fn num_used(&self) -> usize {
        self.used
    }

    /// Whether the prefix cache is on.
    #[inline]
    pub fn prefix_caching(&self) -> bool {
        self.prefix.is_some()
    }

    /// Reference count of `block` (0 for an id outside the pool).
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.refs.get(block.index()).copied().unwrap_or(0)
    }

    /// Counters for metrics.
    pub fn stats(&self) -> KvStats {
        KvStats {
            total_blocks: self.num_blocks(),
            used_blocks: self.used,
            cached_blocks: self.lru.len(),
            free_blocks: self.free.len(),
            prefix_query_tokens: self.prefix_query_tokens,
            prefix_hit_tokens: self.prefix_hit_tokens,
        }
    }

    /// Blocks needed to hold `tokens` token slots.
    #[inline]
    pub fn blocks_for_tokens(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// True when appending to `table` must first copy its last block: the append starts inside
    /// that block and another table also holds it.
    fn needs_cow(&self, table: &BlockTable) -> bool {
        !table.num_tokens.is_multiple_of(self.block_size) && table.blocks.last().is_some_and(|&b| self.ref_count(b) > 1)
    }

    /// New blocks an append of `n` tokens to `table` takes from the pool (copy-on-write included).
    pub fn blocks_needed(&self, table: &BlockTable, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let end = table.num_tokens.saturating_add(n);
        self.blocks_for_tokens(end).saturating_sub(table.blocks.len()) + self.needs_cow(table) as usize
    }

    /// The most tokens that can be appended to `table` right now without evicting anything that
    /// is referenced (evictable cached blocks count as available).
    pub fn appendable_tokens(&self, table: &BlockTable) -> usize {
        let bs = self.block_size;
        let avail = self.num_available();
        let slack = (bs - table.num_tokens % bs) % bs;
        if self.needs_cow(table) {
            if avail == 0 {
                0
            } else {
                slack + (avail - 1) * bs
            }
        } else {
            slack + avail * bs
        }
    }

    /// Takes one block (free list first, then the least recently used cached block) with
    /// reference count 1. The caller has checked availability.
    fn take_block(&mut self) -> Option<BlockId> {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = self.lru.pop_front()?;
                self.uncache(BlockId(i));
                i
            }
        };
        let iu = i as usize;
        self.generation[iu] = self.generation[iu].wrapping_add(1);
        self.refs[iu] = 1;
        self.used += 1;
        Some(BlockId(i))
    }

    /// Adds a reference to a block that is referenced or evictable (a prefix hit or a fork).
    pub(crate) fn acquire(&mut self, b: BlockId) {
        // Ids outside the pool (a table from another allocator) are ignored rather than
        // indexed; check_invariants reports such a table.
        let Some(r) = self.refs.get_mut(b.index()) else {
            return;
        };
        if *r == 0 {
            self.lru.remove(b.0);
            self.used += 1;
        }
        *r += 1;
    }

    /// Drops one reference; an unreferenced block becomes evictable if cached, else free.
    fn release(&mut self, b: BlockId) {
        let Some(r) = self.refs.get_mut(b.index()) else {
            return;
        };
        match *r {
            // Unreachable for tables of this allocator (tables are not Clone, free empties them).
            0 => {}
            1 => {
                *r = 0;
                self.used -= 1;
                if self.is_cached(b) {
                    self.lru.push_back(b.0);
                } else {
                    self.free.push(b.0);
                }
            }
            _ => *r -= 1,
        }
    }

    /// Appends `n` token slots to `table`, taking blocks as needed, and writes their slot
    /// mappings to `out`. Returns the copy the engine must run first when the append starts in a
    /// shared block (copy-on-write). On `OutOfBlocks` nothing changes.
    pub fn append_slots(
        &mut self,
        table: &mut BlockTable,
        n: usize,
        out: &mut Vec<SlotMapping>,
    ) -> Result<Option<CopyBlock>, KvError> {
        let start = table.num_tokens;
        let copy = self.reserve_slots(table, n)?;
        let bs = self.block_size;
        out.extend(
            (start..start + n).map(|pos| SlotMapping { block: table.blocks[pos / bs], offset: (pos % bs) as u32 }),
        );
        Ok(copy)
    }

    /// [`Self::append_slots`] without writing slot mappings (read them later with
    /// [`BlockTable::slot`]).
    pub fn reserve_slots(&mut self, table: &mut BlockTable, n: usize) -> Result<Option<CopyBlock>, KvError> {
        if n == 0 {
            return Ok(None);
        }
        let needed = self.blocks_needed(table, n);
        let available = self.num_available();
        if needed > available {
            return Err(KvError::OutOfBlocks { needed, available });
        }
        let mut copy = None;
        if self.needs_cow(table) {
            if let (Some(dst), Some(last)) = (self.take_block(), table.blocks.last_mut()) {
                let src = *last;
                *last = dst;
                // src had refs > 1, so this only drops the count; the other holders keep it.
                self.release(src);
                copy = Some(CopyBlock { src, dst });
            }
        }
        let end = table.num_tokens + n;
        while table.blocks.len() < self.blocks_for_tokens(end) {
            match self.take_block() {
                Some(b) => table.blocks.push(b),
                None => break, // unreachable: availability was checked above
            }
        }
        table.num_tokens = end;
        Ok(copy)
    }

    /// A new table sharing every block of `table` (each reference count + 1). The first append
    /// to a shared, partially filled last block copies it (see [`Self::append_slots`]).
    pub fn fork(&mut self, table: &BlockTable) -> BlockTable {
        for &b in &table.blocks {
            self.acquire(b);
        }
        table.duplicate()
    }

    /// Gives back every block of `table` and empties it. Blocks are released last to first so
    /// that, among cached blocks, a prefix's tail is evicted before its head (the head is the
    /// part other requests are likelier to share).
    pub fn free(&mut self, table: &mut BlockTable) {
        while let Some(b) = table.blocks.pop() {
            self.release(b);
        }
        table.clear();
    }
}
