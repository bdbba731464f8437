//! The allocator's self-check, run by tests after every operation. It takes every live block
//! table, because reference counts are only meaningful against the tables that hold them.
//!
//! Checked:
//! 1. every table: ids inside the pool, no block twice, `blocks == ceil(tokens / block_size)`,
//!    `num_hashed <= tokens / block_size`;
//! 2. each block's reference count equals the number of tables holding it;
//! 3. free list, evictable (cached, unreferenced) LRU and referenced blocks partition the pool:
//!    no block twice on the free list, none on both lists, none referenced on either;
//! 4. free blocks are not cached, LRU blocks are; the hash index and the per-block hashes agree;
//! 5. the used counter equals the number of referenced blocks.

use super::allocator::BlockAllocator;
use super::error::InvariantViolation;
use super::table::BlockTable;

impl BlockAllocator {
    /// Verifies the pool against all live `tables`; the first violation found is returned.
    pub fn check_invariants<'a>(
        &self,
        tables: impl IntoIterator<Item = &'a BlockTable>,
    ) -> Result<(), InvariantViolation> {
        let n = self.num_blocks();
        let bs = self.block_size;
        let fail = |m: String| Err(InvariantViolation(m));
        let mut holders = vec![0u32; n];
        // Per block: the index of the last table seen holding it, to catch a block twice in one.
        let mut seen_in = vec![usize::MAX; n];
        for (t, table) in tables.into_iter().enumerate() {
            if table.blocks.len() != table.num_tokens.div_ceil(bs) {
                return fail(format!(
                    "table {t} holds {} blocks for {} tokens (block size {bs})",
                    table.blocks.len(),
                    table.num_tokens
                ));
            }
            if table.num_hashed > table.num_tokens / bs {
                return fail(format!(
                    "table {t} has {} hashed blocks, only {} full",
                    table.num_hashed,
                    table.num_tokens / bs
                ));
            }
            for &b in &table.blocks {
                let i = b.index();
                if i >= n {
                    return fail(format!("table {t} names {b}, outside the pool of {n}"));
                }
                if seen_in[i] == t {
                    return fail(format!("table {t} holds {b} twice"));
                }
                seen_in[i] = t;
                holders[i] += 1;
            }
        }
        let mut on_free = vec![false; n];
        for &i in &self.free {
            let iu = i as usize;
            if iu >= n || on_free[iu] {
                return fail(format!("block {i} is on the free list twice or is out of range"));
            }
            on_free[iu] = true;
        }
        let lru = self.lru.walk().map_err(InvariantViolation)?;
        let mut used = 0;
        for i in 0..n {
            let b = super::BlockId(i as u32);
            let (r, free, evictable, cached) =
                (self.refs[i], on_free[i], self.lru.contains(i as u32), self.is_cached(b));
            if r != holders[i] {
                return fail(format!("{b} has reference count {r} but {} tables hold it", holders[i]));
            }
            let state_ok = match (r, free, evictable) {
                (0, true, false) => !cached,
                (0, false, true) => cached,
                (r, false, false) => r > 0,
                _ => false,
            };
            if !state_ok {
                return fail(format!("{b}: refs {r}, on free list {free}, evictable {evictable}, cached {cached}"));
            }
            used += (r > 0) as usize;
        }
        if used != self.used {
            return fail(format!("{used} blocks referenced but the counter says {}", self.used));
        }
        if self.free.len() + lru.len() + used != n {
            return fail(format!("free {} + evictable {} + used {used} != total {n}", self.free.len(), lru.len()));
        }
        if let Some(p) = &self.prefix {
            for (&h, &b) in &p.by_hash {
                if p.hash.get(b.index()).copied().flatten() != Some(h) {
                    return fail(format!("hash index names {b}, which is not registered under that hash"));
                }
            }
            let registered = p.hash.iter().filter(|h| h.is_some()).count();
            if registered != p.by_hash.len() {
                return fail(format!("{registered} blocks registered, hash index holds {}", p.by_hash.len()));
            }
        } else if !lru.is_empty() {
            return fail("evictable blocks exist with prefix caching off".into());
        }
        Ok(())
    }
}
