//! Sinks: a connector writes batches to its system; the engine routes each `sink.write` to the
//! calling component's own link and bounds how many writes a link runs at once.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::buffer::{drainer, BufferError, BufferOptions, DiskBuffer};
use crate::config::{ConfigError, ConfigReader};
use crate::link::LinkKey;
use crate::metrics::{LinkHealth, LinkMetrics};
use crate::{ConnectorError, Failure, Message, Rejected};

/// A sink system, as a connector sees it: how to read a link's config and open a writer.
pub trait SinkConnector: Send + Sync + 'static {
    /// The connector's typed config for one link (cloned when opening is tried again).
    type Config: Clone + Send + Sync + 'static;
    /// Writes one link's batches.
    type Writer: SinkWriter;

    /// `false` for [`crate::Unsupported`]: the provider refuses links in this role.
    const ENABLED: bool = true;

    /// `true` when a link's writer holds something a second writer of the same link cannot share
    /// (a spool directory, an MQTT client id, a device's only connection). Then a link put again
    /// is [checked](Self::check), its old writer closed, and only then the new one opened;
    /// otherwise the new writer is opened before the old one closes.
    const EXCLUSIVE: bool = false;

    /// Parses a link's config. Keys the engine itself reads are already taken.
    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<Self::Config, ConfigError>;

    /// Checks what can be checked of a link without taking what its writer holds: that the
    /// system answers and what the link names exists. An error refuses the link as an error of
    /// [`open`](Self::open) does. The engine calls it before every `open`, and for an
    /// [exclusive](Self::EXCLUSIVE) connector before it closes the writer of a link put again,
    /// which keeps writing if this fails. The default checks nothing.
    fn check(&self, link: &LinkKey, config: &Self::Config) -> impl Future<Output = Result<(), ConnectorError>> + Send {
        let _ = (link, config);
        async { Ok(()) }
    }

    /// Connects to the system for one link (after [`check`](Self::check) passed).
    fn open(
        &self,
        link: &LinkKey,
        config: Self::Config,
    ) -> impl Future<Output = Result<Self::Writer, ConnectorError>> + Send;
}

/// Writes batches of one link to a sink system.
pub trait SinkWriter: Send + Sync + 'static {
    /// Writes a batch. `Ok` only once every record is durable in the target; `Failure::Reject`
    /// for records that can never be written (every other record is durable); `Failure::Retry`
    /// when the batch should be written again later, whether or not some of its records were
    /// already kept (a retried batch may write those twice: at-least-once, as the WIT says).
    fn write(&self, batch: Vec<Message>) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Flushes and closes; called once when the link is deleted, after its last write.
    fn close(&self) -> impl Future<Output = Result<(), ConnectorError>> + Send {
        async { Ok(()) }
    }
}

/// How a sink link bounds its work. Read from the link config by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// `max_concurrent_writes`: writes running at once for this link (default 4).
    pub max_concurrent_writes: usize,
    /// `slot_wait`: how long a write waits for one of those slots before it is answered `retry`
    /// (default 1s). Waiting is cheaper than refusing: a refused batch has already crossed the
    /// host and the step, and comes back only after the source's backoff. Keep it below the
    /// sources' `deliver_timeout` (5s; 2s for HTTP).
    pub slot_wait: Duration,
    /// `buffer = "disk"` and its `buffer_*` keys: writes are answered once the batch is in a
    /// durable local buffer, which a background task drains into the sink (see
    /// [`crate::buffer`]). `None` (`buffer = "none"`, the default): writes go straight to the sink.
    pub buffer: Option<BufferOptions>,
}

impl SinkSettings {
    /// Reads the engine's keys from a link's config.
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            max_concurrent_writes: config.positive_or("max_concurrent_writes", 4)?,
            slot_wait: config.duration_or("slot_wait", Duration::from_secs(1))?,
            buffer: BufferOptions::from_config(config)?,
        })
    }
}

