//! Percent-encoding (`%XX`, upper-case hex): the one helper every connector uses. Which bytes
//! stay as they are is the caller's choice (a file name, an S3 key, a header value differ).

use std::fmt::Write as _;

/// `bytes` with every byte `keep` refuses written as `%XX`.
#[must_use]
pub fn encode(bytes: &[u8], keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if keep(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Undoes [`encode`]; a `%` not followed by two hex digits is kept as it is.
#[must_use]
pub fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_kept_is_escaped_and_decodes_back() {
        let all: Vec<u8> = (0..=255).collect();
        let text = encode(&all, |b| b.is_ascii_alphanumeric());
        assert!(text.starts_with("%00%01"));
        assert!(text.contains("%2F") && text.contains("AB"));
        assert_eq!(decode(&text), all);
        assert_eq!(decode("100%"), b"100%");
        assert_eq!(decode("%zz%4"), b"%zz%4");
    }
}
