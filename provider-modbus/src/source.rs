//! The polling source: one task per device polls its merged read blocks at the device's interval
//! and turns each poll into records, which the link's reader hands to the delivery engine.
//!
//! A poll is a snapshot: there is nothing to acknowledge. A device that cannot be reached is
//! reported (quality `bad` with the reason) and reconnected with exponential backoff, without
//! holding up the link's other devices; a block the device answers with an exception marks just
//! that block's tags `bad`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use serde::ser::SerializeMap as _;
use serde::Serialize;
use sluice_provider_core::backoff::Backoff;
use sluice_provider_core::time::unix_ms;
use sluice_provider_core::{ConnectorError, Message, Record, SourceReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use crate::client::{Connection, Data, DeviceError};
use crate::codec::{decode_registers, Value};
use crate::map::RegisterMap;
use crate::plan::{plan_device, ReadBlock};

/// What one record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordPer {
    /// One record per device and poll: `{"device", "timestamp_ms", "quality", "values": {tag: value}}`.
    #[default]
    Device,
    /// One record per tag and poll: `{"device", "tag", "timestamp_ms", "quality", "value"}`.
    Tag,
}

/// How a source link reports what it reads.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// One record per device poll, or one per tag.
    pub record_per: RecordPer,
    /// Report only tags whose value moved beyond their deadband, or whose quality changed.
    pub report_on_change: bool,
    /// Delays between reconnection attempts to an unreachable device.
    pub reconnect: Backoff,
}

/// A tag's state as last read (or reported).
#[derive(Debug, Clone, PartialEq)]
enum Reading {
    Good(Value),
    Bad(String),
}

impl Reading {
    fn changed_from(&self, previous: Option<&Reading>, deadband: f64) -> bool {
        match (self, previous) {
            (_, None) => true,
            (Reading::Good(a), Some(Reading::Good(b))) => a.changed_from(b, deadband),
            (Reading::Bad(a), Some(Reading::Bad(b))) => a != b,
            _ => true,
        }
    }
}

/// Reads one link: receives what the device pollers produced.
///
/// `poll` only waits on a channel, so dropping it mid-way loses nothing (it is cancel-safe).
#[derive(Debug)]
pub struct ModbusReader {
    rx: mpsc::Receiver<Vec<Message>>,
    pending: VecDeque<Message>,
    pollers: Vec<JoinHandle<()>>,
}

impl ModbusReader {
    /// Starts one poller per device that has tags.
    #[must_use]
    pub fn start(map: Arc<RegisterMap>, settings: SourceSettings) -> Self {
        let settings = Arc::new(settings);
        let (tx, rx) = mpsc::channel(map.devices.len().max(1) * 2);
        let mut pollers = Vec::new();
        for device in 0..map.devices.len() {
            let blocks = plan_device(&map, device);
            if blocks.is_empty() {
                warn!(device = %map.devices[device].name, "device has no tags; not polling it");
                continue;
            }
            info!(
                device = %map.devices[device].name,
                address = %map.devices[device].address,
                tags = map.tags_of(device).count(),
                requests = blocks.len(),
                "polling device"
            );
            let poller = Poller {
                connection: Connection::new(map.devices[device].clone()),
                map: Arc::clone(&map),
                device,
                blocks,
                settings: Arc::clone(&settings),
                reported: HashMap::new(),
                tx: tx.clone(),
            };
            pollers.push(tokio::spawn(poller.run()));
        }
        Self {
            rx,
            pending: VecDeque::new(),
            pollers,
        }
    }
}

impl Drop for ModbusReader {
    fn drop(&mut self) {
        for poller in &self.pollers {
            poller.abort();
        }
    }
}

impl SourceReader for ModbusReader {
    type Ack = ();

    async fn poll(&mut self, max: usize) -> Result<Vec<Record<()>>, ConnectorError> {
        if self.pending.is_empty() {
            match self.rx.recv().await {
                Some(messages) => self.pending.extend(messages),
                None => return Err(ConnectorError::msg("every device poller has stopped")),
            }
        }
        let n = max.min(self.pending.len());
        Ok(self.pending.drain(..n).map(|m| Record::new(m, ())).collect())
    }

