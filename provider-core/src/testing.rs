//! In-memory connectors for tests (feature `testing`): a source whose records, acknowledgements
//! and dead letters the test controls and inspects, and a sink that keeps what it was given.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::{ConfigError, ConfigReader};
use crate::link::LinkKey;
use crate::sink::{SinkConnector, SinkWriter};
use crate::source::{Record, SourceConnector, SourceReader};
use crate::{ConnectorError, Failure, Message};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A source of records pushed by the test, one stream per link.
///
/// Link config: `ordered` (bool): keep records with the same message key in order.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    streams: Arc<Mutex<HashMap<LinkKey, Arc<MemoryStream>>>>,
}

impl MemorySource {
    /// The stream behind `key` (created on first use, before or after the link is put).
    #[must_use]
    pub fn stream(&self, key: &LinkKey) -> Arc<MemoryStream> {
        Arc::clone(lock(&self.streams).entry(key.clone()).or_default())
    }
}

/// One link's records: what is waiting, what was read, acknowledged and dead-lettered.
#[derive(Debug, Default)]
pub struct MemoryStream {
    queue: Mutex<VecDeque<(u64, Message)>>,
    next_offset: AtomicU64,
    polled: AtomicU64,
    acked: Mutex<Vec<u64>>,
    released: Mutex<Vec<u64>>,
    ack_calls: Mutex<Vec<usize>>,
    acks_held: AtomicBool,
    acks_released: Notify,
    dead: Mutex<Vec<(Message, String)>>,
    closed: AtomicU64,
    arrived: Notify,
    changed: Notify,
}

impl MemoryStream {
    /// Appends records; each gets the next offset (0, 1, 2, ...).
    pub fn push(&self, messages: impl IntoIterator<Item = Message>) {
        let mut queue = lock(&self.queue);
        for m in messages {
            queue.push_back((self.next_offset.fetch_add(1, Relaxed), m));
        }
        drop(queue);
        self.arrived.notify_one();
    }

    /// How many records the runner has read.
    pub fn polled(&self) -> u64 {
        self.polled.load(Relaxed)
    }

    /// How many records were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        lock(&self.acked).len()
    }

    /// Offsets the runner released for acknowledgement ([`SourceReader::released`]), in order;
    /// ahead of [`Self::acked`] while an acknowledgement call is in flight.
    pub fn released(&self) -> Vec<u64> {
        lock(&self.released).clone()
    }

    /// How many records each completed acknowledgement call covered, in call order.
    pub fn ack_calls(&self) -> Vec<usize> {
        lock(&self.ack_calls).clone()
    }

    /// While `held`, acknowledgement calls wait (a slow commit); releasing lets them finish.
    pub fn hold_acks(&self, held: bool) {
        self.acks_held.store(held, Relaxed);
        if !held {
            self.acks_released.notify_waiters();
        }
    }

    /// Offsets acknowledged so far, in acknowledgement order.
    pub fn acked(&self) -> Vec<u64> {
        lock(&self.acked).clone()
    }

    /// Records dead-lettered so far, with reasons.
    pub fn dead_letters(&self) -> Vec<(Message, String)> {
        lock(&self.dead).clone()
    }

    /// How many times a reader of this stream was closed.
    pub fn closed(&self) -> u64 {
        self.closed.load(Relaxed)
    }

    /// Waits until `done` holds for this stream, or `within` passes; returns whether it held.
    pub async fn wait_for(&self, within: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(self);
            }
        }
    }
}

impl SourceConnector for MemorySource {
    type Config = bool;
    type Reader = MemoryReader;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<bool, ConfigError> {
        config.bool_or("ordered", false)
    }

    async fn open(&self, link: &LinkKey, ordered: bool) -> Result<MemoryReader, ConnectorError> {
        Ok(MemoryReader {
            stream: self.stream(link),
            ordered,
        })
    }
}

/// Reads a [`MemoryStream`].
#[derive(Debug)]
pub struct MemoryReader {
    stream: Arc<MemoryStream>,
    ordered: bool,
}

impl SourceReader for MemoryReader {
    type Ack = u64;

    async fn poll(&mut self, max: usize) -> Result<Vec<Record<u64>>, ConnectorError> {
        loop {
            let arrived = self.stream.arrived.notified();
            {
                let mut queue = lock(&self.stream.queue);
                if !queue.is_empty() {
                    let n = max.min(queue.len());
                    let records: Vec<Record<u64>> = queue
                        .drain(..n)
                        .map(|(offset, message)| {
                            let key = message.key.clone();
                            let record = Record::new(message, offset);
                            match key {
                                Some(k) if self.ordered => record.ordered_by(k),
                                _ => record,
                            }
                        })
                        .collect();
                    if !queue.is_empty() {
                        self.stream.arrived.notify_one();
                    }
                    self.stream.polled.fetch_add(records.len() as u64, Relaxed);
                    self.stream.changed.notify_waiters();
                    return Ok(records);
                }
            }
            arrived.await;
        }
    }

    fn released(&mut self, acks: &[u64]) {
        lock(&self.stream.released).extend_from_slice(acks);
    }

    fn ack(&mut self, acks: Vec<u64>) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        let stream = Arc::clone(&self.stream);
        async move {
            loop {
                let released = stream.acks_released.notified();
                if !stream.acks_held.load(Relaxed) {
                    break;
                }
                released.await;
            }
            lock(&stream.ack_calls).push(acks.len());
            lock(&stream.acked).extend(acks);
            stream.changed.notify_waiters();
            Ok(())
        }
    }

    async fn dead_letter(&mut self, rejected: Vec<(Message, String)>) -> Result<(), ConnectorError> {
        lock(&self.stream.dead).extend(rejected);
        self.stream.changed.notify_waiters();
        Ok(())
    }

    async fn close(&mut self) {
        self.stream.closed.fetch_add(1, Relaxed);
        self.stream.changed.notify_waiters();
    }
}

/// A batch written to a [`MemorySink`], with its link's label.
pub type LabelledBatch = (String, Vec<Message>);

/// A sink that keeps every batch, tagged with its link's `label` config (required), so a test
/// can tell which link's config a write used. `write_delay` (a duration) slows every write.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    written: Arc<Mutex<Vec<LabelledBatch>>>,
}

impl MemorySink {
    /// Every batch written so far, with the label of the link that wrote it.
    #[must_use]
    pub fn written(&self) -> Vec<LabelledBatch> {
        lock(&self.written).clone()
    }
}

impl SinkConnector for MemorySink {
    type Config = (String, Duration);
    type Writer = MemoryWriter;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<(String, Duration), ConfigError> {
        Ok((
            config.required_str("label")?.to_string(),
            config.duration_or("write_delay", Duration::ZERO)?,
        ))
    }

    async fn open(&self, _: &LinkKey, (label, delay): (String, Duration)) -> Result<MemoryWriter, ConnectorError> {
        Ok(MemoryWriter {
            label,
            delay,
            written: Arc::clone(&self.written),
        })
    }
}

/// Writes into a [`MemorySink`].
#[derive(Debug)]
pub struct MemoryWriter {
    label: String,
    delay: Duration,
    written: Arc<Mutex<Vec<LabelledBatch>>>,
}

impl SinkWriter for MemoryWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        tokio::time::sleep(self.delay).await;
        lock(&self.written).push((self.label.clone(), batch));
        Ok(())
    }
}
