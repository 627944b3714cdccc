//! The background task of a buffered link: writes the buffer's batches, oldest first, to the
//! link's [`Target`] (a sink link's real writer, or a source link's step), and marks each
//! drained once the target has it.
//!
//! `retry` is tried again with backoff, for as long as it takes: later batches wait, so order
//! holds. `reject` cannot reach the caller any more (its write was answered success when the
//! batch was buffered): the rejected records are logged with their origins and counted
//! (`buffer_rejected`), and the batch is drained. When the link is deleted the drainer goes on
//! until the buffer is empty or [`FINAL_DRAIN`] has passed; what is left stays on disk for the
//! next time the link is put.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{BufferError, DiskBuffer, Pending};
use crate::backoff::Backoff;
use crate::link::LinkKey;
use crate::metrics::{InFlight, LinkMetrics};
use crate::{Failure, Message};

/// Where a drainer writes its buffer's batches.
pub(crate) trait Target: Send + Sync + 'static {
    /// Whether it can take batches now (a degraded sink link has no writer yet).
    fn ready(&self) -> bool;

    /// The most records and bytes one write may take: the drainer joins consecutive buffered
    /// batches up to these.
    fn limits(&self) -> (usize, u64);

    /// Writes one batch, counting the outcome in the link's own counters (`written`,
    /// `delivered`, ...); `Err(Failure::Retry)` also when it is not ready.
    fn write(&self, batch: Vec<Message>) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// How long a deleted link's drainer goes on writing what is buffered.
pub const FINAL_DRAIN: Duration = Duration::from_secs(5);

/// Delays between attempts to write a batch the sink answered `retry`.
const RETRY: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// How often a drainer looks whether its degraded link has connected.
const WRITER_POLL: Duration = Duration::from_millis(100);

/// Runs `f` on `buffer` on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    buffer: &Arc<DiskBuffer>,
    f: impl FnOnce(&DiskBuffer) -> Result<T, BufferError> + Send + 'static,
) -> Result<T, BufferError> {
    let buffer = Arc::clone(buffer);
    tokio::task::spawn_blocking(move || f(&buffer))
        .await
        .unwrap_or(Err(BufferError::Closed))
}

/// The drainer's view of the link's stop: `None` while the link runs, then the time by which
/// the final drain ends.
struct Stop<'a> {
    token: &'a CancellationToken,
    deadline: Option<Instant>,
}

impl Stop<'_> {
    fn deadline(&mut self) -> Option<Instant> {
        if self.deadline.is_none() && self.token.is_cancelled() {
            self.deadline = Some(Instant::now() + FINAL_DRAIN);
        }
        self.deadline
    }

    /// Runs `work` until it ends, or until the final drain's deadline passes (`None`).
    async fn bounded<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        if self.deadline().is_none() {
            tokio::select! {
                out = &mut work => return Some(out),
                () = self.token.cancelled() => {}
            }
        }
        let deadline = self.deadline()?;
        tokio::time::timeout_at(deadline, work).await.ok()
    }
}

