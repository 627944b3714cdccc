//! The guarded register sink: records name a tag and a value; only tags the map declares
//! writable are written, within their limits. Nothing outside the declared map is ever written.
//!
//! A record is either a JSON object `{"tag": "setpoint", "value": 42.5}` (an optional `"device"`
//! must match the tag's device), or has the tag name as its key and the JSON value as its payload.

use std::sync::Arc;

use serde_json::Value as Json;
use sluice_provider_core::{Failure, Message, Rejected, SinkWriter};
use tokio::sync::Mutex;
use tracing::debug;

use crate::client::{Connection, DeviceError};
use crate::codec::{encode, Encoded};
use crate::map::RegisterMap;

/// Writes one link's records to the devices of its map.
#[derive(Debug)]
pub struct ModbusWriter {
    map: Arc<RegisterMap>,
    /// One connection per device, established on first write.
    connections: Vec<Mutex<Connection>>,
}

impl ModbusWriter {
    /// A writer for `map`; connects to each device when it is first written to.
    #[must_use]
    pub fn new(map: Arc<RegisterMap>) -> Self {
        let connections = map
            .devices
            .iter()
            .cloned()
            .map(|d| Mutex::new(Connection::new(d)))
            .collect();
        Self { map, connections }
    }

    /// Checks one record against the map: which tag, and the registers or coil to write.
    pub fn check(&self, message: &Message) -> Result<(usize, Encoded), String> {
        let payload: Json =
            serde_json::from_slice(&message.payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        let (name, value, device) = match &payload {
            Json::Object(fields) if fields.contains_key("tag") => {
                let name = fields["tag"]
                    .as_str()
                    .ok_or_else(|| format!("`tag` must be a string, got {}", fields["tag"]))?
                    .to_string();
                let value = fields
                    .get("value")
                    .ok_or_else(|| format!("no `value` for tag `{name}`"))?
                    .clone();
                let device = match fields.get("device") {
                    None => None,
                    Some(Json::String(d)) => Some(d.clone()),
                    Some(other) => return Err(format!("`device` must be a string, got {other}")),
                };
                (name, value, device)
            }
            _ => {
                let key = message
                    .key
                    .as_ref()
                    .ok_or("expected {\"tag\": ..., \"value\": ...}, or the tag name as the record key")?;
                let name = std::str::from_utf8(key)
                    .map_err(|_| "the record key (tag name) is not UTF-8".to_string())?
                    .to_string();
                (name, payload, None)
            }
        };
        let index = self
            .map
            .tag_index(&name)
            .ok_or_else(|| format!("unknown tag `{name}`: not in the register map"))?;
        let tag = &self.map.tags[index];
        let tag_device = &self.map.devices[tag.device].name;
        if let Some(d) = device.filter(|d| d != tag_device) {
            return Err(format!("tag `{name}` belongs to device `{tag_device}`, not `{d}`"));
        }
        if !tag.table.is_writable() {
            return Err(format!("tag `{name}` is in the read-only `{}` table", tag.table));
        }
        if !tag.writable {
            return Err(format!("tag `{name}` is not declared writable"));
        }
        let encoded = encode(tag, &value).map_err(|reason| format!("tag `{name}`: {reason}"))?;
        Ok((index, encoded))
    }
}

impl SinkWriter for ModbusWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        let mut rejected = Vec::new();
        let mut writes = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            match self.check(message) {
                Ok(write) => writes.push((index, write)),
                Err(reason) => rejected.push(Rejected {
                    index: index as u32,
                    reason,
                }),
            }
        }
        // In record order, so the last record for a tag wins. Writes set absolute values, so a
        // batch offered again after `retry` leaves the same registers behind.
        for (index, (tag_index, encoded)) in writes {
            let tag = &self.map.tags[tag_index];
            let device = &self.map.devices[tag.device];
            let mut connection = self.connections[tag.device].lock().await;
            match connection.write(tag.address, &encoded).await {
                Ok(()) => debug!(tag = %tag.name, device = %device.name, "written"),
                Err(err @ DeviceError::Exception { .. }) => rejected.push(Rejected {
                    index: index as u32,
                    reason: format!("device `{}` refused tag `{}`: {err}", device.name, tag.name),
                }),
                Err(DeviceError::Connection(reason)) => {
                    return Err(Failure::Retry(format!("device `{}`: {reason}", device.name)))
                }
            }
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            rejected.sort_by_key(|r| r.index);
            Err(Failure::Reject(rejected))
        }
    }
}
