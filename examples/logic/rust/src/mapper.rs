//! The mapping itself, on plain bytes, so the benchmark can run the very same code natively.

use serde_json::{json, Value};

/// What becomes of one record.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Filtered out: a heartbeat.
    Drop,
    /// Refused for good, with the reason.
    Reject(&'static str),
    /// Written: the new key and payload.
    Keep { key: Vec<u8>, payload: Vec<u8> },
}

/// Maps one reading `{"device": .., "temp": .., "site": .., ...}` to
/// `{"device_id": .., "temperature": .., "site": ..}` keyed by the device; drops heartbeats
/// (`"kind": "heartbeat"`); rejects payloads that are not JSON objects or have no `device` string.
pub fn map(payload: &[u8]) -> Outcome {
    let Ok(Value::Object(record)) = serde_json::from_slice::<Value>(payload) else {
        return Outcome::Reject("payload is not a JSON object");
    };
    if record.get("kind").and_then(Value::as_str) == Some("heartbeat") {
        return Outcome::Drop;
    }
    let Some(device) = record.get("device").and_then(Value::as_str) else {
        return Outcome::Reject("missing device");
    };
    let site = record.get("site").and_then(Value::as_str).unwrap_or("unknown");
    let temperature = record.get("temp").cloned().unwrap_or(Value::Null);
    let mapped = json!({ "device_id": device, "temperature": temperature, "site": site });
    Outcome::Keep {
        key: device.as_bytes().to_vec(),
        payload: mapped.to_string().into_bytes(),
    }
}
