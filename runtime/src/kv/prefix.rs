//! Prefix caching: full blocks are registered under their chained hash once their KV is
//! computed, and a new sequence whose prompt starts with the same tokens reuses them.
//!
//! Invariants:
//! - a block is *cached* iff the index maps its hash to it; each hash names one canonical block
//!   (a second block with the same content stays unregistered and is freed normally);
//! - a cached block never changes content: only full blocks are registered, and appends never
//!   write into a full block;
//! - a match is exact: besides the hash, a hit compares the block's stored tokens and its parent
//!   (block id and generation) with the previous hit, so a hash collision or a parent that was
//!   evicted and reused costs a miss, never wrong KV;
//! - only blocks whose KV the caller says is computed are registered (the caller passes their
//!   token ids), so a hit never points at KV that is still being written.

use super::allocator::BlockAllocator;
use super::hash::{chain_hash, BlockHash, ROOT_HASH};
use super::table::{BlockTable, CacheKey};
use super::types::{BlockId, TokenId};

/// What [`BlockAllocator::peek_prefix`] would reuse, without taking anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixPeek {
    /// Tokens covered by cached blocks (a multiple of the block size).
    pub tokens: usize,
    /// Of the matched blocks, those now unreferenced: reusing them removes them from the
    /// available pool.
    pub evictable_blocks: usize,
}

impl BlockAllocator {
    /// Whether `b` is a registered (cached) block.
    #[inline]
    pub(crate) fn is_cached(&self, b: BlockId) -> bool {
        self.prefix.as_ref().is_some_and(|p| p.hash.get(b.index()).copied().flatten().is_some())
    }

    /// Forgets `b`'s registration (it is being evicted to hold new content).
    pub(crate) fn uncache(&mut self, b: BlockId) {
        let Some(p) = self.prefix.as_mut() else {
            return;
        };
        let Some(slot) = p.hash.get_mut(b.index()) else {
            return;
        };
        if let Some(h) = slot.take() {
            if p.by_hash.get(&h) == Some(&b) {
                p.by_hash.remove(&h);
            }
            p.parent[b.index()] = None;
        }
    }

    /// The cached block for the block after `parent` with these tokens, verified exactly.
    fn lookup(&self, hash: BlockHash, parent: Option<CacheKey>, tokens: &[TokenId]) -> Option<BlockId> {
        let p = self.prefix.as_ref()?;
        let &b = p.by_hash.get(&hash)?;
        let i = b.index();
        let bs = self.block_size;
        let same = p.hash[i] == Some(hash) && p.parent[i] == parent && p.tokens[i * bs..(i + 1) * bs] == *tokens;
        same.then_some(b)
    }

    fn key(&self, b: BlockId) -> CacheKey {
        CacheKey { block: b, generation: self.generation[b.index()] }
    }

    /// Walks the cache along `tokens`' full blocks; calls `hit` for each hit block and returns
    /// the final chain state `(blocks matched, hash, parent)`.
    fn walk(&self, tokens: &[TokenId], mut hit: impl FnMut(BlockId)) -> (usize, BlockHash, Option<CacheKey>) {
        let mut h = ROOT_HASH;
        let mut parent = None;
        let mut n = 0;
        if self.prefix.is_none() {
            return (0, h, parent);
        }
        for chunk in tokens.chunks_exact(self.block_size) {
            let nh = chain_hash(h, chunk);
            let Some(b) = self.lookup(nh, parent, chunk) else {
                break;
            };
            hit(b);
            h = nh;
            parent = Some(self.key(b));
            n += 1;
        }
        (n, h, parent)
    }

    /// How much of `tokens` [`Self::match_prefix`] would reuse, without changing anything.
    pub fn peek_prefix(&self, tokens: &[TokenId]) -> PrefixPeek {
        let mut evictable = 0;
        let (n, _, _) = self.walk(tokens, |b| evictable += (self.refs[b.index()] == 0) as usize);
        PrefixPeek { tokens: n * self.block_size, evictable_blocks: evictable }
    }

    /// A new table holding the cached blocks that cover the longest run of `tokens`' *full*
    /// blocks (each reference count + 1), and the number of tokens they cover. Pass the prompt
    /// without its last token: the model must still run at least one token to produce logits.
    /// Counts the query and hit tokens in [`super::KvStats`]. With prefix caching off the table is
    /// empty and nothing is counted.
    pub fn match_prefix(&mut self, tokens: &[TokenId]) -> (BlockTable, usize) {
        let mut hits = Vec::new();
        let (n, chain_hash, chain_parent) = self.walk(tokens, |b| hits.push(b));
        for &b in &hits {
            self.acquire(b);
        }
        let covered = n * self.block_size;
        if self.prefix.is_some() {
            self.prefix_query_tokens += tokens.len() as u64;
            self.prefix_hit_tokens += covered as u64;
        }
        let mut table = BlockTable::new();
        table.blocks = hits;
        table.num_tokens = covered;
        table.num_hashed = n;
        table.chain_hash = chain_hash;
        table.chain_parent = chain_parent;
        (table, covered)
    }

    /// Registers `table`'s full blocks whose KV is computed, given the sequence's token ids from
    /// position 0 (`tokens` may be longer or shorter than the table: only full blocks inside both
    /// are registered). Blocks already known are skipped, so calling this every step costs only
    /// the newly filled blocks. No-op with prefix caching off.
    pub fn cache_full_blocks(&mut self, table: &mut BlockTable, tokens: &[TokenId]) {
        if self.prefix.is_none() || table.chain_broken {
            return;
        }
        let bs = self.block_size;
        let full = table.num_tokens.min(tokens.len()) / bs;
        while table.num_hashed < full {
            let i = table.num_hashed;
            let chunk = &tokens[i * bs..(i + 1) * bs];
            let h = chain_hash(table.chain_hash, chunk);
            let b = table.blocks[i];
            let Some(canonical) = self.register(b, h, table.chain_parent, chunk) else {
                table.chain_broken = true;
                return;
            };
            table.num_hashed = i + 1;
            table.chain_hash = h;
            table.chain_parent = Some(canonical);
        }
    }

    /// Makes `b` (content: `tokens` after `parent`) findable under `h`, or finds the block that
    /// already is. Returns the canonical block's key, or `None` when the content cannot be
    /// verified (a 64-bit collision): the caller stops registering that chain.
    fn register(&mut self, b: BlockId, h: BlockHash, parent: Option<CacheKey>, tokens: &[TokenId]) -> Option<CacheKey> {
        let bs = self.block_size;
        let i = b.index();
        let p = self.prefix.as_mut()?;
        if let Some(existing) = p.hash.get(i).copied().flatten() {
            // Shared through a fork or a hit: it is already registered with this content.
            return (existing == h).then(|| self.key(b));
        }
        if let Some(&other) = p.by_hash.get(&h) {
            return self.lookup(h, parent, tokens).map(|c| self.key(c)).filter(|k| k.block == other);
        }
        p.by_hash.insert(h, b);
        p.hash[i] = Some(h);
        p.parent[i] = parent;
        p.tokens[i * bs..(i + 1) * bs].copy_from_slice(tokens);
        Some(self.key(b))
    }
}