/// Drains `buffer` into `target` until `stop` is cancelled (then within [`FINAL_DRAIN`]).
pub(crate) async fn run<T: Target>(
    target: Arc<T>,
    buffer: Arc<DiskBuffer>,
    key: LinkKey,
    metrics: Arc<LinkMetrics>,
    stop: CancellationToken,
) {
    let mut stop = Stop {
        token: &stop,
        deadline: None,
    };
    loop {
        if !target.ready() {
            if stop.deadline().is_some() {
                break;
            }
            let _ = stop.bounded(tokio::time::sleep(WRITER_POLL)).await;
            continue;
        }
        let appended = buffer.appended().notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let (max_records, max_bytes) = target.limits();
        match blocking(&buffer, move |b| b.oldest_run(max_records, max_bytes)).await {
            Ok(Some(pending)) => {
                if !deliver(&metrics, &*target, &buffer, &key, pending, &mut stop).await {
                    break;
                }
            }
            Ok(None) => {
                if stop.deadline().is_some() {
                    break;
                }
                if !buffer.drained_unsynced() {
                    let _ = stop.bounded(appended).await;
                } else if let Some(Err(_)) = stop
                    .bounded(tokio::time::timeout(buffer.sync_every().interval, appended))
                    .await
                {
                    // Idle for a while: make what was drained durable now, not at the next group.
                    if let Err(err) = blocking(&buffer, DiskBuffer::sync_drained).await {
                        error!(component = %key.component, link = %key.name, error = %err, "writing the drained position failed");
                    }
                }
            }
            Err(BufferError::Closed) => break,
            Err(err) => {
                error!(component = %key.component, link = %key.name, error = %err, "reading the sink buffer failed");
                if stop.bounded(tokio::time::sleep(Duration::from_secs(1))).await.is_none() {
                    break;
                }
            }
        }
    }
    if !buffer.is_empty() {
        info!(component = %key.component, link = %key.name, dir = %buffer.dir().display(), "the link stopped with batches left in its buffer: they are written when the link is put again");
    }
}

/// Writes one batch until the target has it (then marks it drained) or the final drain ends
/// (`false`: the batch stays buffered).
async fn deliver<T: Target>(
    metrics: &LinkMetrics,
    target: &T,
    buffer: &Arc<DiskBuffer>,
    key: &LinkKey,
    pending: Pending,
    stop: &mut Stop<'_>,
) -> bool {
    let records = pending.batch.len();
    let mut attempt = 0;
    loop {
        let span = tracing::info_span!(
            "drain",
            component = %key.component,
            link = %key.name,
            records,
            outcome = tracing::field::Empty,
        );
        let result = {
            let _gauge = InFlight::enter(&metrics.in_flight);
            let write = tracing::Instrument::instrument(target.write(pending.batch.clone()), span.clone());
            match stop.bounded(write).await {
                Some(result) => result,
                None => return false,
            }
        };
        match result {
            Ok(()) => {
                span.record("outcome", "written");
                break;
            }
            Err(Failure::Reject(rejected)) => {
                span.record("outcome", "rejected");
                for r in &rejected {
                    let origin = pending.batch.get(r.index as usize).map_or("?", |m| m.origin.as_str());
                    warn!(component = %key.component, link = %key.name, origin, reason = %r.reason, "a buffered record was rejected; it was acknowledged when it was buffered, so it is dropped");
                }
                LinkMetrics::add(&metrics.buffer_rejected, rejected.len());
                break;
            }
            Err(Failure::Retry(reason)) => {
                span.record("outcome", "retry");
                attempt += 1;
                let delay = RETRY.delay(attempt);
                warn!(component = %key.component, link = %key.name, %reason, attempt, ?delay, "a buffered batch cannot be written yet; trying again");
                if stop.bounded(tokio::time::sleep(delay)).await.is_none() {
                    return false;
                }
            }
        }
    }
    let position = pending.position;
    if let Err(err) = blocking(buffer, move |b| b.drained(position)).await {
        // The batch was written: at worst it is written again after a restart.
        error!(component = %key.component, link = %key.name, error = %err, "marking a buffered batch drained failed");
    }
    true
}

/// Appends `batch` to `buffer`; when it is full (`buffer_full = "block"`), waits for room until
/// `deadline`, then answers the last [`BufferError::Full`].
pub(crate) async fn append_waiting(
    buffer: &Arc<DiskBuffer>,
    batch: Arc<Vec<Message>>,
    deadline: Instant,
) -> Result<(), BufferError> {
    loop {
        let freed = buffer.freed().notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let appending = Arc::clone(&batch);
        match blocking(buffer, move |b| b.append(&appending)).await {
            Err(err @ BufferError::Full { .. }) => {
                if Instant::now() >= deadline || tokio::time::timeout_at(deadline, freed).await.is_err() {
                    return Err(err);
                }
            }
            other => return other,
        }
    }
}
