//! Text from outside — plugin file names, what a plugin prints or answers — made
//! fit for a log line or a stored reason: control characters are escaped, so a
//! newline in a file name cannot end a log line and forge the next one, and long
//! text is cut at a character boundary.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with control characters (and the Unicode line separators) escaped.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn unsafe_char(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `s` cut to at most `max` bytes (at a character boundary), with `…` when cut.
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_split_a_line() {
        assert_eq!(escape("ok.wasm"), "ok.wasm");
        assert_eq!(
            escape("a\nINFO forged\r\u{1b}[31m\u{2028}"),
            "a\\nINFO forged\\r\\u{1b}[31m\\u{2028}"
        );
    }

    #[test]
    fn cuts_at_a_character_boundary() {
        assert_eq!(cut("short".into(), 10), "short");
        let c = cut("ééééé".into(), 6);
        assert!(c.len() <= 6 && c.ends_with('…'), "{c}");
        assert_eq!(cut("x".repeat(100), 10).len(), 10);
    }
}
