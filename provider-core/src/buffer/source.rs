//! A source link's disk buffer (`buffer = "disk"` on a source link), for sources that cannot
//! replay what they read (Modbus polls, HTTP requests): the link's reader delivers into the
//! buffer, so a record is acknowledged to its source (an HTTP request answered 200) once it is
//! fsynced there, and a drainer delivers the buffer's batches to the step, oldest first, with
//! retry and backoff, for as long as the step (or what is behind it) is down.
//!
//! The buffer lives in `buffer_dir/<component>/<link>/source`, apart from a sink link's buffer of
//! the same name. What the step rejects cannot be rejected to the source any more: it is logged
//! with its origin and counted (`buffer_rejected`), not dead-lettered. The link's `delivered`
//! counts records handed into the buffer; `buffer_drained` those the step took from it.
//!
//! Order: a batch is appended once the one before it in its ordering lane was (the runner keeps
//! one batch per lane in flight), so records with an order key keep their order; batches of
//! records without one may be appended in any order, as they may be delivered without a buffer.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::drainer::{self, Target};
use super::{BufferError, BufferOptions, DiskBuffer};
use crate::link::LinkKey;
use crate::metrics::LinkMetrics;
use crate::sink::reject_all;
use crate::source::{attempt, Attempt, Ingest, RunnerSettings};
use crate::{Failure, Message, Rejected};

/// The directory of a source link's buffer under `buffer_dir`.
#[must_use]
pub fn dir(key: &LinkKey, options: &BufferOptions) -> std::path::PathBuf {
    key.dir_in(&options.dir).join("source")
}

/// What a buffered source link's reader delivers to: the link's buffer.
pub(crate) struct BufferedIngest {
    buffer: Arc<DiskBuffer>,
    key: LinkKey,
    metrics: Arc<LinkMetrics>,
    /// How long a delivery waits for room in a full buffer (`block`) before it is answered `retry`.
    wait: Duration,
    max_batch_bytes: Option<u64>,
}

impl Ingest for BufferedIngest {
    async fn deliver(&self, batch: &[Message]) -> Result<Result<(), Failure>, anyhow::Error> {
        let deadline = Instant::now() + self.wait;
        let records = batch.len();
        Ok(
            match drainer::append_waiting(&self.buffer, Arc::new(batch.to_vec()), deadline).await {
                Ok(()) => Ok(()),
                Err(err @ BufferError::Full { .. }) => {
                    LinkMetrics::add(&self.metrics.busy, 1);
                    Err(Failure::Retry(format!("source buffer full: {}: {err}", self.key)))
                }
                Err(err @ BufferError::TooLarge { .. }) => Err(reject_all(records, &format!("source buffer: {err}"))),
                Err(err) => Err(Failure::Retry(format!("source buffer failed: {}: {err}", self.key))),
            },
        )
    }

    fn max_batch_bytes(&self) -> Option<u64> {
        self.max_batch_bytes
    }
}

/// The linked step, as a source buffer's drainer delivers to it.
struct Step<I> {
    ingest: Arc<I>,
    deliver_timeout: Duration,
    /// `max_batch_records` and `max_batch_bytes` (within the transport's limit): buffered
    /// batches are joined up to these.
    max_batch_records: usize,
    max_batch_bytes: u64,
    metrics: Arc<LinkMetrics>,
}

impl<I: Ingest> Target for Step<I> {
    fn ready(&self) -> bool {
        true
    }

    fn limits(&self) -> (usize, u64) {
        (self.max_batch_records, self.max_batch_bytes)
    }

    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        // `delivered` and `rejected` count what the link's reader handed on (into the buffer);
        // what the step took shows in `buffer_drained` and `buffer_rejected`.
        let counted = LinkMetrics::default();
        match attempt(&*self.ingest, &batch, self.deliver_timeout, &counted).await {
            Attempt::Delivered => Ok(()),
            Attempt::Rejected(reasons) => Err(Failure::Reject(
                reasons
                    .into_iter()
                    .map(|(index, reason)| Rejected {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        reason,
                    })
                    .collect(),
            )),
            Attempt::Failed(reason) => {
                LinkMetrics::add(&self.metrics.retried, 1);
                Err(Failure::Retry(reason))
            }
        }
    }
}

/// A source link's open buffer and its drainer.
pub(crate) struct SourceBuffer {
    buffer: Arc<DiskBuffer>,
    drainer: JoinHandle<()>,
}

impl SourceBuffer {
    /// Opens the buffer of source link `key` (recovering what an earlier run left) and starts
    /// draining it into `ingest` until `stop` is cancelled. Returns what the link's reader
    /// delivers to instead of `ingest`.
    pub(crate) async fn start<I: Ingest>(
        key: &LinkKey,
        options: &BufferOptions,
        ingest: Arc<I>,
        settings: &RunnerSettings,
        metrics: Arc<LinkMetrics>,
        stop: CancellationToken,
    ) -> Result<(BufferedIngest, Self), BufferError> {
        let (path, opts, m) = (dir(key, options), options.clone(), Arc::clone(&metrics));
        let (buffer, recovered) = tokio::task::spawn_blocking(move || DiskBuffer::open(path, &opts, m))
            .await
            .unwrap_or(Err(BufferError::Closed))?;
        if recovered.batches > 0 || recovered.torn_bytes > 0 || recovered.corrupt_frames > 0 {
            tracing::info!(component = %key.component, link = %key.name, ?recovered, "replaying the source buffer");
        }
        let buffer = Arc::new(buffer);
        let max_batch_bytes = ingest.max_batch_bytes();
        let step = Step {
            ingest,
            deliver_timeout: settings.deliver_timeout,
            max_batch_records: settings.max_batch_records,
            max_batch_bytes: settings.max_batch_bytes.min(max_batch_bytes.unwrap_or(u64::MAX)),
            metrics: Arc::clone(&metrics),
        };
        let drainer = tokio::spawn(drainer::run(
            Arc::new(step),
            Arc::clone(&buffer),
            key.clone(),
            Arc::clone(&metrics),
            stop,
        ));
        let ingest = BufferedIngest {
            buffer: Arc::clone(&buffer),
            key: key.clone(),
            metrics,
            wait: settings.deliver_timeout / 2,
            max_batch_bytes,
        };
        Ok((ingest, Self { buffer, drainer }))
    }

    /// Once the link has stopped (its stop cancelled, its reader done): waits for the drainer's
    /// final drain ([`FINAL_DRAIN`](super::FINAL_DRAIN)) and closes the buffer; what is left in it
    /// is delivered when the link is put again.
    pub(crate) async fn finish(self) {
        if let Err(err) = self.drainer.await {
            tracing::error!(error = %err, "a source buffer drainer failed");
        }
        self.buffer.close();
    }
}
