//! How a pipeline record travels as a NATS message, exactly: the payload as is, and the rest in
//! headers whose values are percent-encoded where needed, so any key, header or origin bytes come
//! back unchanged and in order.
//!
//! | record | NATS header |
//! | --- | --- |
//! | `key` | `Sluice-Key` (percent-encoded; absent for no key) |
//! | `headers`, in order | one `Sluice-Header` value per header, `<name>=<value>` percent-encoded |
//! | `timestamp_ms` | `Sluice-Timestamp` (decimal milliseconds; absent for none) |
//! | `origin` | `Sluice-Origin` (percent-encoded) |
//!
//! A message read from the stream also gets the headers [`SUBJECT_HEADER`] and
//! [`SEQUENCE_HEADER`] (where it was read); the sink never publishes those two, so they describe
//! the last hop only. A message published by something else than Sluice (no `Sluice-Origin`) is
//! read with its subject as key, its other NATS headers as record headers (by name), the time the
//! stream stored it as timestamp, and `jetstream:<stream>/<subject>#<sequence>` as origin.

use async_nats::HeaderMap;
use bytes::Bytes;
use sluice_provider_core::{percent, Message};

/// The record's key.
pub const KEY: &str = "Sluice-Key";
/// One record header.
pub const HEADER: &str = "Sluice-Header";
/// The record's timestamp.
pub const TIMESTAMP: &str = "Sluice-Timestamp";
/// The record's origin.
pub const ORIGIN: &str = "Sluice-Origin";
/// Why a dead-lettered record was rejected.
pub const REASON: &str = "Sluice-Reason";
/// The de-duplication id JetStream reads.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// Record header added by the source: the subject the record was read from.
pub const SUBJECT_HEADER: &str = "jetstream.subject";
/// Record header added by the source: the record's sequence number in its stream.
pub const SEQUENCE_HEADER: &str = "jetstream.sequence";

/// The NATS headers carrying `message`'s key, headers, timestamp and origin.
#[must_use]
pub fn to_headers(message: &Message) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(key) = &message.key {
        headers.insert(KEY, encode(key));
    }
    for (name, value) in &message.headers {
        if name == SUBJECT_HEADER || name == SEQUENCE_HEADER {
            continue;
        }
        headers.append(HEADER, format!("{}={}", encode(name.as_bytes()), encode(value)));
    }
    if let Some(ts) = message.timestamp_ms {
        headers.insert(TIMESTAMP, ts.to_string());
    }
    headers.insert(ORIGIN, encode(message.origin.as_bytes()));
    headers
}

/// About how many bytes `headers` take on the wire (what counts against the server's
/// `max_payload` together with the payload).
#[must_use]
pub fn headers_len(headers: &HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| name.to_string().len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + 2
}

/// Where a message was read: its stream, subject, sequence and the time the stream stored it.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    /// The stream.
    pub stream: &'a str,
    /// The subject.
    pub subject: &'a str,
    /// Its sequence number in the stream.
    pub sequence: u64,
    /// When the stream stored it, in milliseconds since the epoch.
    pub stored_ms: u64,
}

/// The record a NATS message read at `at` carries.
#[must_use]
pub fn from_nats(headers: Option<&HeaderMap>, payload: Bytes, at: Position<'_>) -> Message {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
    let mut message = match get(ORIGIN) {
        Some(origin) => Message {
            key: get(KEY).map(|k| Bytes::from(decode(&k))),
            payload,
            headers: headers
                .map(|h| {
                    h.get_all(HEADER)
                        .filter_map(|v| {
                            let (name, value) = v.as_str().split_once('=')?;
                            let name = String::from_utf8(decode(name)).ok()?;
                            Some((name, Bytes::from(decode(value))))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            timestamp_ms: get(TIMESTAMP).and_then(|t| t.parse().ok()),
            origin: String::from_utf8_lossy(&decode(&origin)).into_owned(),
        },
        None => {
            let mut foreign: Vec<(String, Bytes)> = headers
                .map(|h| {
                    h.iter()
                        .flat_map(|(name, values)| {
                            values
                                .iter()
                                .map(move |v| (name.to_string(), Bytes::from(v.as_str().to_string())))
                        })
                        .collect()
                })
                .unwrap_or_default();
            foreign.sort_by(|a, b| a.0.cmp(&b.0));
            Message {
                key: Some(Bytes::from(at.subject.to_string())),
                payload,
                headers: foreign,
                timestamp_ms: Some(at.stored_ms),
                origin: format!("jetstream:{}/{}#{}", at.stream, at.subject, at.sequence),
            }
        }
    };
    message
        .headers
        .push((SUBJECT_HEADER.into(), Bytes::from(at.subject.to_string())));
    message
        .headers
        .push((SEQUENCE_HEADER.into(), Bytes::from(at.sequence.to_string())));
    message
}

/// The stream sequence the source recorded in `message` ([`SEQUENCE_HEADER`]).
#[must_use]
pub fn sequence_of(message: &Message) -> Option<u64> {
    message
        .headers
        .iter()
        .rev()
        .find(|(name, _)| name == SEQUENCE_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
}

/// Percent-encodes every byte that is not printable ASCII, and `%`, `=` and space.
#[must_use]
pub fn encode(bytes: &[u8]) -> String {
    percent::encode(bytes, |b| b.is_ascii_graphic() && b != b'%' && b != b'=')
}

/// Undoes [`encode`]; a malformed escape is kept as it is.
#[must_use]
pub fn decode(text: &str) -> Vec<u8> {
    percent::decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let encoded = encode(&all);
        assert!(encoded.bytes().all(|b| b.is_ascii_graphic() && b != b'='));
        assert_eq!(decode(&encoded), all);
    }

    #[test]
    fn records_round_trip_exactly() {
        let mut m = Message::new(&b"\x00payload\xff"[..], "mqtt:host/a b#1 = x");
        m.key = Some(Bytes::from_static(b"k\r\ney"));
        m.headers = vec![
            ("z".into(), Bytes::from_static(b"1")),
            ("a=b".into(), Bytes::from_static(b"v\n2")),
            ("z".into(), Bytes::from_static(b"")),
        ];
        m.timestamp_ms = Some(1_700_000_000_123);
        let headers = to_headers(&m);
        let at = Position {
            stream: "S",
            subject: "p.x",
            sequence: 7,
            stored_ms: 1,
        };
        let back = from_nats(Some(&headers), m.payload.clone(), at);
        assert_eq!(back.key, m.key);
        assert_eq!(back.timestamp_ms, m.timestamp_ms);
        assert_eq!(back.origin, m.origin);
        assert_eq!(back.headers[..3], m.headers[..]);
        assert_eq!(sequence_of(&back), Some(7));
        // Read again and published on: the hop headers are not carried.
        let again = from_nats(Some(&to_headers(&back)), back.payload.clone(), at);
        assert_eq!(again.headers.len(), 5);
    }

    #[test]
    fn a_foreign_message_gets_a_position_origin() {
        let at = Position {
            stream: "S",
            subject: "p.x",
            sequence: 9,
            stored_ms: 5,
        };
        let m = from_nats(None, Bytes::from_static(b"x"), at);
        assert_eq!(m.origin, "jetstream:S/p.x#9");
        assert_eq!(m.key.as_deref(), Some(&b"p.x"[..]));
        assert_eq!(m.timestamp_ms, Some(5));
    }
}
