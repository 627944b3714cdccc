//! Request paths in one normal form before they are routed, so that every spelling of a path
//! reaches the route that owns it (and never another link's shorter prefix or catch-all).
//!
//! [`normalize`] (RFC 3986, sections 6.2.2 and 5.2.4):
//! - collapses empty segments (`//b/x` is `/b/x`);
//! - resolves `.` and `..` segments (`/b/../a` is `/a`); a `..` above the root is refused;
//! - decodes percent-encoded unreserved characters (`%62` is `b`, `%7E` is `~`) and writes every
//!   other percent-encoding with upper-case hex digits (`%c3%a9` is `%C3%A9`);
//! - refuses an encoded `/` or `\` (`%2F`, `%5C`), an encoded NUL (`%00`), a segment that is a
//!   dot segment once decoded (`%2E`, `.%2e`) and malformed percent-encoding.
//!
//! A trailing `/` is kept. Routes match the normal form case-insensitively (see
//! [`crate::router`]); the record key is the normal form as sent.

use std::fmt::Write as _;

/// Why a request path was refused (answered `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path does not start with `/`")]
    NotAbsolute,
    /// A percent-encoded character that would change how the path splits into segments.
    #[error("the path encodes `{0}` (`%{1:02X}`), which is refused: send it unencoded, or not at all")]
    EncodedDelimiter(char, u8),
    /// A segment that decodes to `.` or `..`.
    #[error("the path has a percent-encoded dot segment")]
    EncodedDotSegment,
    /// More `..` segments than there are segments before them.
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
    /// A `%` not followed by two hex digits.
    #[error("the path has a malformed percent-encoding")]
    BadEncoding,
}

/// The normal form of `path` (see the module docs), or why it has none.
pub fn normalize(path: &str) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw in rest.split('/') {
        let segment = decode_segment(raw)?;
        trailing_slash = true;
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() || trailing_slash {
        normal.push('/');
    }
    Ok(normal)
}

/// One segment with unreserved characters decoded and other encodings in upper-case hex.
fn decode_segment(raw: &str) -> Result<String, PathError> {
    if !raw.contains('%') {
        return Ok(raw.to_string());
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let next = raw[i..].find('%').map_or(raw.len(), |n| i + n);
            out.push_str(&raw[i..next]);
            i = next;
            continue;
        }
        let hex = raw.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
        let byte = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEncoding)?;
        match byte {
            b'/' | b'\\' | 0 => return Err(PathError::EncodedDelimiter(char::from(byte), byte)),
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => out.push(char::from(b)),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
        i += 3;
    }
    if out == "." || out == ".." {
        return Err(PathError::EncodedDotSegment);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_has_one_normal_form() {
        for (raw, normal) in [
            ("/", "/"),
            ("//", "/"),
            ("/b/x", "/b/x"),
            ("//b/x", "/b/x"),
            ("/b//x", "/b/x"),
            ("/b/./x", "/b/x"),
            ("/b/../a", "/a"),
            ("/b/x/..", "/b/"),
            ("/b/x/.", "/b/x/"),
            ("/b/x/", "/b/x/"),
            ("/%62/x", "/b/x"),
            ("/b%2dx/%7e", "/b-x/~"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/B/X", "/B/X"),
            ("/..b/.x", "/..b/.x"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (raw, err) in [
            ("/b%2Fx", PathError::EncodedDelimiter('/', 0x2F)),
            ("/b%2fx", PathError::EncodedDelimiter('/', 0x2F)),
            ("/b%5cx", PathError::EncodedDelimiter('\\', 0x5C)),
            ("/b%00", PathError::EncodedDelimiter('\0', 0)),
            ("/b/%2E%2E/a", PathError::EncodedDotSegment),
            ("/b/.%2e/a", PathError::EncodedDotSegment),
            ("/%2e/a", PathError::EncodedDotSegment),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/a%zz", PathError::BadEncoding),
            ("/a%4", PathError::BadEncoding),
            ("/a%", PathError::BadEncoding),
            ("/a%é0", PathError::BadEncoding),
            ("*", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize(raw), Err(err), "{raw}");
        }
    }
}
