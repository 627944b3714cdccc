//! A durable local buffer for a sink link (`buffer = "disk"`): an append-only log of batches on
//! local disk, drained in order into the real sink by a background task. The same buffer serves
//! a source link (see [`source`]): there it sits between the source and the step.
//!
//! A `sink.write` is answered success once its batch is in the log and fsynced; the drainer then
//! writes the batches, oldest first, to the connector's [`SinkWriter`](crate::SinkWriter),
//! retrying `retry` with backoff, and marks each one drained once the sink has it. So a sink that
//! is down does not hold up the pipeline until the buffer is full.
//!
//! # On disk
//! A link's log lives in `buffer_dir/<component>/<link>` ([`LinkKey::dir_in`](crate::LinkKey::dir_in)):
//! - segment files `{n:020}.seg`, each a run of frames (`len | crc32 | body`, the body being the append time and the
//!   [encoded](crate::codec) batch); a new
//!   segment starts when the current one reaches its size, and when the log is opened;
//! - `drained`, the position of the oldest record not yet drained, replaced atomically; it is
//!   written once per group of drained batches ([`SyncDrained`]: 64 batches or 100 ms, and
//!   when the drainer goes idle or the link closes), not once per batch;
//! - `lock`, held (`flock`) while the log is open, so two processes never share a log.
//!
//! # Guarantees
//! - **kill -9 / power loss**: every batch whose append returned is replayed after a restart,
//!   in order. On open, a torn tail (a frame cut short, or a last frame whose checksum fails) is
//!   cut off; a frame in the middle whose checksum fails is skipped and logged (its records are
//!   lost: bit rot, not a crash, makes such a frame). The batches drained since the drained
//!   position was last written (at most one group: [`SyncDrained`]) are written to the sink
//!   again (at-least-once).
//! - **disk loss**: nothing in the buffer survives the loss of the disk it is on.
//! - **full**: with [`FullPolicy::Block`] an append that does not fit is refused (the sink answers
//!   `retry`, pushing back to the source as without a buffer); with [`FullPolicy::DropOldest`]
//!   the oldest whole batches are dropped to make room, logged with their records' origins and
//!   counted. A batch larger than the whole buffer never fits and is refused.
//! - **age**: with a `max_age`, batches older than it are dropped (logged and counted) before
//!   they are drained.

mod checkpoint;
pub(crate) mod drainer;
mod frame;
mod log;
mod segment;
pub mod source;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::{parse_duration, ConfigError, ConfigReader};
use crate::metrics::LinkMetrics;
use crate::time::unix_ms as now_ms;
use crate::Message;

pub use self::drainer::FINAL_DRAIN;
use self::log::Log;

/// What to do when a batch does not fit in the buffer (`buffer_full`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FullPolicy {
    /// `block`: refuse the batch (the sink answers `retry` once `slot_wait` passed without room).
    #[default]
    Block,
    /// `drop_oldest`: drop the oldest whole batches until the new one fits.
    DropOldest,
}

/// How a link's disk buffer is bounded, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferOptions {
    /// `buffer_dir`: the root under which each link has its own directory.
    pub dir: PathBuf,
    /// `buffer_max_bytes`: the most bytes of batches not yet drained (default 1 GiB). The files
    /// may hold up to one segment more, of drained batches not yet deleted.
    pub max_bytes: u64,
    /// `buffer_max_age`: batches older than this are dropped instead of drained (default: none).
    pub max_age: Option<Duration>,
    /// `buffer_full`: what an append does when the buffer is full (default `block`).
    pub full: FullPolicy,
    /// The size at which a new segment file starts (not a link key: an eighth of `max_bytes`,
    /// at least 4 KiB and at most 64 MiB).
    pub segment_bytes: u64,
    /// How often the drained position is made durable (not a link key).
    pub sync_drained: SyncDrained,
}

/// When the drained position is written (and fsynced): once `batches` batches were drained since
/// it was last written, or `interval` after that, whichever comes first; and when the drainer
/// finds nothing more to drain for `interval`, and when the log is closed. After a kill -9 the
/// batches drained since the last write are drained again: at most one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncDrained {
    /// Most batches drained between two writes (at least 1).
    pub batches: usize,
    /// Longest time between a drained batch and the write that covers it.
    pub interval: Duration,
}

