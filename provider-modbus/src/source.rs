//! The polling source: one task per device polls its merged read blocks at the device's interval
//! and turns each poll into records, which the link's reader hands to the delivery engine.
//!
//! A poll is a snapshot: there is nothing to acknowledge. A device that cannot be reached is
//! reported (quality `bad` with the reason) and reconnected with exponential backoff, without
//! holding up the link's other devices; a block the device answers with an exception marks just
//! that block's tags `bad`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::SerializeMap as _;
use serde::Serialize;
use sluice_provider_core::backoff::Backoff;
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

    async fn ack(&mut self, _: Vec<()>) -> Result<(), ConnectorError> {
        // A poll is a snapshot: nothing to acknowledge to the device.
        Ok(())
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
            let timestamp = now_ms();
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
