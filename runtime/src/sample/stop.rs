//! Stop handling: turns the per-token text deltas of one sequence into text that is safe to
//! stream, and decides when and why the sequence finishes.
//!
//! Rules (the caller feeds [`StopChecker::step`] once per generated token, with that token's
//! detokenized text delta, in order):
//!
//! 1. **Stop tokens.** If the token is in `stop_token_ids`, or is an EOS id and `ignore_eos` is
//!    false, the sequence finishes with [`FinishReason::Stop`]. That token's own text is dropped;
//!    text held back so far (see 3) is released, since it did not become a stop string.
//! 2. **Stop strings.** Otherwise the delta is appended to the held-back text and searched. A stop
//!    string fires at the *earliest end position* in the whole generated text (text is
//!    conceptually produced character by character, and generation stops as soon as any stop
//!    string is complete); among stop strings completing at the same position, the one starting
//!    earliest wins. The emitted text ends right before the match (OpenAI semantics: the stop
//!    string is not included) and everything after it is discarded; finish is `Stop`. The
//!    result depends only on the concatenated text, never on how it was split into deltas.
//! 3. **Hold-back.** With no match, the longest suffix of the pending text that is a *proper
//!    prefix* of some stop string is held back; the rest is emitted now. Held text is released
//!    as soon as it can no longer start a stop string, or when the sequence finishes any other
//!    way. So no byte that belongs to a stop string, or comes after one, is ever emitted.
//! 4. **Length.** If no stop fired and this was token number `max_tokens`, the sequence
//!    finishes with [`FinishReason::Length`], releasing all held text.
//! 5. After finishing, further calls fail with [`SamplingError::AlreadyFinished`].
//!    [`StopChecker::finish`] ends a sequence for outside reasons (abort, error), releasing held
//!    text.
//!
//! Invariant behind rule 3: no stop string occurs in emitted text or straddles the emitted /
//! held boundary (any occurrence starting in emitted text would make its tail a held prefix).
//! Hence a new occurrence lies entirely inside the pending buffer, which is never longer than
//! the longest stop string minus one byte plus the newest delta, so each step is cheap.

use super::error::SamplingError;
use super::finish::FinishReason;
use super::params::SamplingParams;

/// What ended a sequence with [`FinishReason::Stop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopMatch {
    /// A stop token id or EOS.
    Token(u32),
    /// One of the stop strings (as given in the parameters).
    Text(String),
}

/// Result of feeding one token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutput {
    /// Text that is safe to send to the client now (may be empty).
    pub text: String,
    /// Set when this step finished the sequence.
    pub finish: Option<FinishReason>,
    /// What fired, when `finish` is `Some(Stop)`.
    pub matched: Option<StopMatch>,
}

/// Incremental stop detection for one sequence.
#[derive(Debug, Clone)]
pub struct StopChecker {
    stop: Vec<String>,
    stop_token_ids: Vec<u32>,
    eos_token_ids: Vec<u32>,
    ignore_eos: bool,
    max_tokens: usize,
    pending: String,
    generated: usize,
    finished: Option<FinishReason>,
}