    fn ack(&mut self, _: Vec<()>) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        // A poll is a snapshot: nothing to acknowledge to the device.
        std::future::ready(Ok(()))
    }

    async fn close(&mut self) {
        for poller in &self.pollers {
            poller.abort();
        }
    }
}

/// Polls one device.
struct Poller {
    map: Arc<RegisterMap>,
    device: usize,
    blocks: Vec<ReadBlock>,
    connection: Connection,
    settings: Arc<SourceSettings>,
    /// With report-on-change: the last reported reading, by tag index.
    reported: HashMap<usize, Reading>,
    tx: mpsc::Sender<Vec<Message>>,
}

impl Poller {
    async fn run(mut self) {
        let interval = self.map.devices[self.device].interval;
        let mut failures = 0u32;
        let mut next = Instant::now();
        loop {
            // Only sleep when the next poll is due later: the timer's resolution would otherwise
            // add up to a millisecond to back-to-back polls.
            if next > Instant::now() {
                sleep_until(next).await;
            }
            let started = Instant::now();
            let timestamp = unix_ms();
            let polled = self.poll_once().await;
            let wait = match &polled {
                Ok(_) => {
                    if failures > 0 {
                        info!(device = %self.name(), "device reachable again");
                    }
                    failures = 0;
                    interval
                }
                Err(reason) => {
                    failures += 1;
                    let delay = self.settings.reconnect.delay(failures).max(interval);
                    warn!(device = %self.name(), %reason, attempt = failures, ?delay, "device unreachable; retrying");
                    delay
                }
            };
            let messages = self.records(timestamp, polled);
            if !messages.is_empty() && self.tx.send(messages).await.is_err() {
                debug!(device = %self.name(), "reader gone; poller stops");
                return;
            }
            // A poll that overran its interval starts the next one at once, not a burst of them.
            next = started + wait;
        }
    }

    fn name(&self) -> &str {
        &self.map.devices[self.device].name
    }

    /// Reads every block. `Err` when the device cannot be reached (connection refused, broken,
    /// timed out); a block answered with an exception marks its tags bad and the poll goes on.
    async fn poll_once(&mut self) -> Result<Vec<(usize, Reading)>, String> {
        let mut readings = Vec::new();
        for block in &self.blocks {
            match self.connection.read(block.table, block.start, block.count).await {
                Ok(data) => {
                    for &i in &block.tags {
                        let tag = &self.map.tags[i];
                        let at = usize::from(tag.address - block.start);
                        let value = match &data {
                            Data::Bits(bits) => Value::Bool(bits[at]),
                            Data::Registers(registers) => decode_registers(tag, &registers[at..]),
                        };
                        readings.push((i, Reading::Good(value)));
                    }
                }
                Err(err @ DeviceError::Exception { .. }) => {
                    let reason = format!("{} {}+{}: {err}", block.table, block.start, block.count);
                    readings.extend(block.tags.iter().map(|&i| (i, Reading::Bad(reason.clone()))));
                }
                Err(DeviceError::Connection(reason)) => return Err(reason),
            }
        }
        Ok(readings)
    }

