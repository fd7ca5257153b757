//! JSON string encoding as Go writes it, shared by every place whose output must match
//! etcd's bytes: the JSON gateway, JWT claims, member records in the backend and the log.

use std::fmt::Write as _;

/// Whether `<`, `>`, `&`, U+2028 and U+2029 are written as `\uXXXX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Html {
    /// As Go's `encoding/json` does by default (the gateway, JWTs, stored members).
    Escape,
    /// As zap's JSON log encoder does, which leaves them alone.
    Keep,
}

/// Appends `s` to `out` as a quoted JSON string. Control characters other than `\n`, `\r`
/// and `\t` become `\u00XX`, as in the Go releases etcd 3.4 is built with (newer Go
/// writes `\b` and `\f` short).
pub fn push_string(out: &mut String, s: &str, html: Html) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if html == Html::Escape => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a quoted JSON string, escaped as Go's `encoding/json` escapes it.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_string(&mut out, s, Html::Escape);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_go_does() {
        assert_eq!(string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(string("<&>\u{2028}"), r#""\u003c\u0026\u003e\u2028""#);
        assert_eq!(
            string("\u{8}\u{c}\n\u{1f}é"),
            "\"\\u0008\\u000c\\n\\u001fé\""
        );
        let mut kept = String::new();
        push_string(&mut kept, "<a&b>\u{1}", Html::Keep);
        assert_eq!(kept, "\"<a&b>\\u0001\"");
    }

    #[test]
    fn round_trips_through_a_json_parser() {
        let s = "x<y>&z\"\\\u{0}\u{7f}\u{2029}";
        let parsed: String = serde_json::from_str(&string(s)).unwrap();
        assert_eq!(parsed, s);
    }
}
