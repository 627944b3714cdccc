//! In-memory connectors for tests (feature `testing`): a source whose records, acknowledgements
//! and dead letters the test controls and inspects, and a sink that keeps what it was given.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::{ConfigError, ConfigReader};
use crate::link::LinkKey;
use crate::sink::{SinkConnector, SinkWriter};
use crate::source::{Ingest, Record, SourceConnector, SourceReader};
use crate::{ConnectorError, Failure, Message, Rejected};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A source of records pushed by the test, one stream per link.
///
/// Link config: `ordered` (bool): keep records with the same message key in order;
/// `dead_letter_topic`: a destination made with [`MemorySource::create_topic`], checked when the
/// link is put (dead letters are kept in the link's [`MemoryStream`] either way).
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    streams: Arc<Mutex<HashMap<LinkKey, Arc<MemoryStream>>>>,
    topics: Arc<Mutex<HashSet<String>>>,
}

/// A [`MemorySource`] link's config.
#[derive(Debug, Clone)]
pub struct MemorySourceConfig {
    /// `ordered`.
    pub ordered: bool,
    /// `dead_letter_topic`.
    pub dead_letter_topic: Option<String>,
    /// `single_reader`: read only while this instance holds the link's lease.
    pub single_reader: bool,
}

impl MemorySource {
    /// Makes `topic` exist, for links naming it as their `dead_letter_topic`.
    pub fn create_topic(&self, topic: &str) {
        lock(&self.topics).insert(topic.to_string());
    }

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
    opened: AtomicU64,
    polled: AtomicU64,
    acked: Mutex<Vec<u64>>,
    released: Mutex<Vec<u64>>,
    ack_calls: Mutex<Vec<usize>>,
    acks_held: AtomicBool,
    acks_released: Notify,
    dead: Mutex<Vec<(Message, String)>>,
    dead_letter_error: Mutex<Option<String>>,
    dead_letter_calls: AtomicU64,
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

