//! Just enough JSON lexing to read a tool call while it is generated: where a string literal
//! ends, when a container's bracket closes (fed one byte at a time, as text arrives), and where
//! a top-level member's value lies in a complete object.
//!
//! Invariants: these read bytes, not characters; every position they return is just after an
//! ASCII byte (a quote or a bracket) or at the end of the input, so it is a `char` boundary of
//! the text. They never validate: a caller that needs valid JSON parses it with `serde_json`.

/// JSON's insignificant whitespace.
pub fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The index just after the string literal that opens at `s[i] == b'"'`, or `None` when `s`
/// ends first.
pub fn string_end(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Bracket depth of an object or array read one byte at a time, brackets inside strings
/// ignored. Starts outside any container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Nesting {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Nesting {
    /// Takes the next byte; true when it closes the outermost container (depth back to 0).
    pub fn step(&mut self, b: u8) -> bool {
        if self.in_string {
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return false;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' if self.depth > 0 => {
                self.depth -= 1;
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }

    /// Whether the last byte read was outside any string literal.
    pub fn outside_string(&self) -> bool {
        !self.in_string
    }
}

/// The index just after the JSON value that starts at `s[i]`, or `None` when `s` ends first.
fn value_end(s: &[u8], i: usize) -> Option<usize> {
    match s.get(i)? {
        b'"' => string_end(s, i),
        b'{' | b'[' => {
            let mut n = Nesting::default();
            (i..s.len()).find(|&j| n.step(s[j])).map(|j| j + 1)
        }
        _ => Some((i..s.len()).find(|&j| is_ws(s[j]) || matches!(s[j], b',' | b'}' | b']')).unwrap_or(s.len())),
    }
}

/// The text of the value of `key` in the JSON object `text` (the last such member, as
/// `serde_json` keeps the last of duplicate keys), exactly as written. `text` must be a valid
/// JSON object; otherwise the answer is `None` or meaningless.
pub fn member<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let s = text.as_bytes();
    let skip = |mut i: usize| {
        while i < s.len() && is_ws(s[i]) {
            i += 1;
        }
        i
    };
    let mut i = skip(0);
    if s.get(i) != Some(&b'{') {
        return None;
    }
    let mut found = None;
    i += 1;
    loop {
        i = skip(i);
        if s.get(i) != Some(&b'"') {
            return found; // `}`: the object's end
        }
        let k_end = string_end(s, i)?;
        let name: String = serde_json::from_str(&text[i..k_end]).ok()?;
        i = skip(k_end);
        if s.get(i) != Some(&b':') {
            return None;
        }
        let v = skip(i + 1);
        let v_end = value_end(s, v)?;
        if name == key {
            found = Some(&text[v..v_end]);
        }
        i = skip(v_end);
        if s.get(i) == Some(&b',') {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_end_after_their_closing_quote_only() {
        let s = br#""a\"b\\" rest"#;
        assert_eq!(string_end(s, 0), Some(8));
        assert_eq!(string_end(br#""open \""#, 0), None);
    }

    #[test]
    fn nesting_ignores_brackets_inside_strings() {
        let text = br#"{"a": "}]\"{", "b": [1, {"c": "}"}]} tail"#;
        let mut n = Nesting::default();
        let closed: Vec<usize> = (0..text.len()).filter(|&i| n.step(text[i])).collect();
        assert_eq!(closed, vec![text.len() - 6]);
        assert!(n.outside_string());
    }

    #[test]
    fn members_are_read_as_written() {
        let text = "{ \"name\" : \"add\",\n \"arguments\":{\"a\": [1, \"}\"], \"b\": {}} , \"x\": 2.50e1 }";
        assert_eq!(member(text, "arguments"), Some("{\"a\": [1, \"}\"], \"b\": {}}"));
        assert_eq!(member(text, "name"), Some("\"add\""));
        assert_eq!(member(text, "x"), Some("2.50e1"));
        assert_eq!(member(text, "y"), None);
        assert_eq!(member(r#"{"\u0061": 1, "a": {"k": true}}"#, "a"), Some(r#"{"k": true}"#), "the last, keys decoded");
        assert_eq!(member("[1]", "a"), None);
    }
}
