//! Unit tests of the block allocator's documented behaviours: copy-on-write, prefix hits and
//! their counters, eviction order, stale parents, capacity queries and configuration errors.

use kiln_runtime::kv::{BlockAllocator, BlockId, BlockTable, CopyBlock, KvError, TokenId};

fn seq(alloc: &mut BlockAllocator, tokens: &[TokenId]) -> BlockTable {
    let (mut t, hit) = alloc.match_prefix(&tokens[..tokens.len() - 1]);
    alloc.reserve_slots(&mut t, tokens.len() - hit).unwrap();
    alloc.cache_full_blocks(&mut t, tokens);
    t
}

#[test]
fn fork_then_append_copies_the_shared_partial_block_once() {
    let mut a = BlockAllocator::new(8, 4, false).unwrap();
    let mut p = BlockTable::new();
    let mut slots = Vec::new();
    assert_eq!(a.append_slots(&mut p, 6, &mut slots).unwrap(), None);
    assert_eq!(p.blocks(), &[BlockId(0), BlockId(1)]);
    let mut c = a.fork(&p);
    assert_eq!((a.ref_count(BlockId(0)), a.ref_count(BlockId(1))), (2, 2));
    assert_eq!(a.blocks_needed(&c, 1), 1, "copy-on-write takes a block");
    slots.clear();
    let copy = a.append_slots(&mut c, 1, &mut slots).unwrap();
    assert_eq!(copy, Some(CopyBlock { src: BlockId(1), dst: BlockId(2) }));
    assert_eq!(slots[0].block, BlockId(2));
    assert_eq!(slots[0].offset, 2);
    assert_eq!(c.blocks(), &[BlockId(0), BlockId(2)]);
    // The parent now holds block 1 alone and writes in place.
    assert_eq!(a.append_slots(&mut p, 2, &mut slots).unwrap(), None);
    assert_eq!(p.blocks(), &[BlockId(0), BlockId(1)]);
    a.check_invariants([&p, &c]).unwrap();
    a.free(&mut p);
    a.free(&mut c);
    assert_eq!(a.stats().free_blocks, 8);
}

#[test]
fn fork_of_full_blocks_needs_no_copy() {
    let mut a = BlockAllocator::new(4, 4, false).unwrap();
    let mut p = BlockTable::new();
    a.reserve_slots(&mut p, 4).unwrap();
    let mut c = a.fork(&p);
    assert_eq!(a.reserve_slots(&mut c, 1).unwrap(), None);
    assert_eq!(c.blocks(), &[BlockId(0), BlockId(1)]);
    a.check_invariants([&p, &c]).unwrap();
    a.free(&mut p);
    a.free(&mut c);
}

#[test]
fn prefix_hits_are_counted_and_shared() {
    let mut a = BlockAllocator::new(16, 4, true).unwrap();
    let prompt: Vec<TokenId> = (0..10).collect();
    let mut first = seq(&mut a, &prompt);
    assert_eq!(a.stats().prefix_hit_tokens, 0);
    // Same prompt: 2 full blocks of the 9 matchable tokens are reused.
    let peek = a.peek_prefix(&prompt[..9]);
    assert_eq!((peek.tokens, peek.evictable_blocks), (8, 0));
    let mut second = seq(&mut a, &prompt);
    assert_eq!(a.stats().prefix_hit_tokens, 8);
    assert_eq!(a.stats().prefix_query_tokens, 18);
    assert_eq!(&second.blocks()[..2], &first.blocks()[..2]);
    assert_ne!(second.blocks()[2], first.blocks()[2]);
    assert_eq!(a.ref_count(first.blocks()[0]), 2);
    a.check_invariants([&first, &second]).unwrap();
    // After both finish the full blocks stay cached (evictable), the partial ones are free.
    a.free(&mut first);
    a.free(&mut second);
    let st = a.stats();
    assert_eq!((st.used_blocks, st.cached_blocks, st.free_blocks), (0, 2, 14));
    let peek = a.peek_prefix(&prompt[..9]);
    assert_eq!((peek.tokens, peek.evictable_blocks), (8, 2));
    // A prompt that is an exact multiple of the block size still leaves its last token to run.
    let mut third = seq(&mut a, &prompt[..8]);
    assert_eq!(a.stats().prefix_hit_tokens, 12);
    a.free(&mut third);
    a.check_invariants([]).unwrap();
}