    /// How many readers were opened on this stream.
    pub fn opened(&self) -> u64 {
        self.opened.load(Relaxed)
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

    /// While `error` is set, dead-letter writes fail with it (a destination that is down).
    pub fn fail_dead_letters(&self, error: Option<&str>) {
        *lock(&self.dead_letter_error) = error.map(str::to_string);
    }

    /// How many dead-letter writes were attempted, failed ones included.
    pub fn dead_letter_calls(&self) -> u64 {
        self.dead_letter_calls.load(Relaxed)
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
    type Config = MemorySourceConfig;
    type Reader = MemoryReader;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<MemorySourceConfig, ConfigError> {
        Ok(MemorySourceConfig {
            ordered: config.bool_or("ordered", false)?,
            dead_letter_topic: config.str("dead_letter_topic").map(str::to_string),
            single_reader: config.bool_or("single_reader", false)?,
        })
    }

    fn single_reader(&self, config: &MemorySourceConfig) -> bool {
        config.single_reader
    }

    async fn check(&self, _: &LinkKey, config: &MemorySourceConfig) -> Result<(), ConnectorError> {
        match &config.dead_letter_topic {
            Some(topic) if !lock(&self.topics).contains(topic) => Err(ConnectorError::msg(format!(
                "dead_letter_topic: topic `{topic}` does not exist"
            ))),
            _ => Ok(()),
        }
    }

    async fn open(&self, link: &LinkKey, config: MemorySourceConfig) -> Result<MemoryReader, ConnectorError> {
        let stream = self.stream(link);
        stream.opened.fetch_add(1, Relaxed);
        Ok(MemoryReader {
            stream,
            ordered: config.ordered,
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

    fn dead_letter(
        &mut self,
        rejected: Vec<(Message, String)>,
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        let stream = Arc::clone(&self.stream);
        async move {
            stream.dead_letter_calls.fetch_add(1, Relaxed);
            let failure = lock(&stream.dead_letter_error).clone();
            let result = match failure {
                Some(error) => Err(ConnectorError::msg(error)),
                None => {
                    lock(&stream.dead).extend(rejected);
                    Ok(())
                }
            };
            stream.changed.notify_waiters();
            result
        }
    }

    async fn close(&mut self) {
        self.stream.closed.fetch_add(1, Relaxed);
        self.stream.changed.notify_waiters();
    }
}

/// A batch written to a [`MemorySink`], with its link's label.
pub type LabelledBatch = (String, Vec<Message>);

/// A sink that keeps every batch, tagged with its link's `label` config (required), so a test
/// can tell which link's config a write used. `write_delay` (a duration) slows every write;
/// `check_error` / `open_error` make [`SinkConnector::check`] / opening the link fail (for good)
/// with that message. [`MemorySink::set_down`] makes every write answer `retry`.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    written: Arc<Mutex<Vec<LabelledBatch>>>,
    down: Arc<Mutex<Option<String>>>,
}

impl MemorySink {
    /// While `reason` is set, every write of every link answers `retry` with it (a sink system
    /// that is down); `None` brings it back.
    pub fn set_down(&self, reason: Option<&str>) {
        *lock(&self.down) = reason.map(str::to_string);
    }

    /// Every batch written so far, with the label of the link that wrote it.
    #[must_use]
    pub fn written(&self) -> Vec<LabelledBatch> {
        lock(&self.written).clone()
    }
}

/// A [`MemorySink`] link's config.
#[derive(Debug, Clone)]
pub struct MemorySinkConfig {
    /// `label`.
    pub label: String,
    /// `write_delay`.
    pub delay: Duration,
    /// `check_error`.
    pub check_error: Option<String>,
    /// `open_error`.
    pub open_error: Option<String>,
}

impl SinkConnector for MemorySink {
    type Config = MemorySinkConfig;
    type Writer = MemoryWriter;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<MemorySinkConfig, ConfigError> {
        Ok(MemorySinkConfig {
            label: config.required_str("label")?.to_string(),
            delay: config.duration_or("write_delay", Duration::ZERO)?,
            check_error: config.str("check_error").map(str::to_string),
            open_error: config.str("open_error").map(str::to_string),
        })
    }

    async fn check(&self, _: &LinkKey, config: &MemorySinkConfig) -> Result<(), ConnectorError> {
        config
            .check_error
            .as_ref()
            .map_or(Ok(()), |e| Err(ConnectorError::msg(e)))
    }

    async fn open(&self, _: &LinkKey, config: MemorySinkConfig) -> Result<MemoryWriter, ConnectorError> {
        let MemorySinkConfig {
            label,
            delay,
            open_error,
            ..
        } = config;
        if let Some(error) = open_error {
            return Err(ConnectorError::msg(error));
        }
        Ok(MemoryWriter {
            label,
            delay,
            written: Arc::clone(&self.written),
            down: Arc::clone(&self.down),
        })
    }
}

/// Writes into a [`MemorySink`].
#[derive(Debug)]
pub struct MemoryWriter {
    label: String,
    delay: Duration,
    written: Arc<Mutex<Vec<LabelledBatch>>>,
    down: Arc<Mutex<Option<String>>>,
}

impl SinkWriter for MemoryWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        tokio::time::sleep(self.delay).await;
        if let Some(reason) = lock(&self.down).clone() {
            return Err(Failure::Retry(reason));
        }
        lock(&self.written).push((self.label.clone(), batch));
        Ok(())
    }
}

/// A component in the test's own process, for [`crate::Engine::put_source_link`]: it accepts every
/// record except those whose payload starts with `bad`, which it rejects, and keeps what it
/// accepted. Clones share what was accepted.
#[derive(Debug, Clone, Default)]
pub struct MemoryIngest {
    accepted: Arc<Mutex<Vec<Message>>>,
    down: Arc<Mutex<Option<String>>>,
}

impl MemoryIngest {
    /// Every record accepted so far, in delivery order.
    #[must_use]
    pub fn accepted(&self) -> Vec<Message> {
        lock(&self.accepted).clone()
    }

    /// While `Some`, every delivery is answered `retry` with this reason (the step or what is
    /// behind it is down).
    pub fn set_down(&self, reason: Option<&str>) {
        *lock(&self.down) = reason.map(str::to_string);
    }
}

impl Ingest for MemoryIngest {
    async fn deliver(&self, batch: &[Message]) -> Result<Result<(), Failure>, anyhow::Error> {
        if let Some(reason) = lock(&self.down).clone() {
            return Ok(Err(Failure::Retry(reason)));
        }
        let mut rejected = Vec::new();
        let mut accepted = lock(&self.accepted);
        for (index, message) in batch.iter().enumerate() {
            if message.payload.starts_with(b"bad") {
                rejected.push(Rejected {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    reason: "bad record".into(),
                });
            } else {
                accepted.push(message.clone());
            }
        }
        Ok(if rejected.is_empty() {
            Ok(())
        } else {
            Err(Failure::Reject(rejected))
        })
    }
}
