//! [`LogitSource`]: where a window's logits come from. [`ModelSource`] runs any `CausalLm`:
//! the window is one prefill of one sequence, with logits asked for the scored rows only
//! (`ForwardBatch::logits_rows`), so only those rows reach the LM head.
//!
//! Invariant: each window is evaluated as if from an empty KV cache. The cache is allocated
//! once (for the longest window seen) and reused: a window writes slots `0..len` and its
//! sequence's context is exactly those `len` slots, so nothing an earlier window left there is
//! ever read.

use super::PerplexityError;
use crate::generate::BLOCK_SIZE;
use crate::model::{CausalLm, ForwardBatch, KvCache};
use kiln_runtime::attention::SeqAttn;
use std::ops::Range;

/// A model seen as a function from a token window to logits.
pub trait LogitSource {
    fn vocab_size(&self) -> usize;
    /// The logits of `rows` of `window`, evaluated from an empty cache: `rows.len() *
    /// vocab_size()` values, row-major.
    fn window_logits(&mut self, window: &[u32], rows: Range<usize>) -> Result<Vec<f32>, PerplexityError>;
}

/// A [`LogitSource`] over a loaded model.
pub struct ModelSource<'a> {
    model: &'a dyn CausalLm,
    /// The cache and its capacity in tokens.
    kv: Option<(usize, KvCache)>,
}

impl<'a> ModelSource<'a> {
    pub fn new(model: &'a dyn CausalLm) -> ModelSource<'a> {
        ModelSource { model, kv: None }
    }
}

impl LogitSource for ModelSource<'_> {
    fn vocab_size(&self) -> usize {
        self.model.info().vocab_size
    }

    fn window_logits(&mut self, window: &[u32], rows: Range<usize>) -> Result<Vec<f32>, PerplexityError> {
        let n = window.len();
        let blocks = n.div_ceil(BLOCK_SIZE);
        if self.kv.as_ref().is_some_and(|(cap, _)| *cap < n) {
            self.kv = None; // free the old pools before making larger ones
        }
        let (_, kv) = match &mut self.kv {
            Some(held) => held,
            empty => empty.insert((blocks * BLOCK_SIZE, self.model.new_kv_cache(blocks, BLOCK_SIZE)?)),
        };
        let table: Vec<u32> = (0..blocks as u32).collect();
        let positions: Vec<i32> = (0..n as i32).collect();
        let slots: Vec<u32> = (0..n as u32).collect();
        let logits_rows: Vec<usize> = rows.collect();
        let seqs = [SeqAttn { q_start: 0, q_len: n, ctx_len: n, block_table: &table }];
        let batch = ForwardBatch {
            tokens: window,
            positions: &positions,
            slots: &slots,
            seqs: &seqs,
            logits_rows: &logits_rows,
        };
        Ok(self.model.forward(&batch, kv)?.to_host_f32()?)
    }
}
