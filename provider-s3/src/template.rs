//! Object key templates: `events/{date}/{hour}/{header:tenant}/{unique}.jsonl.gz`.
//!
//! Fields: `{date}` (`YYYY-MM-DD`), `{year}`, `{month}`, `{day}`, `{hour}` (`HH`), all in UTC from
//! the record's timestamp or its arrival time; `{key}` (the record key); `{header:NAME}` (a header
//! value); `{link}` and `{component}` (the link's name and component); `{unique}` (a suffix unique
//! to each object, required). Record-derived values are percent-encoded outside
//! `A-Z a-z 0-9 - _ . ~ =`, so a value can never add a path segment; an absent key or header
//! renders as `_none`.

use std::fmt::Write as _;

use sluice_provider_core::{ConfigError, LinkKey, Message};

/// Stands for `{unique}` in a rendered partition until an object is opened in it.
const UNIQUE_MARK: char = '\u{0}';

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Date,
    Year,
    Month,
    Day,
    Hour,
    Key,
    Header(String),
    Unique,
}

/// Which time `{date}` and `{hour}` are taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The record's `timestamp-ms`, or its arrival time when it has none.
    Record,
    /// When the record reached the provider.
    Arrival,
}

/// A parsed key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

impl KeyTemplate {
    /// Parses `text`, resolving `{link}` and `{component}` for `link`. Errors name `config_key`.
    pub fn parse(config_key: &str, text: &str, link: &LinkKey) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::invalid(config_key, reason);
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(invalid(format!("unmatched `}}` in `{text}`")));
            }
            literal.push_str(&rest[..open]);
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| invalid(format!("unclosed `{{` in `{text}`")))?;
            let field = &rest[open + 1..open + close];
            let part = match field {
                "date" => Part::Date,
                "year" => Part::Year,
                "month" => Part::Month,
                "day" => Part::Day,
                "hour" => Part::Hour,
                "key" => Part::Key,
                "unique" => Part::Unique,
                "link" => {
                    literal.push_str(&encode(link.name.as_bytes()));
                    rest = &rest[open + close + 1..];
                    continue;
                }
                "component" => {
                    literal.push_str(&encode(link.component.as_bytes()));
                    rest = &rest[open + close + 1..];
                    continue;
                }
                other => match other.strip_prefix("header:") {
                    Some(name) if !name.is_empty() => Part::Header(name.to_string()),
                    _ => {
                        return Err(invalid(format!(
                            "unknown field `{{{other}}}`; expected date, year, month, day, hour, key, \
                             header:NAME, link, component or unique"
                        )))
                    }
                },
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &rest[open + close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.contains(&Part::Unique) {
            return Err(invalid(format!(
                "`{text}` has no `{{unique}}`: two objects of one partition would overwrite each other"
            )));
        }
        if text.starts_with('/') {
            return Err(invalid(format!("`{text}` starts with `/`")));
        }
        Ok(Self { parts })
    }

    /// The partition `message` belongs to: the template rendered with `{unique}` left open.
    #[must_use]
    pub fn partition(&self, message: &Message, source: TimeSource, arrival_ms: u64) -> Partition {
        let ms = match source {
            TimeSource::Record => message.timestamp_ms.unwrap_or(arrival_ms),
            TimeSource::Arrival => arrival_ms,
        };
        let (y, m, d, h) = civil(ms);
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Date => {
                    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
                }
                Part::Year => {
                    let _ = write!(out, "{y:04}");
                }
                Part::Month => {
                    let _ = write!(out, "{m:02}");
                }
                Part::Day => {
                    let _ = write!(out, "{d:02}");
                }
                Part::Hour => {
                    let _ = write!(out, "{h:02}");
                }
                Part::Key => out.push_str(&message.key.as_deref().map_or_else(|| "_none".into(), encode)),
                Part::Header(name) => out.push_str(
                    &message
                        .headers
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or_else(|| "_none".into(), |(_, v)| encode(v)),
                ),
                Part::Unique => out.push(UNIQUE_MARK),
            }
        }
        Partition(out)
    }
}

