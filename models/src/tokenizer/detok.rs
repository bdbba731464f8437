//! Incremental detokenization: turn a stream of generated token ids into text deltas.
//!
//! Invariants:
//! - Concatenating every delta from `step` and then `finish` equals `decode(all ids)`.
//! - A delta never ends inside a character: while the decoded window ends with U+FFFD (the
//!   tail bytes of a multi-byte character split across byte-level tokens are still missing),
//!   the text is held back, so no U+FFFD reaches the client that the full text lacks.
//! - Each step decodes only a short window: from `prefix_offset` (context already emitted,
//!   decoded again so decoders that strip a leading space per call, like SentencePiece's,
//!   still place spaces right) to the newest id. Ids before the window are dropped.

use super::error::TokenizerError;
use super::Tokenizer;

const REPLACEMENT: char = '\u{FFFD}';

/// Streaming detokenizer for one sequence.
#[derive(Debug, Clone)]
pub struct DetokStream {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// The window: ids from the start of the emitted context to the newest id.
    ids: Vec<u32>,
    /// `ids[..prefix_offset]`: context decoded only to locate the start of new text.
    prefix_offset: usize,
    /// `ids[..read_offset]`: everything whose text was already emitted.
    read_offset: usize,
}

impl DetokStream {
    pub fn new(tokenizer: &Tokenizer, skip_special: bool) -> Self {
        Self { tokenizer: tokenizer.clone(), skip_special, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    /// Starts after `context` (e.g. the tail of the prompt) without emitting it, so the first
    /// generated token's spacing is decided as it would be mid-text.
    pub fn with_context(tokenizer: &Tokenizer, skip_special: bool, context: &[u32]) -> Self {
        let mut s = Self::new(tokenizer, skip_special);
        s.ids.extend_from_slice(context);
        s.read_offset = context.len();
        s
    }

    /// Adds one generated id; returns the text it completes (often empty while a character's
    /// bytes are still arriving).
    pub fn step(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        if full.len() <= prefix.len() || full.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let Some(delta) = full.strip_prefix(prefix.as_str()) else {
            // The decoder rewrote already-emitted text (only text-cleanup decoders do);
            // emitting now would duplicate or garble it, so wait for `finish`.
            return Ok(String::new());
        };
        let delta = delta.to_string();
        // The just-emitted ids become the context of the next window.
        self.ids.drain(..self.prefix_offset);
        self.prefix_offset = self.read_offset - self.prefix_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Flushes whatever is held back (an incomplete character decodes to U+FFFD here, exactly
    /// as in `decode` of all ids). The stream stays usable.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        let delta = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            // Best effort after a rewrite: the part past the longest common prefix.
            None => full[common_prefix_len(&prefix, &full)..].to_string(),
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Ids received whose text is still held back.
    pub fn pending(&self) -> usize {
        self.ids.len() - self.read_offset
    }

    fn decode(&self, from: usize, to: usize) -> Result<String, TokenizerError> {
        match self.ids.get(from..to) {
            Some(window) if !window.is_empty() => self.tokenizer.decode(window, self.skip_special),
            _ => Ok(String::new()),
        }
    }
}

/// Byte length of the longest common prefix of `a` and `b` that ends on a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| a.len().min(b.len()))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{tiny, IM_END};
    use super::*;

    /// Streams `ids` one by one; returns the deltas including the final flush.
    fn stream(t: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
        let mut s = DetokStream::new(t, skip_special);
        let mut out: Vec<String> = ids.iter().map(|&id| s.step(id).unwrap()).collect();
        out.push(s.finish().unwrap());
        out
    }

    #[test]
    fn deltas_concatenate_to_full_decode_without_broken_chars() {
        let t = tiny();
        for text in ["héllo wörld", "😀👍🏽 family 👨‍👩‍👧", "中文 日本語 한국어", "plain ascii", "a\u{FFFD}b"]
        {
            let ids = t.encode(text, false).unwrap();
            let deltas = stream(&t, &ids, false);
            assert_eq!(deltas.concat(), t.decode(&ids, false).unwrap(), "{text:?}");
            if !text.contains(REPLACEMENT) {
                assert!(deltas.iter().all(|d| !d.contains(REPLACEMENT)), "{text:?}: {deltas:?}");
            }
        }
    }

    #[test]
    fn multibyte_char_is_held_until_complete() {
        let t = tiny();
        // The tiny vocab has no merges for these bytes: one token per byte.
        let ids = t.encode("😀", false).unwrap();
        assert_eq!(ids.len(), 4);
        let mut s = DetokStream::new(&t, false);
        for &id in &ids[..3] {
            assert_eq!(s.step(id).unwrap(), "");
        }
        assert_eq!(s.pending(), 3);
        assert_eq!(s.step(ids[3]).unwrap(), "😀");
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn finish_flushes_an_incomplete_tail_like_decode_does() {
        let t = tiny();
        let ids = t.encode("ok 😀", false).unwrap();
        let cut = &ids[..ids.len() - 1];
        let deltas = stream(&t, cut, false);
        assert_eq!(deltas.concat(), t.decode(cut, false).unwrap());
        assert!(deltas.last().is_some_and(|d| d.ends_with(REPLACEMENT)));
    }

    #[test]
    fn special_tokens_follow_skip_flag() {
        let t = tiny();
        let mut ids = t.encode("he", false).unwrap();
        ids.push(IM_END);
        assert_eq!(stream(&t, &ids, true).concat(), "he");
        assert_eq!(stream(&t, &ids, false).concat(), "he<|im_end|>");
    }

    #[test]
    fn context_is_not_emitted() {
        let t = tiny();
        let context = t.encode("prompt 世", false).unwrap();
        let mut s = DetokStream::with_context(&t, false, &context);
        let reply = t.encode(" the end", false).unwrap();
        let text: String = reply.iter().map(|&id| s.step(id).unwrap()).collect();
        assert_eq!(text + &s.finish().unwrap(), " the end");
    }

    #[test]
    fn window_stays_short_on_long_streams() {
        let t = tiny();
        let ids = t.encode(&"the héllo 😀 ".repeat(200), false).unwrap();
        let mut s = DetokStream::new(&t, false);
        let mut max_window = 0;
        for &id in &ids {
            s.step(id).unwrap();
            max_window = max_window.max(s.ids.len());
        }
        assert!(max_window <= 8, "window grew to {max_window}");
    }

    #[test]
    fn common_prefix_respects_char_boundaries() {
        assert_eq!(common_prefix_len("héllo", "hélp"), 4);
        assert_eq!(common_prefix_len("ab", "abc"), 2);
        assert_eq!(common_prefix_len("abc", "ab"), 2);
        assert_eq!(common_prefix_len("é", "è"), 0);
    }
}