    /// Turns one poll into records, keeping only changes when reporting on change.
    fn records(&mut self, timestamp: u64, polled: Result<Vec<(usize, Reading)>, String>) -> Vec<Message> {
        let device_error = polled.as_ref().err().cloned();
        let readings: Vec<(usize, Reading)> = match polled {
            Ok(r) => r,
            Err(reason) => self
                .map
                .tags_of(self.device)
                .map(|i| (i, Reading::Bad(reason.clone())))
                .collect(),
        };
        let bad = readings.iter().filter(|(_, r)| matches!(r, Reading::Bad(_))).count();
        let quality = match bad {
            0 => "good",
            n if n == readings.len() => "bad",
            _ => "partial",
        };
        let report: Vec<(usize, Reading)> = if self.settings.report_on_change {
            readings
                .into_iter()
                .filter(|(i, reading)| {
                    let changed = reading.changed_from(self.reported.get(i), self.map.tags[*i].deadband);
                    if changed {
                        self.reported.insert(*i, reading.clone());
                    }
                    changed
                })
                .collect()
        } else {
            readings
        };
        if report.is_empty() {
            return Vec::new();
        }
        let device = self.name();
        let map = &self.map;
        match self.settings.record_per {
            RecordPer::Tag => report
                .iter()
                .map(|(i, reading)| {
                    let tag = &map.tags[*i];
                    let (quality, value, error) = match reading {
                        Reading::Good(v) => ("good", Some(v), None),
                        Reading::Bad(reason) => ("bad", None, Some(reason.as_str())),
                    };
                    let body = TagRecord {
                        device,
                        tag: &tag.name,
                        timestamp_ms: timestamp,
                        quality,
                        value,
                        error,
                        unit: tag.unit.as_deref(),
                    };
                    let origin = format!("modbus:{device}/{}/{}", tag.table, tag.address);
                    message(&body, tag.name.as_bytes(), origin, timestamp)
                })
                .collect(),
            RecordPer::Device => {
                let body = DeviceRecord {
                    device,
                    timestamp_ms: timestamp,
                    quality,
                    values: Named {
                        map,
                        readings: &report,
                        good: true,
                    },
                    // A device-wide failure is one `error`, not the same reason for every tag.
                    errors: Named {
                        map,
                        readings: if device_error.is_some() { &[] } else { &report },
                        good: false,
                    },
                    error: device_error.as_deref(),
                };
                vec![message(&body, device.as_bytes(), format!("modbus:{device}"), timestamp)]
            }
        }
    }
}

/// The body of a `record_per = "tag"` record.
#[derive(Serialize)]
struct TagRecord<'a> {
    device: &'a str,
    tag: &'a str,
    timestamp_ms: u64,
    quality: &'static str,
    /// `null` when the tag could not be read.
    value: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
}

/// The body of a `record_per = "device"` record.
#[derive(Serialize)]
struct DeviceRecord<'a> {
    device: &'a str,
    timestamp_ms: u64,
    quality: &'static str,
    values: Named<'a>,
    #[serde(skip_serializing_if = "Named::is_empty")]
    errors: Named<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Serialises the good readings (tag name -> value) or the bad ones (tag name -> reason) as a
/// JSON object, without building one first.
struct Named<'a> {
    map: &'a RegisterMap,
    readings: &'a [(usize, Reading)],
    good: bool,
}

impl Named<'_> {
    fn entries(&self) -> impl Iterator<Item = (&str, &Reading)> {
        self.readings
            .iter()
            .filter(|(_, r)| matches!(r, Reading::Good(_)) == self.good)
            .map(|(i, r)| (self.map.tags[*i].name.as_str(), r))
    }

    fn is_empty(&self) -> bool {
        self.entries().next().is_none()
    }
}

impl Serialize for Named<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_map(None)?;
        for (name, reading) in self.entries() {
            match reading {
                Reading::Good(v) => out.serialize_entry(name, v)?,
                Reading::Bad(reason) => out.serialize_entry(name, reason)?,
            }
        }
        out.end()
    }
}

fn message(body: &impl Serialize, key: &[u8], origin: String, timestamp: u64) -> Message {
    let mut m = Message::new(serde_json::to_vec(body).unwrap_or_default(), origin);
    m.key = Some(key.to_vec().into());
    m.timestamp_ms = Some(timestamp);
    m
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value as Json};

    use super::*;

    const MAP: &str = r#"
[devices.plc]
address = "127.0.0.1:502"

[[tags]]
name = "level"
table = "holding"
address = 0
deadband = 2