#[test]
fn a_different_prefix_does_not_match_later_blocks() {
    let mut a = BlockAllocator::new(16, 2, true).unwrap();
    let mut x = seq(&mut a, &[1, 2, 3, 4, 5]);
    // Same second block, different first block: the chain differs, nothing matches.
    let (mut t, hit) = a.match_prefix(&[9, 9, 3, 4]);
    assert_eq!(hit, 0);
    a.free(&mut t);
    a.free(&mut x);
}

#[test]
fn eviction_only_when_free_list_is_empty_and_tail_first() {
    let mut a = BlockAllocator::new(4, 2, true).unwrap();
    let mut x = seq(&mut a, &[1, 2, 3, 4, 5]); // blocks 0,1 full (cached), 2 partial
    a.free(&mut x);
    assert_eq!((a.stats().cached_blocks, a.stats().free_blocks), (2, 2));
    // Two fresh blocks come from the free list: the cache is untouched.
    let mut y = BlockTable::new();
    a.reserve_slots(&mut y, 4).unwrap();
    assert_eq!(a.stats().cached_blocks, 2);
    assert_eq!(a.peek_prefix(&[1, 2, 3, 4]).tokens, 4);
    // The next block must evict: the chain's tail (block 1) goes before its head (block 0).
    a.reserve_slots(&mut y, 1).unwrap();
    assert_eq!(a.stats().cached_blocks, 1);
    assert_eq!(a.peek_prefix(&[1, 2, 3, 4]).tokens, 2);
    a.check_invariants([&y]).unwrap();
    // 5 tokens in 3 blocks: 4 more need 2 new blocks, 1 is left.
    assert_eq!(a.reserve_slots(&mut y, 4), Err(KvError::OutOfBlocks { needed: 2, available: 1 }));
    a.check_invariants([&y]).unwrap();
    a.free(&mut y);
}

#[test]
fn evicted_and_reused_parent_breaks_the_chain() {
    let mut a = BlockAllocator::new(3, 1, true).unwrap();
    let mut x = seq(&mut a, &[1, 2, 3]); // blocks for 1, 2 cached after free; 3 too
    a.free(&mut x);
    assert_eq!(a.stats().cached_blocks, 3);
    // Evict everything and register other content in the same physical blocks.
    let mut y = seq(&mut a, &[7, 8, 9]);
    a.free(&mut y);
    let (mut t, hit) = a.match_prefix(&[1, 2]);
    assert_eq!(hit, 0);
    a.free(&mut t);
    let (mut t, hit) = a.match_prefix(&[7, 8]);
    assert_eq!(hit, 2);
    a.free(&mut t);
    a.check_invariants([]).unwrap();
}

#[test]
fn appendable_tokens_is_exact() {
    let mut a = BlockAllocator::new(3, 4, false).unwrap();
    let mut p = BlockTable::new();
    a.reserve_slots(&mut p, 5).unwrap(); // 2 blocks, 3 slots of slack, 1 block free
    assert_eq!(a.appendable_tokens(&p), 3 + 4);
    let mut c = a.fork(&p);
    // Copy-on-write needs the one free block for the copy: 3 slots, no more.
    assert_eq!(a.appendable_tokens(&c), 3);
    assert!(a.reserve_slots(&mut c, 4).is_err());
    assert!(a.reserve_slots(&mut c, 3).unwrap().is_some());
    assert_eq!(a.appendable_tokens(&c), 0);
    a.check_invariants([&p, &c]).unwrap();
    a.free(&mut p);
    a.free(&mut c);
}

#[test]
fn leaked_table_is_reported() {
    let mut a = BlockAllocator::new(2, 4, false).unwrap();
    let mut t = BlockTable::new();
    a.reserve_slots(&mut t, 1).unwrap();
    let err = a.check_invariants([]).unwrap_err();
    assert!(err.to_string().contains("reference count 1 but 0 tables"), "{err}");
    a.free(&mut t);
}

#[test]
fn bad_configs_are_errors() {
    assert!(
        matches!(BlockAllocator::new(0, 16, true), Err(KvError::InvalidConfig(m)) if m.contains("num_blocks is 0"))
    );
    assert!(matches!(BlockAllocator::new(4, 0, true), Err(KvError::InvalidConfig(m)) if m.contains("block_size is 0")));
}
