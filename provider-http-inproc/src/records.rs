//! A request body becomes records: one per request, or one per line for `application/x-ndjson`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, CONTENT_TYPE};
use sluice_provider_core::Message;

use crate::config::{BodyFormat, RouteConfig};

/// The media type whose lines are records.
pub const NDJSON: &str = "application/x-ndjson";

/// A body that is not what its `Content-Type` says.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line} is not JSON: {reason}")]
pub struct MalformedLine {
    /// 1-based line number.
    pub line: usize,
    /// What the JSON parser said.
    pub reason: String,
}

/// Whether the request's `Content-Type` is NDJSON.
pub fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(NDJSON))
}

/// A request's id: the client's `x-request-id` when it is short and plain, else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    let given = headers.get("x-request-id").and_then(|v| v.to_str().ok()).filter(|v| {
        (1..=64).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    });
    match given {
        Some(id) => id.to_string(),
        None => {
            static BOOT: OnceLock<u32> = OnceLock::new();
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let boot = BOOT.get_or_init(rand::random);
            format!("{boot:08x}-{:x}", NEXT.fetch_add(1, Relaxed))
        }
    }
}

/// What every record of one request shares.
#[derive(Debug)]
pub struct RequestInfo<'a> {
    /// The request path (the records' key).
    pub path: &'a str,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// Its id, for the records' origin.
    pub id: &'a str,
    /// When it arrived, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// The W3C Trace Context headers, carried in every record whatever the route selects: the
/// engine links a batch's span to the traces of its records.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Turns a body into records: key = path, the route's selected headers and the request's trace
/// context, timestamp = arrival, origin `http:<route>#<request-id>` (with `.<line index>` for
/// NDJSON lines). Empty NDJSON lines are skipped; a line that is not JSON refuses the whole body.
pub fn to_records(route: &RouteConfig, request: &RequestInfo<'_>, body: Bytes) -> Result<Vec<Message>, MalformedLine> {
    let trace = TRACE_HEADERS
        .into_iter()
        .filter(|t| !route.headers.iter().any(|h| h.as_str() == *t))
        .map(HeaderName::from_static);
    let headers: Vec<(String, Bytes)> = route
        .headers
        .iter()
        .cloned()
        .chain(trace)
        .flat_map(|name| {
            request
                .headers
                .get_all(&name)
                .iter()
                .map(move |v| (name.as_str().to_string(), Bytes::copy_from_slice(v.as_bytes())))
        })
        .collect();
    let key = Bytes::copy_from_slice(request.path.as_bytes());
    let make = |payload: Bytes, origin: String| Message {
        key: Some(key.clone()),
        payload,
        headers: headers.clone(),
        timestamp_ms: Some(request.timestamp_ms),
        origin,
    };
    let route_name = match &route.host {
        Some(host) => format!("{host}{}", route.prefix),
        None => route.prefix.clone(),
    };
    if route.format == BodyFormat::Whole || !is_ndjson(request.headers) {
        return Ok(vec![make(body, format!("http:{route_name}#{}", request.id))]);
    }
    let mut records = Vec::new();
    let mut start = 0;
    for (n, raw) in body.split(|b| *b == b'\n').enumerate() {
        let end = start + raw.len();
        let line = body.slice(start..end);
        start = end + 1;
        let trimmed = line.strip_suffix(b"\r").unwrap_or(&line);
        if trimmed.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(trimmed) {
            return Err(MalformedLine {
                line: n + 1,
                reason: err.to_string(),
            });
        }
        let payload = line.slice(..trimmed.len());
        let index = records.len();
        records.push(make(payload, format!("http:{route_name}#{}.{index}", request.id)));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hyper::header::HeaderValue;
    use sluice_provider_core::ConfigReader;

    use super::*;

    fn route(pairs: &[(&str, &str)]) -> RouteConfig {
        let values: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let secrets = HashMap::new();
        RouteConfig::from_config(&ConfigReader::new(&values, &secrets)).unwrap()
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        h.insert("x-tenant", HeaderValue::from_static("t1"));
        h.insert("x-other", HeaderValue::from_static("no"));
        h
    }

    fn info<'a>(h: &'a HeaderMap) -> RequestInfo<'a> {
        RequestInfo {
            path: "/in/orders",
            headers: h,
            id: "req1",
            timestamp_ms: 7,
        }
    }

    #[test]
    fn one_record_per_request() {
        let r = route(&[("path", "/in"), ("headers", "content-type, X-Tenant")]);
        let h = headers("application/json");
        let records = to_records(&r, &info(&h), Bytes::from_static(b"{\"a\":1}\n{\"a\":2}")).unwrap();
        assert_eq!(records.len(), 1);
        let m = &records[0];
        assert_eq!(m.key.as_deref(), Some(&b"/in/orders"[..]));
        assert_eq!(&m.payload[..], b"{\"a\":1}\n{\"a\":2}");
        assert_eq!(m.origin, "http:/in#req1");
        assert_eq!(m.timestamp_ms, Some(7));
        assert_eq!(
            m.headers,
            vec![
                ("content-type".to_string(), Bytes::from_static(b"application/json")),
                ("x-tenant".to_string(), Bytes::from_static(b"t1")),
            ]
        );
    }

    #[test]
    fn one_record_per_ndjson_line() {
        let r = route(&[("path", "/in"), ("host", "h.example")]);
        let h = headers("application/x-ndjson; charset=utf-8");
        let body = Bytes::from_static(b"{\"a\":1}\r\n\n  \n[2]\n\"three\"");
        let records = to_records(&r, &info(&h), body).unwrap();
        let payloads: Vec<&[u8]> = records.iter().map(|m| &m.payload[..]).collect();
        assert_eq!(payloads, [&b"{\"a\":1}"[..], b"[2]", b"\"three\""]);
        assert_eq!(records[2].origin, "http:h.example/in#req1.2");
    }

    #[test]
    fn malformed_ndjson_names_the_line() {
        let r = route(&[("path", "/in")]);
        let h = headers(NDJSON);
        let err = to_records(&r, &info(&h), Bytes::from_static(b"{}\n{\"a\":\n")).unwrap_err();
        assert_eq!(err.line, 2);
        let whole = route(&[("path", "/in"), ("body", "whole")]);
        assert_eq!(
            to_records(&whole, &info(&h), Bytes::from_static(b"{}\n{\"a\":\n"))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        let a = request_id(&h);
        let b = request_id(&h);
        assert_ne!(a, b);
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
    }
}
