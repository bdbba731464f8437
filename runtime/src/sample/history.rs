//! The token history of one sequence (prompt, then output) with the per-token counts that the
//! penalties need.
//!
//! Invariants:
//! - `tokens[..prompt_len]` is the prompt and `tokens[prompt_len..]` the output, in order.
//! - `counts[t]` holds, for every token `t` that occurs at least once, how often it occurs in the
//!   prompt and in the output; tokens that never occur have no entry. So iterating `counts`
//!   visits each *distinct* seen token exactly once, which is what the repetition penalty needs.
//! - `max_token` is the largest id seen (if any), so a range check against the vocabulary is
//!   O(1) per sampling call.
//!
//! Appending an output token is O(1) amortised (a vector push and a hash-map update); nothing is
//! recomputed from scratch.

use std::collections::HashMap;

/// How often one token occurs in the prompt and in the output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCount {
    /// Occurrences in the prompt.
    pub prompt: u32,
    /// Occurrences in the generated output.
    pub output: u32,
}

/// Prompt and output token ids of one sequence, with counts for penalties.
#[derive(Debug, Clone, Default)]
pub struct TokenHistory {
    tokens: Vec<u32>,
    prompt_len: usize,
    counts: HashMap<u32, TokenCount>,
    max_token: Option<u32>,
}

impl TokenHistory {
    /// A history holding `prompt` and no output yet.
    pub fn new(prompt: &[u32]) -> Self {
        let mut h =
            Self { tokens: Vec::with_capacity(prompt.len()), prompt_len: 0, counts: HashMap::new(), max_token: None };
        for &t in prompt {
            h.record(t);
            h.counts.entry(t).or_default().prompt += 1;
        }
        h.prompt_len = prompt.len();
        h
    }

    /// Appends one generated token. O(1) amortised.
    pub fn push_output(&mut self, token: u32) {
        self.record(token);
        let c = self.counts.entry(token).or_default();
        // Saturate rather than wrap: four billion repeats of one token cannot happen in a real
        // sequence, but wrapping would silently turn a huge penalty into none.
        c.output = c.output.saturating_add(1);
    }

    fn record(&mut self, token: u32) {
        self.tokens.push(token);
        self.max_token = Some(self.max_token.map_or(token, |m| m.max(token)));
    }

    /// The prompt ids.
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    /// The generated ids, oldest first.
    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Prompt followed by output.
    pub fn all(&self) -> &[u32] {
        &self.tokens
    }

    /// Number of generated tokens.
    pub fn output_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Counts of `token` (zero if it never occurred).
    pub fn count(&self, token: u32) -> TokenCount {
        self.counts.get(&token).copied().unwrap_or_default()
    }

    /// The largest token id in prompt or output, `None` when both are empty.
    pub fn max_token(&self) -> Option<u32> {
        self.max_token
    }

    /// Every distinct token seen in prompt or output, with its counts, in unspecified order.
    pub fn distinct(&self) -> impl Iterator<Item = (u32, TokenCount)> + '_ {
        self.counts.iter().map(|(&t, &c)| (t, c))
    }

    /// Number of distinct tokens seen.
    pub fn distinct_len(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_split_prompt_and_output() {
        let mut h = TokenHistory::new(&[5, 7, 5]);
        h.push_output(7);
        h.push_output(9);
        h.push_output(7);
        assert_eq!(h.prompt(), &[5, 7, 5]);
        assert_eq!(h.output(), &[7, 9, 7]);
        assert_eq!(h.all(), &[5, 7, 5, 7, 9, 7]);
        assert_eq!(h.output_len(), 3);
        assert_eq!(h.count(5), TokenCount { prompt: 2, output: 0 });
        assert_eq!(h.count(7), TokenCount { prompt: 1, output: 2 });
        assert_eq!(h.count(9), TokenCount { prompt: 0, output: 1 });
        assert_eq!(h.count(1), TokenCount::default());
        assert_eq!(h.max_token(), Some(9));
        assert_eq!(h.distinct_len(), 3);
        let mut d: Vec<u32> = h.distinct().map(|(t, _)| t).collect();
        d.sort_unstable();
        assert_eq!(d, vec![5, 7, 9]);
    }

    #[test]
    fn empty_history() {
        let h = TokenHistory::new(&[]);
        assert_eq!(h.max_token(), None);
        assert_eq!(h.distinct_len(), 0);
        assert!(h.prompt().is_empty() && h.output().is_empty());
    }
}
