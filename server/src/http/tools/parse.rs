//! Reading tool calls back from generated text, incrementally (for streams) or at once.
//!
//! [`ToolStream`] takes text as it is generated and gives back [`Piece`]s: content, the start
//! of a call (its id and function name), and the call's argument text piece by piece as it
//! grows, which is how OpenAI streams `delta.tool_calls`. Text that may still become a
//! marker is held back, so no marker is ever shown as content; trailing whitespace is held
//! until more content follows it (the newlines before a call or at the end are not sent as
//! content).
//!
//! A call is read in one of two ways. Written as the grammar writes it, `{"name": "<tool>",
//! "arguments": {` (any JSON whitespace between), it starts as soon as that header is read and
//! its arguments stream from their `{` to the matching `}`; whatever follows up to the closing
//! marker is markup. Written any other way (keys in another order, escapes in a key), the call
//! is held whole until its closing marker and then read with `serde_json`.
//!
//! Invariants:
//! - the pieces do not depend on how the text is split, so a reply read at once ([`parse`])
//!   and the same reply streamed give the same content and the same calls, argument text
//!   byte for byte;
//! - a call's arguments are the model's own text of the arguments object (from `{` to its
//!   `}`), not a re-serialization; a streamed call whose text ends early (`max_tokens`) or
//!   breaks JSON after its header keeps what was written, as OpenAI's streams do;
//! - a call is reported only if it names an offered tool and its arguments open an object; any
//!   other marked-up text (an unknown tool, arguments that are not an object, a body that is
//!   not JSON) comes back as content, markers included, except a call the text ends inside
//!   the header of (`max_tokens` during `{"name": ...`), which is markup cut short and dropped;
//! - calls are numbered from 0 in order; content is the input less calls and their markup,
//!   the whitespace just before a call and at the end.

use super::json_scan::{is_ws, member, string_end, Nesting};
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
    /// Call `index` (its position among the choice's calls) begins.
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// The next piece of call `index`'s argument text.
    Arguments {
        index: usize,
        text: String,
    },
}

/// An id no other call of this process has (`call_` + 24 hex digits).
pub fn call_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("call_{:016x}{:08x}", h.finish(), COUNTER.load(Ordering::Relaxed) as u32)
}

/// Where the reader is.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    /// Between calls: content, until an opening marker.
    Outside,
    /// After an opening marker, until the call's header is read or cannot be.
    Header,
    /// The arguments object of call `index`, streamed as it grows.
    Arguments { index: usize, nesting: Nesting },
    /// After the arguments object: up to the closing marker, the call's markup.
    Tail,
    /// A call not written in the header's form: held until its closing marker.
    Whole,
}

/// What the text after an opening marker says of the call's header.
enum Header {
    /// It may still become one.
    NeedMore,
    /// It cannot: the call is read whole.
    Other,
    /// `name` is an offered tool and its arguments object opens at this byte.
    Call { name: String, args_at: usize },
}

pub struct ToolStream {
    names: Vec<String>,
    buf: String,
    mode: Mode,
    held_space: String,
    /// Calls started so far.
    pub calls: usize,
}

/// Longest suffix of `s` that is a proper prefix of `marker` (text that may still become it).
fn held_suffix(s: &str, marker: &str) -> usize {
    (1..marker.len().min(s.len() + 1))
        .rev()
        .find(|&k| s.is_char_boundary(s.len() - k) && marker.starts_with(&s[s.len() - k..]))
        .unwrap_or(0)
}

/// Skips whitespace, then reads `lit`: `Ok` past it, `Err(NeedMore)` when `s` ends inside
/// it, `Err(Other)` when `s` says something else.
fn expect(s: &[u8], i: &mut usize, lit: &[u8]) -> Result<(), Header> {
    while *i < s.len() && is_ws(s[*i]) {
        *i += 1;
    }
    let have = &s[*i..s.len().min(*i + lit.len())];
    if !lit.starts_with(have) {
        return Err(Header::Other);
    }
    if have.len() < lit.len() {
        return Err(Header::NeedMore);
    }
    *i += lit.len();
    Ok(())
}