/// A rendered key template still missing its `{unique}` suffix: records of one partition go to
/// the same open object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(String);

impl Partition {
    /// The object key for this partition with `unique` in place of `{unique}`.
    #[must_use]
    pub fn object_key(&self, unique: &str) -> String {
        self.0.replace(UNIQUE_MARK, unique)
    }
}

/// A suffix no other object of this process or another will have: UTC time of opening, a random
/// part per writer, and a sequence number.
#[must_use]
pub fn unique_suffix(now_ms: u64, writer: u32, seq: u64) -> String {
    let (y, m, d, h) = civil(now_ms);
    let secs = (now_ms / 1000) % 3600;
    format!(
        "{y:04}{m:02}{d:02}T{h:02}{:02}{:02}Z-{writer:08x}-{seq:06}",
        secs / 60,
        secs % 60
    )
}

/// Percent-encodes everything outside `A-Z a-z 0-9 - _ . ~ =`, so a value is one path segment.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = sluice_provider_core::percent::encode(bytes, |b| b.is_ascii_alphanumeric() || b"-_.~=".contains(&b));
    if out.is_empty() || out == "." || out == ".." {
        out = out.replace('.', "%2E");
        if out.is_empty() {
            out.push_str("_empty");
        }
    }
    out
}

/// (year, month, day, hour) in UTC of a Unix time in milliseconds.
fn civil(ms: u64) -> (i64, u32, u32, u32) {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let hour = ((secs % 86_400) / 3600) as u32;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> LinkKey {
        LinkKey::new("step-1", "orders")
    }

    fn msg(ts: Option<u64>, key: Option<&[u8]>, headers: &[(&str, &[u8])]) -> Message {
        let mut m = Message::new(b"x".to_vec(), "test");
        m.timestamp_ms = ts;
        m.key = key.map(|k| k.to_vec().into());
        m.headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec().into()))
            .collect();
        m
    }

    #[test]
    fn renders_every_field() {
        let t = KeyTemplate::parse(
            "key_template",
            "out/{link}/{component}/{date}/{hour}/{year}{month}{day}/{key}/{header:tenant}/{unique}.jsonl",
            &link(),
        )
        .unwrap();
        // 2024-02-29T13:45:00Z
        let m = msg(Some(1_709_214_300_000), Some(b"a/b c"), &[("tenant", b"acme")]);
        let p = t.partition(&m, TimeSource::Record, 0);
        assert_eq!(
            p.object_key("U"),
            "out/orders/step-1/2024-02-29/13/20240229/a%2Fb%20c/acme/U.jsonl"
        );
        let none = msg(None, None, &[]);
        let p = t.partition(&none, TimeSource::Record, 0);
        assert_eq!(
            p.object_key("U"),
            "out/orders/step-1/1970-01-01/00/19700101/_none/_none/U.jsonl"
        );
        let p = t.partition(&m, TimeSource::Arrival, 86_400_000 * 365);
        assert!(p.object_key("U").contains("/1971-01-01/00/"), "{p:?}");
    }

    #[test]
    fn values_cannot_escape_their_segment() {
        assert_eq!(encode(b".."), "%2E%2E");
        assert_eq!(encode(b""), "_empty");
        assert_eq!(encode("ü".as_bytes()), "%C3%BC");
    }

    #[test]
    fn refuses_bad_templates_by_key() {
        for bad in [
            "{date}/x",
            "{unique}/{nope}",
            "{unique",
            "a}{unique}",
            "/{unique}",
            "{header:}{unique}",
        ] {
            let err = KeyTemplate::parse("key_template", bad, &link()).unwrap_err();
            assert_eq!(err.key(), "key_template", "{bad}");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0));
        assert_eq!(civil(951_782_400_000), (2000, 2, 29, 0));
        assert_eq!(civil(4_102_444_799_000), (2099, 12, 31, 23));
        assert_eq!(
            unique_suffix(1_709_214_345_000, 0xab, 7),
            "20240229T134545Z-000000ab-000007"
        );
    }
}