/// Every record of a batch of `records` rejected with `reason`.
pub(crate) fn reject_all(records: usize, reason: &str) -> Failure {
    Failure::Reject(
        (0..records)
            .map(|i| Rejected {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                reason: reason.to_owned(),
            })
            .collect(),
    )
}

/// One live sink link: its writer once it is open (a degraded link has none yet).
pub(crate) struct SinkLink<W> {
    pub(crate) writer: OnceLock<W>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) settings: SinkSettings,
    pub(crate) metrics: Arc<LinkMetrics>,
    /// Cancels the background opening of a degraded link, and ends its drainer.
    pub(crate) stop: CancellationToken,
    /// The link's disk buffer, once opened (`buffer = "disk"`).
    pub(crate) buffer: OnceLock<Arc<DiskBuffer>>,
    /// The task draining `buffer`.
    drainer: Mutex<Option<JoinHandle<()>>>,
}

impl<W: SinkWriter> SinkLink<W> {
    /// A link with no writer yet.
    pub(crate) fn new(settings: SinkSettings) -> Self {
        Self {
            writer: OnceLock::new(),
            permits: Arc::new(Semaphore::new(settings.max_concurrent_writes)),
            settings,
            metrics: Arc::new(LinkMetrics::default()),
            stop: CancellationToken::new(),
            buffer: OnceLock::new(),
            drainer: Mutex::new(None),
        }
    }

    /// Opens the link's disk buffer in `options.dir` (recovering what an earlier run left) and
    /// starts draining it into the writer, once there is one.
    pub(crate) async fn start_buffer(
        self: &Arc<Self>,
        key: &LinkKey,
        options: &BufferOptions,
    ) -> Result<(), BufferError> {
        let dir = key.dir_in(&options.dir);
        let (opts, metrics) = (options.clone(), Arc::clone(&self.metrics));
        let (buffer, recovered) = tokio::task::spawn_blocking(move || DiskBuffer::open(dir, &opts, metrics))
            .await
            .unwrap_or(Err(BufferError::Closed))?;
        if recovered.batches > 0 || recovered.torn_bytes > 0 || recovered.corrupt_frames > 0 {
            tracing::info!(component = %key.component, link = %key.name, ?recovered, "replaying the sink buffer");
        }
        let buffer = Arc::new(buffer);
        let _ = self.buffer.set(Arc::clone(&buffer));
        let task = tokio::spawn(drainer::run(
            Arc::clone(self),
            buffer,
            key.clone(),
            Arc::clone(&self.metrics),
            self.stop.clone(),
        ));
        *self.drainer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        Ok(())
    }

