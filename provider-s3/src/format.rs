//! How records become object bytes: a line format (`jsonl` or `raw`) and an optional streaming
//! compressor (`gzip`, `zstd`) whose output is taken part by part.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;

use base64::Engine as _;
use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::{ConfigError, ConfigReader, Message};

/// How payloads (and keys and header values) appear in `jsonl` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadEncoding {
    /// Standard base64: any bytes.
    Base64,
    /// UTF-8 text: a record whose payload, key or header value is not UTF-8 is rejected.
    Utf8,
}

/// One line per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"payload":..,"key":..,"headers":{..},"timestamp_ms":..,"origin":..}` per line.
    Jsonl(PayloadEncoding),
    /// The payload as it is, then `\n`; a payload containing `\n` is rejected.
    Raw,
}

/// One `jsonl` line.
#[derive(serde::Serialize)]
struct Line<'a> {
    payload: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<&'a str, Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp_ms: Option<u64>,
    origin: &'a str,
}

/// Compression of the whole object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// None.
    None,
    /// gzip at a level (0-9).
    Gzip(u32),
    /// zstd at a level (1-19).
    Zstd(i32),
}

impl Format {
    /// Reads `format` (`jsonl` or `raw`, default `jsonl`) and `payload_encoding` (`base64` or
    /// `utf8`, default `base64`).
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let encoding = match config.str("payload_encoding").unwrap_or("base64") {
            "base64" => PayloadEncoding::Base64,
            "utf8" | "utf-8" => PayloadEncoding::Utf8,
            other => {
                return Err(ConfigError::invalid(
                    "payload_encoding",
                    format!("expected base64 or utf8, got `{other}`"),
                ))
            }
        };
        match config.str("format").unwrap_or("jsonl") {
            "jsonl" => Ok(Self::Jsonl(encoding)),
            "raw" => Ok(Self::Raw),
            other => Err(ConfigError::invalid(
                "format",
                format!("expected jsonl or raw, got `{other}`"),
            )),
        }
    }

    /// Appends `message` as one line to `out`, or says why it can never be written this way.
    pub fn encode<'a>(self, message: &'a Message, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Self::Raw => {
                if message.payload.contains(&b'\n') {
                    return Err("format `raw` cannot hold a payload containing a newline".into());
                }
                out.extend_from_slice(&message.payload);
                out.push(b'\n');
                Ok(())
            }
            Self::Jsonl(encoding) => {
                let text = |what: &str, bytes: &'a [u8]| -> Result<Cow<'a, str>, String> {
                    match encoding {
                        PayloadEncoding::Base64 => Ok(base64::engine::general_purpose::STANDARD.encode(bytes).into()),
                        PayloadEncoding::Utf8 => std::str::from_utf8(bytes)
                            .map(Cow::Borrowed)
                            .map_err(|_| format!("payload_encoding `utf8`: the {what} is not valid UTF-8")),
                    }
                };
                let headers = message
                    .headers
                    .iter()
                    .map(|(name, value)| Ok((name.as_str(), text("header value", value)?)))
                    .collect::<Result<BTreeMap<_, _>, String>>()?;
                let line = Line {
                    payload: text("payload", &message.payload)?,
                    key: message.key.as_deref().map(|k| text("key", k)).transpose()?,
                    headers,
                    timestamp_ms: message.timestamp_ms,
                    origin: &message.origin,
                };
                serde_json::to_writer(&mut *out, &line).map_err(|e| e.to_string())?;
                out.push(b'\n');
                Ok(())
            }
        }
    }
}

impl Compression {
    /// Reads `compression` (`none`, `gzip` or `zstd`, default `none`) and `compression_level`.
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let level = config.parse::<i32>("compression_level", "a whole number")?;
        let check = |range: std::ops::RangeInclusive<i32>, default: i32| {
            let l = level.unwrap_or(default);
            if range.contains(&l) {
                Ok(l)
            } else {
                Err(ConfigError::invalid(
                    "compression_level",
                    format!("expected {}..={}, got `{l}`", range.start(), range.end()),
                ))
            }
        };
        match config.str("compression").unwrap_or("none") {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip(check(0..=9, 6)?.unsigned_abs())),
            "zstd" => Ok(Self::Zstd(check(1..=19, 3)?)),
            other => Err(ConfigError::invalid(
                "compression",
                format!("expected none, gzip or zstd, got `{other}`"),
            )),
        }
    }

    /// A fresh encoder for one object.
    #[must_use]
    pub fn encoder(self) -> Encoder {
        match self {
            Self::None => Encoder::Plain(Vec::new()),
            Self::Gzip(level) => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Self::Zstd(level) => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), level).expect("zstd accepts levels 1..=19"))
            }
        }
    }
}