impl ToolStream {
    pub fn new(names: Vec<String>) -> Self {
        ToolStream { names, buf: String::new(), mode: Mode::Outside, held_space: String::new(), calls: 0 }
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

    /// Reads `{"name": "<tool>", "arguments": {` at the start of `s`.
    fn header(&self, s: &str) -> Header {
        match self.parse_header(s) {
            Ok(h) | Err(h) => h,
        }
    }

    fn parse_header(&self, s: &str) -> Result<Header, Header> {
        let b = s.as_bytes();
        let mut i = 0;
        expect(b, &mut i, b"{")?;
        expect(b, &mut i, b"\"name\"")?;
        expect(b, &mut i, b":")?;
        expect(b, &mut i, b"\"")?;
        let start = i - 1;
        let end = string_end(b, start).ok_or(Header::NeedMore)?;
        let name: String = serde_json::from_str(&s[start..end]).map_err(|_| Header::Other)?;
        if !self.names.contains(&name) {
            return Err(Header::Other);
        }
        i = end;
        expect(b, &mut i, b",")?;
        expect(b, &mut i, b"\"arguments\"")?;
        expect(b, &mut i, b":")?;
        expect(b, &mut i, b"{")?;
        Ok(Header::Call { name, args_at: i - 1 })
    }

    /// A call held whole (its body between the markers), as a start and its arguments.
    fn whole_call(&mut self, out: &mut Vec<Piece>, body: &str) -> bool {
        let v: Value = match serde_json::from_str(body.trim()) {
            Ok(v) => v,
            Err(_) => return false,
        };
        let Some(name) = v.get("name").and_then(Value::as_str).filter(|n| self.names.iter().any(|x| x == n)) else {
            return false;
        };
        let Some(args) = v.get("arguments").filter(|a| a.is_object()).and(member(body.trim(), "arguments")) else {
            return false;
        };
        let index = self.start_call(out, name.to_string());
        out.push(Piece::Arguments { index, text: args.to_string() });
        true
    }

    fn start_call(&mut self, out: &mut Vec<Piece>, name: String) -> usize {
        let index = self.calls;
        self.calls += 1;
        self.held_space.clear();
        out.push(Piece::CallStart { index, id: call_id(), name });
        index
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        // Each reader consumes what it can decide and says whether another may go on.
        while match self.mode.clone() {
            Mode::Outside => self.outside(&mut out),
            Mode::Header => self.after_open(&mut out),
            Mode::Arguments { index, nesting } => self.arguments(&mut out, index, nesting),
            Mode::Tail => self.tail(&mut out),
            Mode::Whole => self.whole(&mut out),
        } {}
        out
    }

    fn outside(&mut self, out: &mut Vec<Piece>) -> bool {
        if let Some(i) = self.buf.find(OPEN) {
            let before: String = self.buf.drain(..i + OPEN.len()).collect();
            self.content(out, &before[..i]);
            self.mode = Mode::Header;
            return true;
        }
        let keep = held_suffix(&self.buf, OPEN);
        let ready: String = self.buf.drain(..self.buf.len() - keep).collect();
        self.content(out, &ready);
        false
    }

    fn after_open(&mut self, out: &mut Vec<Piece>) -> bool {
        match self.header(&self.buf) {
            Header::Call { name, args_at } => {
                let index = self.start_call(out, name);
                self.buf.drain(..args_at);
                self.mode = Mode::Arguments { index, nesting: Nesting::default() };
            }
            // A closing marker inside an unfinished header (in the name) ends the call.
            Header::NeedMore if !self.buf.contains(CLOSE) => return false,
            Header::NeedMore | Header::Other => self.mode = Mode::Whole,
        }
        true
    }

    /// Sends the arguments read so far, up to the `}` that closes them.
    fn arguments(&mut self, out: &mut Vec<Piece>, index: usize, mut nesting: Nesting) -> bool {
        let b = self.buf.as_bytes();
        let mut i = 0;
        // (bytes that are arguments, bytes to drop after them, the mode after)
        let (end, skip, next) = loop {
            if i == b.len() {
                break (i, 0, None);
            }
            // A closing marker outside a string ends arguments the model left open.
            if b[i] == b'<' && nesting.outside_string() {
                let rest = &self.buf[i..];
                if rest.starts_with(CLOSE) {
                    break (i, CLOSE.len(), Some(Mode::Outside));
                }
                if CLOSE.starts_with(rest) {
                    break (i, 0, None); // held: it may still become the marker
                }
            }
            let closed = nesting.step(b[i]);
            i += 1;
            if closed {
                break (i, 0, Some(Mode::Tail));
            }
        };
        let text: String = self.buf.drain(..end).collect();
        self.buf.drain(..skip);
        if !text.is_empty() {
            out.push(Piece::Arguments { index, text });
        }
        self.mode = next.clone().unwrap_or(Mode::Arguments { index, nesting });
        next.is_some()
    }

    /// After the arguments: markup up to the closing marker (or the next call's opening one).
    fn tail(&mut self, out: &mut Vec<Piece>) -> bool {
        match (self.buf.find(CLOSE), self.buf.find(OPEN)) {
            (Some(c), o) if o.is_none_or(|o| c < o) => {
                self.buf.drain(..c + CLOSE.len());
            }
            (_, Some(o)) => {
                // The model opened the next call without closing this one.
                let tail: String = self.buf.drain(..o).collect();
                self.tail_content(out, &tail);
            }
            _ => return false,
        }
        self.mode = Mode::Outside;
        true
    }

    fn whole(&mut self, out: &mut Vec<Piece>) -> bool {
        let Some(i) = self.buf.find(CLOSE) else { return false };
        let body: String = self.buf.drain(..i + CLOSE.len()).collect();
        self.mode = Mode::Outside;
        if !self.whole_call(out, &body[..i]) {
            self.content(out, &format!("{OPEN}{body}"));
        }
        true
    }

    /// What follows a call's arguments when no closing marker came: the `}` and whitespace
    /// that close the call are markup, so is an unfinished closing marker; the rest is content.
    fn tail_content(&mut self, out: &mut Vec<Piece>, tail: &str) {
        let rest = tail.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '}');
        if !CLOSE.starts_with(rest) {
            self.content(out, rest);
        }
    }

