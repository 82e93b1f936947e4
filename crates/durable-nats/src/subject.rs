//! Subject safety: every logical name becomes exactly one subject token.
//!
//! Names reaching this module are already validated ([`durable_core::validate_name`]: the
//! characters `[A-Za-z0-9_-.:/]`), but the encoding does not rely on it: anything that is not
//! `[A-Za-z0-9-]` is escaped with `_`, so a token can never contain `.`, `*`, `>` or whitespace,
//! and two different names never share a token (the escape is injective and reversible).

/// Encode `name` as one subject token (also a valid consumer name and KV key token).
pub(crate) fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(b as char),
            b'_' => out.push_str("__"),
            b'.' => out.push_str("_d"),
            b'/' => out.push_str("_s"),
            b':' => out.push_str("_c"),
            other => {
                out.push_str("_x");
                out.push_str(&format!("{other:02x}"));
            }
        }
    }
    out
}

/// Decode a [`token`]; `None` if it was not produced by [`token`].
pub(crate) fn untoken(token: &str) -> Option<String> {
    let mut out = Vec::with_capacity(token.len());
    let mut bytes = token.bytes();
    while let Some(b) = bytes.next() {
        if b != b'_' {
            out.push(b);
            continue;
        }
        match bytes.next()? {
            b'_' => out.push(b'_'),
            b'd' => out.push(b'.'),
            b's' => out.push(b'/'),
            b'c' => out.push(b':'),
            b'x' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `s` is usable as a subject prefix: dot-separated tokens of `[A-Za-z0-9_-]`.
pub(crate) fn valid_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// Whether `s` is usable as a stream or bucket name.
pub(crate) fn valid_stream_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_carry_subject_syntax_and_round_trip() {
        for name in [
            "a",
            "ns/run/abc/events",
            "ns.run.abc",
            "a_b",
            "a__b",
            "_d",
            "x.*.>",
            "sp ace\ttab",
            "ünï",
            "a:b",
        ] {
            let t = token(name);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{t}"
            );
            assert_eq!(untoken(&t).as_deref(), Some(name));
        }
        assert_ne!(token("a.b"), token("a_db"));
        assert_ne!(token("a/b"), token("a.b"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix("durable"));
        assert!(valid_prefix("app.durable-1"));
        assert!(!valid_prefix("a..b"));
        assert!(!valid_prefix("a.*"));
        assert!(!valid_prefix("a.>"));
        assert!(!valid_prefix("a b"));
        assert!(!valid_prefix(""));
    }
}
