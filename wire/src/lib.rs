//! The wire form of a payload: how a record's bytes travel between providers and pipeline steps.
//!
//! `sluice:pipeline` carries records between providers and steps as `wire-message`s, whose
//! `payload` is a `string` instead of a `list<u8>`. wRPC encodes both the same way (a LEB128 length,
//! then the bytes), but a wasmCloud 1.x host reads and writes a `string` in one piece while it
//! handles a `list<u8>` one element at a time, which made the host the bottleneck of a pipeline.
//!
//! The mapping is fixed and reversible: each payload byte becomes the char with the same code
//! point (ISO 8859-1, Latin-1). Bytes below `0x80` stay one UTF-8 byte, so ASCII and JSON payloads
//! are unchanged on the wire (and map by a plain copy); bytes from `0x80` take two. A string holding
//! a char above U+00FF is not a wire form ([`NotWireForm`]).
//!
//! This crate is the one place the mapping lives: `provider-core`, the trusted `in` component and
//! the test hosts all use it. It has no dependencies, so Wasm guests can depend on it by path.

#![forbid(unsafe_code)]

use std::fmt;

/// A string that is not the wire form of any payload: it holds a char above U+00FF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotWireForm {
    /// The first char above U+00FF.
    pub found: char,
    /// Its byte offset in the string.
    pub offset: usize,
}

impl fmt::Display for NotWireForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "payload is not in the wire form (one char U+0000..=U+00FF per byte): U+{:04X} at byte {}",
            u32::from(self.found),
            self.offset
        )
    }
}

impl std::error::Error for NotWireForm {}

/// The wire form of `bytes`. ASCII is copied as it is.
#[must_use]
pub fn encode(bytes: &[u8]) -> String {
    if bytes.is_ascii() {
        return String::from_utf8(bytes.to_vec()).expect("ASCII is UTF-8");
    }
    latin1(bytes)
}

/// The wire form of `bytes`, reusing their buffer when they are ASCII.
#[must_use]
pub fn encode_vec(bytes: Vec<u8>) -> String {
    if bytes.is_ascii() {
        return String::from_utf8(bytes).expect("ASCII is UTF-8");
    }
    latin1(&bytes)
}

fn latin1(bytes: &[u8]) -> String {
    let mut wire = String::with_capacity(wire_len(bytes));
    wire.extend(bytes.iter().map(|&b| char::from(b)));
    wire
}

/// The bytes `wire` carries. ASCII is copied as it is.
///
/// # Errors
/// [`NotWireForm`] when `wire` holds a char above U+00FF.
pub fn decode(wire: &str) -> Result<Vec<u8>, NotWireForm> {
    if wire.is_ascii() {
        return Ok(wire.as_bytes().to_vec());
    }
    unlatin1(wire)
}

/// The bytes `wire` carries, reusing its buffer when it is ASCII.
///
/// # Errors
/// [`NotWireForm`] when `wire` holds a char above U+00FF.
pub fn decode_string(wire: String) -> Result<Vec<u8>, NotWireForm> {
    if wire.is_ascii() {
        return Ok(wire.into_bytes());
    }
    unlatin1(&wire)
}

fn unlatin1(wire: &str) -> Result<Vec<u8>, NotWireForm> {
    let mut bytes = Vec::with_capacity(wire.len());
    for (offset, c) in wire.char_indices() {
        bytes.push(u8::try_from(c).map_err(|_| NotWireForm { found: c, offset })?);
    }
    Ok(bytes)
}

/// How many bytes the wire form of `bytes` takes: one per byte below `0x80`, two per other byte.
#[must_use]
pub fn wire_len(bytes: &[u8]) -> usize {
    bytes.len() + bytes.iter().filter(|&&b| b >= 0x80).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let wire = encode(&all);
        assert_eq!(wire.chars().count(), 256);
        assert_eq!(wire.len(), wire_len(&all));
        assert_eq!(wire.len(), 128 + 2 * 128);
        for (byte, c) in all.iter().zip(wire.chars()) {
            assert_eq!(u32::from(c), u32::from(*byte));
        }
        assert_eq!(decode(&wire).unwrap(), all);
        assert_eq!(decode_string(encode_vec(all.clone())).unwrap(), all);
    }

    #[test]
    fn ascii_is_unchanged() {
        let json = br#"{"device":"plc-1","temp":21.5}"#;
        let wire = encode(json);
        assert_eq!(wire.as_bytes(), json);
        assert_eq!(wire_len(json), json.len());
        assert_eq!(encode_vec(json.to_vec()).as_bytes(), json);
        assert_eq!(decode(&wire).unwrap(), json);
        assert_eq!(decode_string(wire).unwrap(), json);
        assert_eq!(encode(b""), "");
        assert_eq!(decode("").unwrap(), b"");
    }

    #[test]
    fn latin1_text_is_its_code_points() {
        assert_eq!(encode(&[0x63, 0x61, 0x66, 0xe9]), "café");
        assert_eq!(decode("café").unwrap(), [0x63, 0x61, 0x66, 0xe9]);
    }

    #[test]
    fn a_char_above_u00ff_is_refused() {
        let err = decode("ok \u{0100} no").unwrap_err();
        assert_eq!(
            err,
            NotWireForm {
                found: '\u{0100}',
                offset: 3
            }
        );
        assert!(err.to_string().starts_with("payload is not in the wire form"), "{err}");
        assert!(err.to_string().contains("U+0100 at byte 3"), "{err}");
        let err = decode_string("é€".to_string()).unwrap_err();
        assert_eq!(
            err,
            NotWireForm {
                found: '€', offset: 2
            }
        );
        assert!(decode("\u{1F600}").is_err());
    }
}