impl StopChecker {
    /// Validates `params` and builds a checker; `eos_token_ids` are the model's EOS ids.
    pub fn new(params: &SamplingParams, eos_token_ids: &[u32]) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(Self {
            stop: params.stop.clone(),
            stop_token_ids: params.stop_token_ids.clone(),
            eos_token_ids: eos_token_ids.to_vec(),
            ignore_eos: params.ignore_eos,
            max_tokens: params.max_tokens,
            pending: String::new(),
            generated: 0,
            finished: None,
        })
    }

    /// Feeds one generated token and its text delta; see the module rules.
    pub fn step(&mut self, token: u32, delta: &str) -> Result<StopOutput, SamplingError> {
        if let Some(reason) = self.finished {
            return Err(SamplingError::AlreadyFinished(reason));
        }
        self.generated += 1;
        let is_eos = !self.ignore_eos && self.eos_token_ids.contains(&token);
        if is_eos || self.stop_token_ids.contains(&token) {
            return Ok(self.end(FinishReason::Stop, Some(StopMatch::Token(token))));
        }
        self.pending.push_str(delta);
        if let Some((start, index)) = self.earliest_stop() {
            self.pending.truncate(start);
            let matched = StopMatch::Text(self.stop[index].clone());
            return Ok(self.end(FinishReason::Stop, Some(matched)));
        }
        if self.generated >= self.max_tokens {
            return Ok(self.end(FinishReason::Length, None));
        }
        let emit = self.pending.len() - self.hold_len();
        let text = self.pending.drain(..emit).collect();
        Ok(StopOutput { text, finish: None, matched: None })
    }

    /// Ends the sequence for a reason outside the checker (abort, error, context exhausted),
    /// releasing any held-back text.
    pub fn finish(&mut self, reason: FinishReason) -> Result<StopOutput, SamplingError> {
        if let Some(done) = self.finished {
            return Err(SamplingError::AlreadyFinished(done));
        }
        Ok(self.end(reason, None))
    }

    /// Why the sequence finished, if it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Text currently held back because it may begin a stop string.
    pub fn held_back(&self) -> &str {
        &self.pending
    }

    /// Tokens fed so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    fn end(&mut self, reason: FinishReason, matched: Option<StopMatch>) -> StopOutput {
        self.finished = Some(reason);
        StopOutput { text: std::mem::take(&mut self.pending), finish: Some(reason), matched }
    }

    /// `(start byte, stop index)` of the occurrence with the smallest end, ties to the
    /// earliest start. For one stop string the first occurrence also ends first.
    fn earliest_stop(&self) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, index)
        for (index, s) in self.stop.iter().enumerate() {
            if let Some(start) = self.pending.find(s.as_str()) {
                let cand = (start + s.len(), start, index);
                if best.is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                    best = Some(cand);
                }
            }
        }
        best.map(|(_, start, index)| (start, index))
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop
    /// string (always on a char boundary).
    fn hold_len(&self) -> usize {
        let p = self.pending.as_bytes();
        let mut best = 0;
        for s in &self.stop {
            // Stop strings are non-empty (validated); saturating keeps this total regardless.
            let longest = s.len().saturating_sub(1).min(p.len());
            for k in (best + 1..=longest).rev() {
                let start = p.len() - k;
                if self.pending.is_char_boundary(start) && s.as_bytes().starts_with(&p[start..]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOS: u32 = 2;

    fn checker(stop: &[&str], max_tokens: usize) -> StopChecker {
        let p = SamplingParams {
            stop: stop.iter().map(|s| s.to_string()).collect(),
            stop_token_ids: vec![99],
            max_tokens,
            ..SamplingParams::default()
        };
        StopChecker::new(&p, &[EOS]).unwrap()
    }

    /// Feeds text deltas as tokens 10, 11, ...; returns emitted text and the final output.
    fn feed(c: &mut StopChecker, deltas: &[&str]) -> (String, Option<StopOutput>) {
        let mut out = String::new();
        for (i, d) in deltas.iter().enumerate() {
            let o = c.step(10 + i as u32, d).unwrap();
            out.push_str(&o.text);
            if o.finish.is_some() {
                return (out, Some(o));
            }
        }
        (out, None)
    }

    #[test]
    fn stop_string_across_token_boundary() {
        let mut c = checker(&["world"], 100);
        let first = c.step(10, "Hello wor").unwrap();
        assert_eq!(first.text, "Hello ");
        assert_eq!(c.held_back(), "wor");
        let second = c.step(11, "ld and more").unwrap();
        assert_eq!(second.text, "");
        assert_eq!(second.finish, Some(FinishReason::Stop));
        assert_eq!(second.matched, Some(StopMatch::Text("world".into())));
        assert_eq!(c.step(12, "x"), Err(SamplingError::AlreadyFinished(FinishReason::Stop)));
    }

    #[test]
    fn held_prefix_is_released_when_it_does_not_match() {
        let mut c = checker(&["world"], 100);
        assert_eq!(c.step(10, "Hello wo").unwrap().text, "Hello ");
        assert_eq!(c.step(11, "r").unwrap().text, "");
        // "worm" cannot start "world"; nor can any suffix of it.
        assert_eq!(c.step(12, "m!").unwrap().text, "worm!");
        assert_eq!(c.held_back(), "");
    }

    #[test]
    fn release_keeps_a_suffix_that_can_still_match() {
        let mut c = checker(&["abab"], 100);
        let (out, fin) = feed(&mut c, &["ab", "a", "c"]);
        assert_eq!(out, "abac");
        assert!(fin.is_none());
        let mut c = checker(&["abab"], 100);
        assert_eq!(c.step(10, "aba").unwrap().text, "");
        assert_eq!(c.step(11, "a").unwrap().text, "aba"); // "abaa": keep "a"
        assert_eq!(c.held_back(), "a");
        let (out, fin) = feed(&mut c, &["bab"]);
        assert_eq!(out, "");
        assert_eq!(fin.unwrap().matched, Some(StopMatch::Text("abab".into())));
    }

    #[test]
    fn multiple_stop_strings_first_completed_wins() {
        // "bc" completes (at byte 3) before "abcd" would (at byte 4).
        let mut c = checker(&["abcd", "bc"], 100);
        let (out, fin) = feed(&mut c, &["a", "b", "c", "d"]);
        assert_eq!(out, "a");
        assert_eq!(fin.unwrap().matched, Some(StopMatch::Text("bc".into())));
        // Same text in one delta: same answer.
        let mut c = checker(&["abcd", "bc"], 100);
        let (out, _) = feed(&mut c, &["xabcd"]);
        assert_eq!(out, "xa");
        // Completing at the same place: the longer (earlier-starting) one wins.
        let mut c = checker(&["c", "abc"], 100);
        let (out, fin) = feed(&mut c, &["zab", "c"]);
        assert_eq!(out, "z");
        assert_eq!(fin.unwrap().matched, Some(StopMatch::Text("abc".into())));
    }

    #[test]
    fn stop_string_at_the_very_start() {
        let mut c = checker(&["Hi"], 100);
        let (out, fin) = feed(&mut c, &["Hi there"]);
        assert_eq!(out, "");
        assert_eq!(fin.unwrap().finish, Some(FinishReason::Stop));
        let mut c = checker(&["Hi"], 100);
        let (out, fin) = feed(&mut c, &["H", "i"]);
        assert_eq!((out.as_str(), fin.is_some()), ("", true));
    }

    #[test]
    fn unicode_stop_strings() {
        let mut c = checker(&["世界", "→x"], 100);
        let first = c.step(10, "你好世").unwrap();
        assert_eq!(first.text, "你好");
        assert_eq!(c.held_back(), "世");
        let (out, fin) = feed(&mut c, &["界!"]);
        assert_eq!(out, "");
        assert_eq!(fin.unwrap().matched, Some(StopMatch::Text("世界".into())));
        // Matching is by exact code points: a decomposed "e\u{301}" is not the stop "é".
        let mut c = checker(&["é"], 100);
        assert_eq!(c.step(10, "e\u{301}").unwrap().text, "e\u{301}");
        let mut c = checker(&["→x"], 100);
        assert_eq!(c.step(10, "a→").unwrap().text, "a");
        assert_eq!(c.step(11, "y").unwrap().text, "→y");
    }

    #[test]
    fn stop_token_and_eos_drop_their_text_and_release_held() {
        let mut c = checker(&["world"], 100);
        assert_eq!(c.step(10, "hello wor").unwrap().text, "hello ");
        let o = c.step(EOS, "</s>").unwrap();
        assert_eq!(o.text, "wor");
        assert_eq!(o.finish, Some(FinishReason::Stop));
        assert_eq!(o.matched, Some(StopMatch::Token(EOS)));
        let mut c = checker(&[], 100);
        let o = c.step(99, "\n").unwrap();
        assert_eq!((o.text.as_str(), o.matched), ("", Some(StopMatch::Token(99))));
    }

    #[test]
    fn ignore_eos_keeps_going_but_stop_ids_still_stop() {
        let p = SamplingParams { ignore_eos: true, stop_token_ids: vec![7], ..SamplingParams::default() };
        let mut c = StopChecker::new(&p, &[EOS]).unwrap();
        let o = c.step(EOS, "<eos>").unwrap();
        assert_eq!((o.text.as_str(), o.finish), ("<eos>", None));
        assert_eq!(c.step(7, "x").unwrap().finish, Some(FinishReason::Stop));
    }

    #[test]
    fn max_tokens_finishes_with_length_and_flushes() {
        let mut c = checker(&["world"], 2);
        assert_eq!(c.step(10, "a").unwrap().finish, None);
        let o = c.step(11, " wor").unwrap();
        assert_eq!((o.text.as_str(), o.finish), (" wor", Some(FinishReason::Length)));
        assert_eq!(c.generated(), 2);
        // A stop string completed by the last allowed token is still a stop.
        let mut c = checker(&["world"], 2);
        let (out, fin) = feed(&mut c, &["wor", "ld"]);
        assert_eq!((out.as_str(), fin.unwrap().finish), ("", Some(FinishReason::Stop)));
        // So is a stop token.
        let mut c = checker(&[], 1);
        assert_eq!(c.step(EOS, "").unwrap().finish, Some(FinishReason::Stop));
    }

    #[test]
    fn outside_finish_releases_held_text_once() {
        let mut c = checker(&["world"], 100);
        c.step(10, "wo").unwrap();
        let o = c.finish(FinishReason::Abort).unwrap();
        assert_eq!((o.text.as_str(), o.finish, o.matched), ("wo", Some(FinishReason::Abort), None));
        assert_eq!(c.finished(), Some(FinishReason::Abort));
        assert_eq!(c.finish(FinishReason::Error), Err(SamplingError::AlreadyFinished(FinishReason::Abort)));
    }

    #[test]
    fn new_rejects_invalid_params() {
        let p = SamplingParams { stop: vec![String::new()], ..SamplingParams::default() };
        assert!(matches!(StopChecker::new(&p, &[]), Err(SamplingError::InvalidParam { field: "stop", .. })));
    }
}