impl Default for SyncDrained {
    /// 64 batches or 100 ms.
    fn default() -> Self {
        Self {
            batches: 64,
            interval: Duration::from_millis(100),
        }
    }
}

/// The default `buffer_max_bytes`: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

impl BufferOptions {
    /// Options for a buffer under `dir`, bounded to `max_bytes`, blocking when full.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            dir: dir.into(),
            max_bytes,
            max_age: None,
            full: FullPolicy::Block,
            segment_bytes: (max_bytes / 8).clamp(4 << 10, 64 << 20),
            sync_drained: SyncDrained::default(),
        }
    }

    /// Reads `buffer`, and when it is `disk`, `buffer_dir` (required), `buffer_max_bytes`,
    /// `buffer_max_age` and `buffer_full`. `None` for `buffer = "none"` (the default).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key at fault.
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Option<Self>, ConfigError> {
        match config.str("buffer").unwrap_or("none") {
            "none" | "" => return Ok(None),
            "disk" => {}
            other => {
                return Err(ConfigError::invalid(
                    "buffer",
                    format!("expected `none` or `disk`, got `{other}`"),
                ))
            }
        }
        let dir = config.required_str("buffer_dir")?;
        let max_bytes = config.size_or("buffer_max_bytes", DEFAULT_MAX_BYTES)?;
        if max_bytes == 0 {
            return Err(ConfigError::invalid("buffer_max_bytes", "expected a size above 0"));
        }
        let max_age = config
            .str("buffer_max_age")
            .map(|v| parse_duration(v).map_err(|reason| ConfigError::invalid("buffer_max_age", reason)))
            .transpose()?;
        let full = match config.str("buffer_full").unwrap_or("block") {
            "block" => FullPolicy::Block,
            "drop_oldest" => FullPolicy::DropOldest,
            other => {
                return Err(ConfigError::invalid(
                    "buffer_full",
                    format!("expected `block` or `drop_oldest`, got `{other}`"),
                ))
            }
        };
        Ok(Some(Self {
            max_age,
            full,
            ..Self::new(dir, max_bytes)
        }))
    }
}

/// Where a record starts: its segment and its byte offset in it. Records are ordered by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The segment's number.
    pub segment: u64,
    /// The record's offset in the segment.
    pub offset: u64,
}

/// The oldest batch not yet drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Where it is; pass it to [`DiskBuffer::drained`] once the sink has it.
    pub position: Position,
    /// Its records.
    pub batch: Vec<Message>,
}

/// What went wrong with a disk buffer.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The buffer holds `max_bytes` already and the full policy is `block`.
    #[error("{buffered} of {max} bytes buffered, no room for a batch of {needed}")]
    Full {
        /// Bytes not yet drained.
        buffered: u64,
        /// `buffer_max_bytes`.
        max: u64,
        /// The framed size of the batch refused.
        needed: u64,
    },
    /// The batch alone is larger than the whole buffer: it can never be appended.
    #[error("a batch of {needed} bytes can never fit a buffer of {max} bytes")]
    TooLarge {
        /// The framed size of the batch.
        needed: u64,
        /// `buffer_max_bytes`.
        max: u64,
    },
    /// Another process (or another open link) holds this log.
    #[error("the buffer {} is in use by another process or link", .0.display())]
    Locked(PathBuf),
    /// The buffer was closed (its link was deleted).
    #[error("the buffer is closed")]
    Closed,
    /// Reading or writing the log failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl BufferError {
    fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { context, path, source }
    }
}

/// What [`DiskBuffer::open`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Batches not yet drained, to be replayed.
    pub batches: usize,
    /// Records in them.
    pub records: u64,
    /// Bytes cut off torn segment tails.
    pub torn_bytes: u64,
    /// Frames skipped because their checksum failed.
    pub corrupt_frames: usize,
}

/// One link's durable buffer, shared by its writes (appending) and its drainer (reading).
///
/// Its methods do blocking file I/O (an append fsyncs): call them from blocking threads.
#[derive(Debug)]
pub struct DiskBuffer {
    dir: PathBuf,
    sync_every: SyncDrained,
    log: Mutex<Option<Log>>,
    appended: Notify,
    freed: Notify,
}