[[tags]]
name = "pump"
table = "coil"
address = 0
"#;

    fn poller(record_per: RecordPer, report_on_change: bool) -> Poller {
        let map = Arc::new(RegisterMap::parse(MAP).unwrap());
        Poller {
            connection: Connection::new(map.devices[0].clone()),
            blocks: plan_device(&map, 0),
            map,
            device: 0,
            settings: Arc::new(SourceSettings {
                record_per,
                report_on_change,
                reconnect: Backoff {
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(1),
                },
            }),
            reported: HashMap::new(),
            tx: mpsc::channel(1).0,
        }
    }

    fn bodies(messages: &[Message]) -> Vec<Json> {
        messages
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    }

    fn good(level: u64, pump: bool) -> Result<Vec<(usize, Reading)>, String> {
        Ok(vec![
            (0, Reading::Good(Value::Unsigned(level))),
            (1, Reading::Good(Value::Bool(pump))),
        ])
    }

    #[test]
    fn device_records_carry_quality_values_and_errors() {
        let mut p = poller(RecordPer::Device, false);
        let m = p.records(42, good(7, true));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].origin, "modbus:plc");
        assert_eq!(m[0].key.as_deref(), Some(&b"plc"[..]));
        assert_eq!(m[0].timestamp_ms, Some(42));
        assert_eq!(
            bodies(&m)[0],
            json!({"device": "plc", "timestamp_ms": 42, "quality": "good", "values": {"level": 7, "pump": true}})
        );
        let partial = Ok(vec![
            (0, Reading::Bad("holding 0+1: exception 2 (IllegalDataAddress)".into())),
            (1, Reading::Good(Value::Bool(false))),
        ]);
        assert_eq!(
            bodies(&p.records(43, partial))[0],
            json!({"device": "plc", "timestamp_ms": 43, "quality": "partial", "values": {"pump": false},
                   "errors": {"level": "holding 0+1: exception 2 (IllegalDataAddress)"}})
        );
        assert_eq!(
            bodies(&p.records(44, Err("connect to 127.0.0.1:502: refused".into())))[0],
            json!({"device": "plc", "timestamp_ms": 44, "quality": "bad", "values": {},
                   "error": "connect to 127.0.0.1:502: refused"})
        );
    }

    #[test]
    fn report_on_change_sends_changes_and_quality_transitions_once() {
        let mut p = poller(RecordPer::Device, true);
        assert_eq!(
            bodies(&p.records(1, good(10, false)))[0]["values"],
            json!({"level": 10, "pump": false})
        );
        assert!(
            p.records(2, good(11, false)).is_empty(),
            "within the deadband, nothing sent"
        );
        assert_eq!(
            bodies(&p.records(3, good(12, true)))[0]["values"],
            json!({"pump": true})
        );
        assert_eq!(bodies(&p.records(4, good(13, true)))[0]["values"], json!({"level": 13}));
        let down = || Err::<Vec<(usize, Reading)>, String>("no answer".into());
        assert_eq!(bodies(&p.records(5, down()))[0]["quality"], "bad");
        assert!(p.records(6, down()).is_empty(), "still down: nothing new");
        let back = bodies(&p.records(7, good(13, true)));
        assert_eq!(back[0]["quality"], "good");
        assert_eq!(
            back[0]["values"],
            json!({"level": 13, "pump": true}),
            "everything after recovery"
        );
    }

    #[test]
    fn tag_records_name_their_register() {
        let mut p = poller(RecordPer::Tag, false);
        let m = p.records(
            9,
            Ok(vec![
                (0, Reading::Good(Value::Unsigned(5))),
                (1, Reading::Bad("x".into())),
            ]),
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].origin, "modbus:plc/holding/0");
        assert_eq!(m[1].origin, "modbus:plc/coil/0");
        assert_eq!(m[1].key.as_deref(), Some(&b"pump"[..]));
        assert_eq!(
            bodies(&m),
            [
                json!({"device": "plc", "tag": "level", "timestamp_ms": 9, "quality": "good", "value": 5}),
                json!({"device": "plc", "tag": "pump", "timestamp_ms": 9, "quality": "bad", "value": null, "error": "x"}),
            ]
        );
    }
}
