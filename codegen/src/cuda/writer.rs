//! [`CWriter`]: a small structured writer for C-like source text.
//!
//! The emitter builds code only through these calls (lines, comments, blocks); it never
//! searches or rewrites text it has already written.
//!
//! Invariants:
//! - indentation is two spaces per open block, and every line ends with `\n`;
//! - [`CWriter::open`] and [`CWriter::close`] nest; [`CWriter::finish`] fails if they do not
//!   balance, so a structural bug in the emitter is an error, not malformed CUDA;
//! - comment text can never end a comment early or swallow the next line: each input line
//!   becomes its own `//` line, and a trailing backslash (which would splice the next source
//!   line into the comment) is followed by a marker character.

use std::fmt;

/// A structural error of the writer (unbalanced blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterError(pub String);

impl fmt::Display for WriterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WriterError {}

#[derive(Debug, Default)]
pub struct CWriter {
    out: String,
    depth: usize,
    /// Set by a `close` without a matching `open`; reported by `finish`.
    underflow: bool,
}

impl CWriter {
    pub fn new() -> CWriter {
        CWriter::default()
    }

    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }

    /// One line of code at the current indentation.
    pub fn line(&mut self, code: &str) {
        self.indent();
        self.out.push_str(code);
        self.out.push('\n');
    }

    /// A line of code followed by a `//` comment on the same line.
    pub fn line_c(&mut self, code: &str, comment: &str) {
        self.indent();
        self.out.push_str(code);
        self.out.push_str("  // ");
        push_comment_text(&mut self.out, first_line(comment));
        self.out.push('\n');
    }

    /// A comment; each line of `text` becomes one `//` line.
    pub fn comment(&mut self, text: &str) {
        // `lines()` of "" is empty, but an empty comment is a deliberate spacer line.
        let lines: Vec<&str> = if text.is_empty() { vec![""] } else { text.lines().collect() };
        for l in lines {
            self.indent();
            if l.is_empty() {
                self.out.push_str("//");
            } else {
                self.out.push_str("// ");
                push_comment_text(&mut self.out, l);
            }
            self.out.push('\n');
        }
    }

    pub fn blank(&mut self) {
        self.out.push('\n');
    }

    /// `head {` and one level deeper.
    pub fn open(&mut self, head: &str) {
        self.indent();
        self.out.push_str(head);
        self.out.push_str(" {\n");
        self.depth += 1;
    }

    /// `}` one level shallower.
    pub fn close(&mut self) {
        self.close_with("");
    }

    /// `}` followed by `tail` (e.g. `;` after a struct).
    pub fn close_with(&mut self, tail: &str) {
        if self.depth == 0 {
            self.underflow = true;
            return;
        }
        self.depth -= 1;
        self.indent();
        self.out.push('}');
        self.out.push_str(tail);
        self.out.push('\n');
    }

    /// A function head with one parameter per line: `head(\n    p1,\n    p2) {`, then one
    /// level deeper. Used for kernel signatures, whose parameter lists are long.
    pub fn open_fn(&mut self, head: &str, params: &[String]) {
        self.indent();
        self.out.push_str(head);
        self.out.push('(');
        if params.is_empty() {
            self.out.push_str(") {\n");
        } else {
            self.out.push('\n');
            for (i, p) in params.iter().enumerate() {
                self.indent();
                self.out.push_str("    ");
                self.out.push_str(p);
                self.out.push_str(if i + 1 == params.len() { ") {\n" } else { ",\n" });
            }
        }
        self.depth += 1;
    }

    /// Verbatim text (fixed source such as the prelude), re-indented to the current depth.
    pub fn text(&mut self, text: &str) {
        for l in text.lines() {
            if l.is_empty() {
                self.out.push('\n');
            } else {
                self.line(l);
            }
        }
    }

    /// The text written, or an error if blocks were left open or closed too often.
    pub fn finish(self) -> Result<String, WriterError> {
        if self.underflow {
            return Err(WriterError("a block was closed that was never opened".into()));
        }
        if self.depth != 0 {
            return Err(WriterError(format!("{} block(s) left open", self.depth)));
        }
        Ok(self.out)
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Append comment text, neutralising what could escape a `//` comment: control characters
/// (a carriage return would start a new line for some readers) become spaces, and a trailing
/// backslash gets a marker so it cannot splice the following source line into the comment.
fn push_comment_text(out: &mut String, text: &str) {
    for ch in text.chars() {
        out.push(if ch.is_control() { ' ' } else { ch });
    }
    if text.ends_with('\\') {
        out.push('~');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_indent_and_balance() {
        let mut w = CWriter::new();
        w.open("for (int i = 0; i < 4; ++i)");
        w.line_c("x += i;", "accumulate");
        w.close();
        assert_eq!(w.finish().unwrap(), "for (int i = 0; i < 4; ++i) {\n  x += i;  // accumulate\n}\n");
    }

    #[test]
    fn unbalanced_is_an_error() {
        let mut w = CWriter::new();
        w.open("if (a)");
        assert!(w.finish().is_err());
        let mut w = CWriter::new();
        w.close();
        assert!(w.finish().is_err());
    }

    #[test]
    fn comments_cannot_escape() {
        let mut w = CWriter::new();
        w.comment("path C:\\dir\\\nsecond\rline");
        w.line_c("x;", "two\nlines");
        let s = w.finish().unwrap();
        assert_eq!(s, "// path C:\\dir\\~\n// second line\nx;  // two\n");
    }

    #[test]
    fn fn_heads_list_params() {
        let mut w = CWriter::new();
        w.open_fn("void f", &["int a".into(), "int b".into()]);
        w.close();
        assert_eq!(w.finish().unwrap(), "void f(\n    int a,\n    int b) {\n}\n");
    }
}