    /// Writes a batch (to the buffer, when the link has one) if the link is open and a slot is
    /// free within `slot_wait`, else answers `retry`.
    pub(crate) async fn write(&self, key: &LinkKey, batch: Vec<Message>) -> Result<(), Failure> {
        let buffer = self.buffer.get();
        let writer = self.writer.get();
        if buffer.is_none() && writer.is_none() {
            LinkMetrics::add(&self.metrics.write_failures, 1);
            let reason = match self.metrics.health() {
                LinkHealth::Degraded(reason) | LinkHealth::Refused(reason) => reason,
                // Only source links stand by.
                LinkHealth::Ok | LinkHealth::Standby(_) => "opening".into(),
            };
            return Err(Failure::Retry(format!("sink not connected: {key}: {reason}")));
        }
        let deadline = tokio::time::Instant::now() + self.settings.slot_wait;
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, self.permits.acquire()).await else {
            LinkMetrics::add(&self.metrics.busy, 1);
            return Err(Failure::Retry(format!(
                "sink busy: {key} had {} writes in flight for {:?}",
                self.settings.max_concurrent_writes, self.settings.slot_wait
            )));
        };
        match (buffer, writer) {
            (Some(buffer), _) => self.append(key, buffer, batch, deadline).await,
            (None, Some(writer)) => self.write_through(key, writer, batch).await,
            (None, None) => Err(Failure::Retry(format!("sink not connected: {key}"))),
        }
    }

    /// Appends a batch to the link's buffer. When it is full (`buffer_full = "block"`), waits
    /// for room until `deadline`, then answers `retry`.
    async fn append(
        &self,
        key: &LinkKey,
        buffer: &Arc<DiskBuffer>,
        batch: Vec<Message>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Failure> {
        let records = batch.len();
        match drainer::append_waiting(buffer, Arc::new(batch), deadline).await {
            Ok(()) => Ok(()),
            Err(err @ BufferError::Full { .. }) => {
                LinkMetrics::add(&self.metrics.busy, 1);
                Err(Failure::Retry(format!("sink buffer full: {key}: {err}")))
            }
            Err(err @ BufferError::TooLarge { .. }) => {
                LinkMetrics::add(&self.metrics.write_failures, 1);
                Err(reject_all(records, &format!("sink buffer: {err}")))
            }
            Err(err) => {
                LinkMetrics::add(&self.metrics.write_failures, 1);
                Err(Failure::Retry(format!("sink buffer failed: {key}: {err}")))
            }
        }
    }

    /// Writes a batch straight to the sink.
    async fn write_through(&self, key: &LinkKey, writer: &W, batch: Vec<Message>) -> Result<(), Failure> {
        let _gauge = crate::metrics::InFlight::enter(&self.metrics.in_flight);
        let records = batch.len();
        let span = tracing::info_span!(
            "write",
            component = %key.component,
            link = %key.name,
            records,
            bytes = batch.iter().map(|m| m.payload.len()).sum::<usize>(),
            outcome = tracing::field::Empty,
        );
        let result = tracing::Instrument::instrument(writer.write(batch), span.clone()).await;
        match &result {
            Ok(()) => {
                LinkMetrics::add(&self.metrics.written, records);
                span.record("outcome", "written");
            }
            Err(Failure::Retry(_)) => {
                LinkMetrics::add(&self.metrics.write_failures, 1);
                span.record("outcome", "retry");
            }
            Err(Failure::Reject(rejected)) => {
                LinkMetrics::add(&self.metrics.write_failures, 1);
                LinkMetrics::add(&self.metrics.written, records.saturating_sub(rejected.len()));
                span.record("outcome", "rejected");
            }
        }
        result
    }

    /// Waits for running writes to finish, stops opening a degraded link, lets the drainer
    /// write what is buffered (within [`drainer::FINAL_DRAIN`]), then closes the writer and the
    /// buffer (what is left in it stays on disk).
    pub(crate) async fn drain(&self) -> Result<(), ConnectorError> {
        let max = u32::try_from(self.settings.max_concurrent_writes).unwrap_or(u32::MAX);
        let _all = self.permits.acquire_many(max).await;
        self.stop.cancel();
        let task = self
            .drainer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "a sink buffer drainer failed");
            }
        }
        if let Some(buffer) = self.buffer.get() {
            buffer.close();
        }
        match self.writer.get() {
            Some(writer) => writer.close().await,
            None => Ok(()),
        }
    }
}

/// A buffered sink link's drainer writes to the link's writer, once it has one.
impl<W: SinkWriter> drainer::Target for SinkLink<W> {
    fn ready(&self) -> bool {
        self.writer.get().is_some()
    }

    /// A runner's default batch: 512 records, 1 MiB.
    fn limits(&self) -> (usize, u64) {
        (512, 1 << 20)
    }

    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        let Some(writer) = self.writer.get() else {
            return Err(Failure::Retry("sink not connected".into()));
        };
        let records = batch.len();
        let result = writer.write(batch).await;
        match &result {
            Ok(()) => LinkMetrics::add(&self.metrics.written, records),
            Err(Failure::Reject(rejected)) => {
                LinkMetrics::add(&self.metrics.write_failures, 1);
                LinkMetrics::add(&self.metrics.written, records.saturating_sub(rejected.len()));
            }
            Err(Failure::Retry(_)) => LinkMetrics::add(&self.metrics.write_failures, 1),
        }
        result
    }
}