/// The bytes of one object as they are produced: write lines in, take output out part by part.
pub enum Encoder {
    /// No compression.
    Plain(Vec<u8>),
    /// gzip.
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Encoder::Plain",
            Self::Gzip(_) => "Encoder::Gzip",
            Self::Zstd(_) => "Encoder::Zstd",
        })
    }
}

impl Encoder {
    /// Writes encoded lines. Writing to memory cannot fail.
    pub fn write(&mut self, bytes: &[u8]) {
        let result = match self {
            Self::Plain(out) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            Self::Gzip(e) => e.write_all(bytes),
            Self::Zstd(e) => e.write_all(bytes),
        };
        result.expect("writing to memory cannot fail");
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Self::Plain(out) => out,
            Self::Gzip(e) => e.get_mut(),
            Self::Zstd(e) => e.get_mut(),
        }
    }

    /// Output produced so far and not yet taken.
    pub fn output_len(&mut self) -> usize {
        self.output().len()
    }

    /// Takes the output produced so far (the compressor keeps its state).
    pub fn take_output(&mut self, capacity: usize) -> Vec<u8> {
        std::mem::replace(self.output(), Vec::with_capacity(capacity))
    }

    /// Ends the stream and returns the output not yet taken.
    #[must_use]
    pub fn finish(self) -> Vec<u8> {
        let result = match self {
            Self::Plain(out) => Ok(out),
            Self::Gzip(e) => e.finish(),
            Self::Zstd(e) => e.finish(),
        };
        result.expect("finishing in memory cannot fail")
    }
}

/// The keys of [`Format`] and [`Compression`], on sink links.
pub const KEYS: &[Key] = &[
    Key::new(
        "format",
        KeyType::Enum(&["jsonl", "raw"]),
        "`jsonl`: one JSON object per record; `raw`: the payload and a line end",
    )
    .sink()
    .default("jsonl"),
    Key::new(
        "payload_encoding",
        KeyType::Enum(&["base64", "utf8"]),
        "`jsonl` only: how payloads are written",
    )
    .sink()
    .default("base64"),
    Key::new(
        "compression",
        KeyType::Enum(&["none", "gzip", "zstd"]),
        "Object compression (one stream per object)",
    )
    .sink()
    .default("none"),
    Key::new(
        "compression_level",
        KeyType::Int { min: 0 },
        "0-9 (gzip, default 6) / 1-19 (zstd, default 3)",
    )
    .sink(),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_round_trip() {
        let mut m = Message::new(b"caf\xc3\xa9".to_vec(), "s3:b/k#1");
        m.key = Some(b"k".to_vec().into());
        m.headers = vec![("h".into(), b"v".to_vec().into())];
        m.timestamp_ms = Some(5);
        let mut out = Vec::new();
        Format::Jsonl(PayloadEncoding::Utf8).encode(&m, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"payload\":\"café\",\"key\":\"k\",\"headers\":{\"h\":\"v\"},\"timestamp_ms\":5,\"origin\":\"s3:b/k#1\"}\n"
        );
        let mut out = Vec::new();
        Format::Jsonl(PayloadEncoding::Base64)
            .encode(&Message::new(vec![0xff, 0], "o"), &mut out)
            .unwrap();
        assert_eq!(out, b"{\"payload\":\"/wA=\",\"origin\":\"o\"}\n");
    }

    #[test]
    fn records_a_format_cannot_hold_are_refused() {
        let bad = Message::new(vec![0xff], "o");
        let err = Format::Jsonl(PayloadEncoding::Utf8)
            .encode(&bad, &mut Vec::new())
            .unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
        let err = Format::Raw
            .encode(&Message::new(b"a\nb".to_vec(), "o"), &mut Vec::new())
            .unwrap_err();
        assert!(err.contains("newline"), "{err}");
    }

    #[test]
    fn compressed_output_taken_in_pieces_decodes_whole() {
        for compression in [Compression::None, Compression::Gzip(6), Compression::Zstd(3)] {
            let mut encoder = compression.encoder();
            let mut object = Vec::new();
            let mut want = Vec::new();
            for i in 0..20_000 {
                let line = format!("record {i} {}\n", i * 7919 % 1000);
                encoder.write(line.as_bytes());
                want.extend_from_slice(line.as_bytes());
                if encoder.output_len() > 4096 {
                    object.extend(encoder.take_output(0));
                }
            }
            object.extend(encoder.finish());
            let got = match compression {
                Compression::None => object,
                Compression::Gzip(_) => {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&object[..]), &mut out).unwrap();
                    out
                }
                Compression::Zstd(_) => zstd::decode_all(&object[..]).unwrap(),
            };
            assert_eq!(got, want, "{compression:?}");
        }
    }
}
