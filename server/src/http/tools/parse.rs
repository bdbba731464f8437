//! Reading tool calls back from generated text, incrementally (for streams) or at once.
//!
//! [`ToolStream`] takes text as it is generated and gives back pieces: content, or whole tool
//! calls once their closing marker arrived. Text that may still become an opening marker is
//! held back, so no marker is ever shown as content; trailing whitespace is held until more
//! content follows it (the newlines before a call or at the end are not sent as content).
//!
//! Invariants: the concatenation of content pieces plus each call's raw text is the input less
//! the whitespace just before a call and at the end (a call that does not parse, names an
//! unknown tool or has non-object arguments comes back as content, markers included); the
//! pieces do not depend on how the text is split; calls are numbered from 0 in order.

use crate::protocol::tools::{FunctionCallOut, ToolCallOut};
use crate::structured::spec::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use serde_json::Value;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Content(String),
    /// A call and its position among the choice's calls.
    Call(usize, ToolCallOut),
}

/// An id no other call of this process has (`call_` + 24 hex digits).
pub fn call_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("call_{:016x}{:08x}", h.finish(), COUNTER.load(Ordering::Relaxed) as u32)
}

pub struct ToolStream {
    names: Vec<String>,
    buf: String,
    inside: bool,
    held_space: String,
    pub calls: usize,
}

/// Longest suffix of `s` that is a proper prefix of `marker` (text that may still become it).
fn held_suffix(s: &str, marker: &str) -> usize {
    (1..marker.len().min(s.len() + 1))
        .rev()
        .find(|&k| s.is_char_boundary(s.len() - k) && marker.starts_with(&s[s.len() - k..]))
        .unwrap_or(0)
}

impl ToolStream {
    pub fn new(names: Vec<String>) -> Self {
        ToolStream { names, buf: String::new(), inside: false, held_space: String::new(), calls: 0 }
    }

    /// Emits `text` but its trailing whitespace, which waits for what follows: more content
    /// (then it is sent), a call or the end (then it is dropped). So streamed and one-shot
    /// parsing agree however the text is split.
    fn content(&mut self, out: &mut Vec<Piece>, text: &str) {
        let body = text.trim_end();
        if !body.is_empty() {
            let mut t = std::mem::take(&mut self.held_space);
            t.push_str(body);
            out.push(Piece::Content(t));
        }
        self.held_space.push_str(&text[body.len()..]);
    }

    /// A call's body (between the markers) as a reply's tool call, if it is one.
    fn call(&self, body: &str) -> Option<ToolCallOut> {
        let v: Value = serde_json::from_str(body.trim()).ok()?;
        let name = v.get("name")?.as_str()?;
        let args = v.get("arguments")?;
        if !self.names.iter().any(|n| n == name) || !args.is_object() {
            return None;
        }
        Some(ToolCallOut {
            id: call_id(),
            kind: "function",
            function: FunctionCallOut { name: name.to_string(), arguments: args.to_string() },
        })
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            if !self.inside {
                if let Some(i) = self.buf.find(OPEN) {
                    let before: String = self.buf.drain(..i + OPEN.len()).collect();
                    self.content(&mut out, &before[..i]);
                    self.inside = true;
                    continue;
                }
                let keep = held_suffix(&self.buf, OPEN);
                let ready: String = self.buf.drain(..self.buf.len() - keep).collect();
                self.content(&mut out, &ready);
                return out;
            }
            let Some(i) = self.buf.find(CLOSE) else { return out };
            let body: String = self.buf.drain(..i + CLOSE.len()).collect();
            self.inside = false;
            match self.call(&body[..i]) {
                Some(c) => {
                    self.held_space.clear();
                    out.push(Piece::Call(self.calls, c));
                    self.calls += 1;
                }
                None => self.content(&mut out, &format!("{OPEN}{body}")),
            }
        }
    }

    /// Whatever is still held: an unfinished call comes back as content.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        let text = if self.inside { format!("{OPEN}{rest}") } else { rest };
        self.inside = false;
        self.content(&mut out, &text);
        self.held_space.clear();
        out
    }
}

/// A whole reply: its content (trimmed, `None` when empty) and its calls.
pub fn parse(text: &str, names: Vec<String>) -> (Option<String>, Vec<ToolCallOut>) {
    let mut s = ToolStream::new(names);
    let mut content = String::new();
    let mut calls = Vec::new();
    for p in s.push(text).into_iter().chain(s.finish()) {
        match p {
            Piece::Content(c) => content.push_str(&c),
            Piece::Call(_, c) => calls.push(c),
        }
    }
    let content = content.trim();
    ((!content.is_empty() || calls.is_empty()).then(|| content.to_string()), calls)
}

// The markers the grammar writes are the ones parsed here.
const _: () = assert!(TOOL_CALL_OPEN.len() == OPEN.len() + 1 && TOOL_CALL_CLOSE.len() == CLOSE.len() + 1);

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["get_weather".into(), "add".into()]
    }

    #[test]
    fn calls_are_parsed_and_the_rest_is_content() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let (content, calls) = parse(text, names());
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(calls[0].function.arguments, "{\"city\":\"Paris\"}");
        assert_ne!(calls[0].id, calls[1].id);
        let (content, calls) = parse("<tool_call>{\"name\": \"add\", \"arguments\": {}}</tool_call>", names());
        assert_eq!((content, calls.len()), (None, 1), "only calls: content is null");
    }

    #[test]
    fn bad_calls_stay_content() {
        for text in [
            "<tool_call>\n{\"name\": \"rm_rf\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"add\", \"arguments\": \"1, 2\"}\n</tool_call>",
            "<tool_call>\nnot json\n</tool_call>",
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {}}",
            "plain text with a < sign and <tool_ca",
        ] {
            let (content, calls) = parse(text, names());
            assert!(calls.is_empty(), "{text}");
            assert_eq!(content.as_deref(), Some(text.trim()), "nothing is lost");
        }
    }

    #[test]
    fn streaming_in_any_split_gives_the_same_pieces_and_never_shows_a_marker() {
        let text = "Hi <b>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>\nDone.";
        let (want_content, want_calls) = parse(text, names());
        let chars: Vec<char> = text.chars().collect();
        for step in [1, 2, 3, 5, 7, 11, 64, 1000] {
            let mut s = ToolStream::new(names());
            let mut content = String::new();
            let mut calls = Vec::new();
            for chunk in chars.chunks(step) {
                let piece: String = chunk.iter().collect();
                for p in s.push(&piece) {
                    match p {
                        Piece::Content(c) => {
                            assert!(!c.contains("<tool") && !c.contains("</tool"), "step {step}: {c:?}");
                            content.push_str(&c);
                        }
                        Piece::Call(i, c) => {
                            assert_eq!(i, calls.len(), "step {step}: calls are numbered in order");
                            calls.push(c.function)
                        }
                    }
                }
            }
            for p in s.finish() {
                if let Piece::Content(c) = p {
                    content.push_str(&c);
                }
            }
            assert_eq!(Some(content.trim().to_string()), want_content, "step {step}");
            assert_eq!(calls, want_calls.iter().map(|c| c.function.clone()).collect::<Vec<_>>(), "step {step}");
        }
    }
}
