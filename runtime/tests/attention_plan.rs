//! The attention plan's layout (kiln_codegen::attention::abi): tokens, positions, tables,
//! padding; the default split's boundaries, which make a token's attention independent of
//! what it is batched with; the tensor-core blocks of queries.

use kiln_codegen::attention::abi::{mma_queries, PlanLayout};
use kiln_runtime::attention::{AttnPlan, SeqAttn, SPLIT_TOKENS};

#[test]
fn the_plan_holds_positions_tables_and_padding() {
    let t0 = [3u32, 1, 4];
    let t1 = [9u32];
    let seqs = [
        SeqAttn { q_start: 0, q_len: 2, ctx_len: 40, block_table: &t0 },
        SeqAttn { q_start: 2, q_len: 1, ctx_len: 5, block_table: &t1 },
    ];
    let p = AttnPlan::new(&seqs, 5, 3, 4, 16, 10).unwrap();
    let l = PlanLayout { n_tokens: 5, n_seqs: 3, bt_stride: 4 };
    let h = p.host();
    assert_eq!(h.len(), l.len());
    assert_eq!(&h[l.tok_seq()..l.tok_seq() + 5], &[0, 0, 1, -1, -1], "rows past the sequences are padding");
    assert_eq!(&h[l.tok_pos()..l.tok_pos() + 3], &[38, 39, 4]);
    assert_eq!(&h[l.seq_ctx()..l.seq_ctx() + 2], &[40, 5]);
    assert_eq!(&h[l.block_tables()..l.block_tables() + 5], &[3, 1, 4, 0, 9]);
    assert_eq!(p.max_ctx(), 40);
}

#[test]
fn default_splits_cut_every_context_at_the_same_places() {
    let table: Vec<u32> = (0..64).collect();
    let long = SeqAttn { q_start: 0, q_len: 1, ctx_len: 1000, block_table: &table };
    let short = SeqAttn { q_start: 1, q_len: 1, ctx_len: 100, block_table: &table[..8] };
    let mut alone = AttnPlan::new(&[SeqAttn { q_start: 0, ..short.clone() }], 1, 1, 64, 16, 64).unwrap();
    alone.split_default();
    let both_seqs = [long.clone(), short.clone()];
    let mut both = AttnPlan::new(&both_seqs, 2, 2, 64, 16, 64).unwrap();
    both.split_default();
    // One split alone, four with the long neighbour, but the same part length whenever split.
    assert_eq!(alone.n_splits(), 1);
    assert_eq!(both.n_splits(), 1000usize.div_ceil(SPLIT_TOKENS));
    assert_eq!(both.host()[0] as usize, SPLIT_TOKENS);
    // A fixed grid (a captured graph) keeps its split count and the same part length.
    both.split_fixed(32);
    assert_eq!((both.n_splits(), both.host()[0] as usize), (32, SPLIT_TOKENS));
    both.split_fixed(1);
    assert_eq!(both.n_splits(), 1000usize.div_ceil(SPLIT_TOKENS), "never fewer splits than the longest context needs");
}

#[test]
fn the_tensor_core_route_is_taken_for_prefills_only() {
    let table: Vec<u32> = (0..8).collect();
    let decode = [SeqAttn { q_start: 0, q_len: 1, ctx_len: 50, block_table: &table }];
    let mut p = AttnPlan::new(&decode, 1, 1, 8, 16, 8).unwrap();
    p.prepare_mma(4);
    assert_eq!(p.mma_blocks(), None, "a decode-only step keeps the split kernel");
    // A chunk of 40 tokens next to a decode, group 4 (16 queries per block), two padding rows.
    let seqs = [
        SeqAttn { q_start: 0, q_len: 40, ctx_len: 100, block_table: &table },
        SeqAttn { q_start: 40, q_len: 1, ctx_len: 9, block_table: &table[..1] },
    ];
    let mut p = AttnPlan::new(&seqs, 43, 2, 8, 16, 8).unwrap();
    p.prepare_mma(4);
    // Blocks: [seq, first row, queries, first position]; then the padding rows.
    assert_eq!(p.mma_blocks().unwrap(), &[0, 0, 16, 60, 0, 16, 16, 76, 0, 32, 8, 92, 1, 40, 1, 8, -1, 41, 2, 0][..]);
    assert_eq!(mma_queries(4), 16);
    assert_eq!(mma_queries(3), 21);
    assert_eq!(mma_queries(100), 0);
}

#[test]
fn refresh_keeps_the_layout() {
    let table: Vec<u32> = (0..4).collect();
    let seq = [SeqAttn { q_start: 0, q_len: 1, ctx_len: 10, block_table: &table }];
    let mut fixed = AttnPlan::new(&[], 4, 4, 4, 16, 4).unwrap();
    fixed.split_fixed(4);
    let next = AttnPlan::new(&seq, 4, 4, 4, 16, 4).unwrap();
    fixed.refresh_from(next, &kiln_runtime::Device::Cpu, 2, 8).unwrap();
    assert_eq!(fixed.n_splits(), 4, "the captured grid keeps its splits");
    assert_eq!(fixed.host()[1], 0);
    let other = AttnPlan::new(&seq, 2, 2, 4, 16, 4).unwrap();
    assert!(fixed.refresh_from(other, &kiln_runtime::Device::Cpu, 2, 8).is_err());
}