    /// Whatever is still held: a call cut short inside its header is dropped (no call yet, and
    /// markup is never content), one held whole comes back as content; after a header, what
    /// was held of the arguments is the last of them.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        match std::mem::replace(&mut self.mode, Mode::Outside) {
            Mode::Outside => self.content(&mut out, &rest),
            Mode::Header => {}
            Mode::Whole => self.content(&mut out, &format!("{OPEN}{rest}")),
            Mode::Arguments { index, .. } => {
                if !rest.is_empty() {
                    out.push(Piece::Arguments { index, text: rest });
                }
            }
            Mode::Tail => self.tail_content(&mut out, &rest),
        }
        self.held_space.clear();
        out
    }
}

/// A whole reply: its content (trimmed, `None` when empty) and its calls.
pub fn parse(text: &str, names: Vec<String>) -> (Option<String>, Vec<ToolCallOut>) {
    let mut s = ToolStream::new(names);
    let mut content = String::new();
    let mut calls: Vec<ToolCallOut> = Vec::new();
    for p in s.push(text).into_iter().chain(s.finish()) {
        match p {
            Piece::Content(c) => content.push_str(&c),
            Piece::CallStart { id, name, .. } => calls.push(ToolCallOut {
                id,
                kind: "function",
                function: FunctionCallOut { name, arguments: String::new() },
            }),
            Piece::Arguments { index, text } => {
                if let Some(c) = calls.get_mut(index) {
                    c.function.arguments.push_str(&text);
                }
            }
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

    /// (name, arguments) of each call.
    fn calls_of(calls: &[ToolCallOut]) -> Vec<(String, String)> {
        calls.iter().map(|c| (c.function.name.clone(), c.function.arguments.clone())).collect()
    }

    #[test]
    fn calls_are_parsed_and_the_rest_is_content() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let (content, calls) = parse(text, names());
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(
            calls_of(&calls),
            [("get_weather".into(), "{\"city\": \"Paris\"}".into()), ("add".into(), "{\"a\": 1}".into())],
            "arguments as the model wrote them"
        );
        assert_ne!(calls[0].id, calls[1].id);
        let (content, calls) = parse("<tool_call>{\"name\": \"add\", \"arguments\": {}}</tool_call>", names());
        assert_eq!((content, calls.len()), (None, 1), "only calls: content is null");
    }

    #[test]
    fn calls_in_other_forms_are_read_whole_with_their_own_argument_text() {
        for (text, args) in [
            // keys in the other order, an extra key, an escaped key: held to the marker
            ("<tool_call>{\"arguments\": {\"a\": [1, 2]}, \"name\": \"add\"}</tool_call>", "{\"a\": [1, 2]}"),
            ("<tool_call>{\"name\": \"add\", \"id\": 7, \"arguments\": {\"a\":1} }</tool_call>", "{\"a\":1}"),
            ("<tool_call>{\"n\\u0061me\": \"add\", \"arguments\": {\"b\": \"}\"}}</tool_call>", "{\"b\": \"}\"}"),
            // the header's own whitespace and an escaped name: streamed
            ("<tool_call>\n{ \"name\" :\"\\u0061dd\" ,\n\"arguments\":\n{\"a\": 1}}\n</tool_call>", "{\"a\": 1}"),
        ] {
            let (content, calls) = parse(text, names());
            assert_eq!(content, None, "{text}");
            assert_eq!(calls_of(&calls), [("add".into(), args.into())], "{text}");
        }
    }

    #[test]
    fn a_started_call_keeps_what_was_written() {
        for (text, args, content) in [
            // cut short by max_tokens
            ("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b", "{\"a\": 1, \"b", None),
            // no closing marker after a complete call
            ("<tool_call>\n{\"name\": \"add\", \"arguments\": {}}", "{}", None),
            ("<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_", "{}", None),
            ("<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\nSo that is it.", "{}", Some("So that is it.")),
            // a marker inside a string is argument text; outside one it ends open arguments
            (
                "<tool_call>{\"name\": \"add\", \"arguments\": {\"s\": \"</tool_call>\"}}</tool_call>",
                "{\"s\": \"</tool_call>\"}",
                None,
            ),
            (
                "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1\n</tool_call>\nafter",
                "{\"a\": 1\n",
                Some("after"),
            ),
            ("<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1 <b> 2}}</tool_call>", "{\"a\": 1 <b> 2}", None),
        ] {
            let (got_content, calls) = parse(text, names());
            assert_eq!(calls_of(&calls), [("add".into(), args.into())], "{text}");
            assert_eq!(got_content.as_deref(), content, "{text}");
        }
    }

    #[test]
    fn a_call_cut_short_inside_its_header_is_dropped() {
        for cut in [
            "<tool_call>",
            "<tool_call>\n{\"na",
            "<tool_call>\n{\"name\": \"ad",
            "<tool_call>{\"name\": \"add\", \"argu",
        ] {
            let (content, calls) = parse(&format!("Checking.\n{cut}"), names());
            assert_eq!((content.as_deref(), calls.len()), (Some("Checking."), 0), "{cut}");
        }
        let (content, calls) =
            parse("<tool_call>{\"name\": \"add\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name", names());
        assert_eq!(
            (content, calls_of(&calls)),
            (None, vec![("add".into(), "{}".into())]),
            "the parallel call cut short"
        );
    }

    #[test]
    fn bad_calls_stay_content() {
        for text in [
            "<tool_call>\n{\"name\": \"rm_rf\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"add\", \"arguments\": \"1, 2\"}\n</tool_call>",
            "<tool_call>\nnot json\n</tool_call>",
            "<tool_call>\n{\"name\": \"add\"}",
            "<tool_call>\n{\"arguments\": {}, \"name\": \"add\"",
            "<tool_call>\n{\"name\": \"a</tool_call>dd\", \"arguments\": {}}",
            "plain text with a < sign and <tool_ca",
        ] {
            let (content, calls) = parse(text, names());
            assert!(calls.is_empty(), "{text}");
            assert_eq!(content.as_deref(), Some(text.trim()), "nothing is lost");
        }
    }

    /// Everything a stream of `text` in pieces of `step` characters says: content, each call
    /// (name, arguments), the argument pieces of each call. Content shows no marker unless the
    /// text has a call that is not one (`markup_in_content`).
    fn stream(text: &str, step: usize, markup_in_content: bool) -> (String, Vec<(String, String)>, Vec<usize>) {
        let chars: Vec<char> = text.chars().collect();
        let mut s = ToolStream::new(names());
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        let mut pieces: Vec<usize> = Vec::new();
        let mut all = Vec::new();
        for chunk in chars.chunks(step) {
            all.extend(s.push(&chunk.iter().collect::<String>()));
        }
        all.extend(s.finish());
        for p in all {
            match p {
                Piece::Content(c) => {
                    let marker = c.contains("<tool") || c.contains("</tool");
                    assert!(markup_in_content || !marker, "step {step}: {c:?}");
                    content.push_str(&c);
                }
                Piece::CallStart { index, name, id } => {
                    assert_eq!(index, calls.len(), "step {step}: calls are numbered in order");
                    assert!(id.starts_with("call_"));
                    calls.push((name, String::new()));
                    pieces.push(0);
                }
                Piece::Arguments { index, text } => {
                    assert_eq!(index + 1, calls.len(), "step {step}: arguments of the call being read");
                    assert!(!text.is_empty());
                    calls[index].1.push_str(&text);
                    pieces[index] += 1;
                }
            }
        }
        (content, calls, pieces)
    }

    #[test]
    fn streaming_in_any_split_gives_the_same_reply_and_never_shows_a_marker() {
        // (text, whether each of its calls is read by its header, so streamed as it grows)
        let texts: [(&str, &[bool]); 5] = [
            ("Hi <b>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": [2, {\"c\": \"}]\\\"\"}]}}\n</tool_call>\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>\nDone.", &[true, true]),
            ("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich </tool_call>\"}}\n</tool_call>", &[true]),
            ("<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"add\"}</tool_call> and <tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>", &[false]),
            ("<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 2\n</tool_call>x", &[true, true]),
            ("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": \"é\", \"b\": 1", &[true]),
        ];
        for (text, streamed) in texts {
            let (want_content, want_calls) = parse(text, names());
            for step in [1, 2, 3, 5, 7, 11, 64, 1000] {
                let (content, calls, pieces) = stream(text, step, text.contains("nope"));
                let content = Some(content.trim().to_string()).filter(|c| !c.is_empty() || calls.is_empty());
                assert_eq!(content, want_content, "step {step}: {text}");
                assert_eq!(calls, calls_of(&want_calls), "step {step}: {text}");
                if step == 1 {
                    // Streamed as generated: a call read by its header sends its arguments in
                    // as many pieces as it has characters; one held whole, in one piece.
                    let want: Vec<usize> =
                        calls.iter().zip(streamed).map(|(c, &s)| if s { c.1.chars().count() } else { 1 }).collect();
                    assert_eq!(pieces, want, "{text}");
                }
            }
        }
    }
}