impl DiskBuffer {
    /// Opens (creating) the log in `dir` (a link's own directory: see
    /// [`LinkKey::dir_in`](crate::LinkKey::dir_in)), recovering what a crashed run left, and
    /// keeping `metrics`' buffer counters.
    ///
    /// # Errors
    /// When the directory cannot be created or read, or another process holds it.
    pub fn open(
        dir: impl Into<PathBuf>,
        options: &BufferOptions,
        metrics: Arc<LinkMetrics>,
    ) -> Result<(Self, Recovered), BufferError> {
        let dir = dir.into();
        let (log, recovered) = Log::open(&dir, options, metrics)?;
        Ok((
            Self {
                dir,
                sync_every: options.sync_drained,
                log: Mutex::new(Some(log)),
                appended: Notify::new(),
                freed: Notify::new(),
            },
            recovered,
        ))
    }

    /// The log's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn with_log<T>(&self, f: impl FnOnce(&mut Log) -> Result<T, BufferError>) -> Result<T, BufferError> {
        let mut log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(log.as_mut().ok_or(BufferError::Closed)?)
    }

    /// Appends `batch` and fsyncs it: once this returns `Ok`, the batch survives a crash.
    ///
    /// # Errors
    /// [`BufferError::Full`] when it does not fit and the policy is `block`,
    /// [`BufferError::TooLarge`] when it never can, or an I/O error (nothing was appended then).
    pub fn append(&self, batch: &[Message]) -> Result<(), BufferError> {
        let result = self.with_log(|log| log.append(batch, now_ms()));
        if result.is_ok() {
            self.appended.notify_waiters();
        }
        result
    }

    /// The oldest batch not yet drained, if any (batches past `max_age` are dropped first).
    ///
    /// # Errors
    /// When reading fails.
    pub fn oldest(&self) -> Result<Option<Pending>, BufferError> {
        let result = self.with_log(|log| log.oldest(now_ms()));
        self.freed.notify_waiters();
        result
    }

    /// The oldest batch not yet drained, joined with the batches after it while the run stays
    /// within `max_records` records and `max_bytes` bytes (as a `deliver` call counts them); a
    /// single batch larger than that still comes alone.
    ///
    /// # Errors
    /// When reading fails.
    pub fn oldest_run(&self, max_records: usize, max_bytes: u64) -> Result<Option<Pending>, BufferError> {
        let size = |batch: &[Message]| batch.iter().map(crate::source::encoded_len).sum::<u64>();
        let fits = |run: &[Message], next: &[Message]| {
            run.len() + next.len() <= max_records && size(run) + size(next) <= max_bytes
        };
        let result = self.with_log(|log| log.oldest_run(now_ms(), &fits));
        self.freed.notify_waiters();
        result
    }

    /// Marks every batch up to and including the one at `position` drained and deletes
    /// segments left with nothing to drain. The drained position is written once per group
    /// ([`SyncDrained`]); [`sync_drained`](Self::sync_drained) writes it at once.
    ///
    /// # Errors
    /// When the drained position cannot be written.
    pub fn drained(&self, position: Position) -> Result<(), BufferError> {
        let result = self.with_log(|log| log.drained(position));
        self.freed.notify_waiters();
        result
    }

    /// Writes the drained position if batches were drained since it was last written.
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn sync_drained(&self) -> Result<(), BufferError> {
        self.with_log(Log::sync_drained)
    }

    /// Whether batches were drained since the drained position was last written.
    #[must_use]
    pub fn drained_unsynced(&self) -> bool {
        self.with_log(|log| Ok(log.drained_unsynced())).unwrap_or(false)
    }

    /// How often the drained position is written.
    #[must_use]
    pub fn sync_every(&self) -> SyncDrained {
        self.sync_every
    }

    /// Whether nothing is left to drain.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.with_log(|log| Ok(log.is_empty())).unwrap_or(true)
    }

    /// Closes the log, writing the drained position first: later calls fail with
    /// [`BufferError::Closed`], and its lock is released so that the link can open it again.
    pub fn close(&self) {
        let log = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut log) = log {
            if let Err(err) = log.sync_drained() {
                tracing::error!(dir = %self.dir.display(), error = %err, "writing the drained position at close failed: the batches drained since it was last written will be drained again");
            }
        }
        self.freed.notify_waiters();
        self.appended.notify_waiters();
    }

    /// Notified after every successful append.
    pub(crate) fn appended(&self) -> &Notify {
        &self.appended
    }

    /// Notified whenever room may have been made.
    pub(crate) fn freed(&self) -> &Notify {
        &self.freed
    }
}

#[cfg(test)]
mod tests;
