//! [`Windows`]: how a tokenized text is cut into evaluation windows, llama.cpp's way.
//!
//! Invariants: `count = min(n_tokens / ctx, max_chunks)` whole windows, never a partial one;
//! window `i` is `tokens[i*ctx .. (i+1)*ctx]` with its first token replaced by BOS when the
//! model adds one (targets are never that token: scoring starts at `ctx/2 + 1`); the scored
//! rows are `ctx/2 .. ctx-1`, so `ctx` must be even and at least 4 (one scored row at least).

use super::PerplexityError;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Windows {
    ctx: usize,
    count: usize,
    bos: Option<u32>,
}

impl Windows {
    /// Plan the windows of a text of `n_tokens` tokens. `max_ctx` is the model's longest
    /// sequence; `bos` is the id that replaces each window's first token (`None`: the model
    /// adds no BOS, windows are taken as they are).
    pub fn new(
        n_tokens: usize,
        ctx: usize,
        max_chunks: Option<usize>,
        max_ctx: usize,
        bos: Option<u32>,
    ) -> Result<Windows, PerplexityError> {
        Self::check_args(ctx, max_chunks)?;
        if ctx > max_ctx {
            return Err(PerplexityError::CtxTooLong { ctx, max: max_ctx });
        }
        let whole = n_tokens / ctx;
        if whole == 0 {
            return Err(PerplexityError::TooShort { tokens: n_tokens, ctx });
        }
        Ok(Windows { ctx, count: max_chunks.map_or(whole, |m| m.min(whole)), bos })
    }

    /// The checks that need neither the text nor the model (so a caller can make them before
    /// loading either): `ctx` even and at least 4, at least one chunk asked for.
    pub fn check_args(ctx: usize, max_chunks: Option<usize>) -> Result<(), PerplexityError> {
        if ctx < 4 || !ctx.is_multiple_of(2) {
            return Err(PerplexityError::BadCtx(ctx));
        }
        if max_chunks == Some(0) {
            return Err(PerplexityError::NoChunks);
        }
        Ok(())
    }

    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// How many windows are evaluated.
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The rows of a window whose logits are scored: `ctx/2 .. ctx-1`.
    pub fn scored_rows(&self) -> Range<usize> {
        self.ctx / 2..self.ctx - 1
    }

    /// Scored positions per window: `ctx - 1 - ctx/2`.
    pub fn scored_per_window(&self) -> usize {
        self.scored_rows().len()
    }

    /// Window `i` (`i < count()`) as the model sees it: BOS first when the model adds one.
    pub fn window(&self, tokens: &[u32], i: usize) -> Vec<u32> {
        let mut w = tokens[i * self.ctx..(i + 1) * self.ctx].to_vec();
        if let Some(bos) = self.bos {
            w[0] = bos;
        }
        w
    }

    /// The tokens predicted by the scored rows of `window`: `window[ctx/2 + 1 .. ctx]`, in row
    /// order (row `j` predicts `window[j + 1]`).
    pub fn targets<'a>(&self, window: &'a [u32]) -> &'a [u32] {
        &window[self.ctx / 2 + 1..self.ctx]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_windows_only_and_capped() {
        let w = Windows::new(2100, 512, None, 8192, None).unwrap();
        assert_eq!((w.count(), w.ctx(), w.scored_per_window()), (4, 512, 255));
        assert_eq!(w.scored_rows(), 256..511);
        assert_eq!(Windows::new(2100, 512, Some(2), 8192, None).unwrap().count(), 2);
        assert_eq!(Windows::new(2100, 512, Some(9), 8192, None).unwrap().count(), 4);
        assert_eq!(Windows::new(512, 512, None, 512, None).unwrap().count(), 1);
    }

    #[test]
    fn bos_replaces_the_first_token_and_targets_are_the_second_half() {
        let tokens: Vec<u32> = (100..120).collect();
        let w = Windows::new(tokens.len(), 8, None, 64, Some(1)).unwrap();
        assert_eq!(w.count(), 2);
        let second = w.window(&tokens, 1);
        assert_eq!(second, vec![1, 109, 110, 111, 112, 113, 114, 115]);
        // Rows 4, 5, 6 predict window[5], window[6], window[7].
        assert_eq!(w.scored_rows(), 4..7);
        assert_eq!(w.targets(&second), &[113, 114, 115]);
        let plain = Windows::new(tokens.len(), 8, None, 64, None).unwrap();
        assert_eq!(plain.window(&tokens, 1)[0], 108);
    }

    #[test]
    fn bad_plans_are_errors() {
        for ctx in [0, 1, 2, 3, 5, 511] {
            assert!(matches!(Windows::new(4096, ctx, None, 8192, None), Err(PerplexityError::BadCtx(c)) if c == ctx));
        }
        assert!(matches!(
            Windows::new(100_000, 16384, None, 8192, None),
            Err(PerplexityError::CtxTooLong { ctx: 16384, max: 8192 })
        ));
        assert!(matches!(
            Windows::new(511, 512, None, 8192, None),
            Err(PerplexityError::TooShort { tokens: 511, ctx: 512 })
        ));
        assert!(matches!(Windows::new(4096, 512, Some(0), 8192, None), Err(PerplexityError::NoChunks)));
    }
}
