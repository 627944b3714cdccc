//! Per-link counters, readable while the provider runs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::Serialize;

/// Whether a link can move records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LinkHealth {
    /// Connected.
    #[default]
    Ok,
    /// Not connected yet: its system could not be reached (the error says why); the engine
    /// keeps trying and the link starts moving records once it can.
    Degraded(String),
    /// Failed for good while connecting in the background (bad credentials, no such bucket).
    Refused(String),
    /// Another instance of the provider holds the link's lease and reads it (its name and
    /// process); this one takes over when that one stops.
    Standby(String),
}

/// Counters of one link. All are totals since the link was put, except `in_flight`.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    pub(crate) polled: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) buffered_bytes: AtomicU64,
    pub(crate) buffered_records: AtomicU64,
    /// When the oldest buffered batch was appended (Unix ms; 0 when the buffer is empty).
    pub(crate) buffer_oldest_ms: AtomicU64,
    pub(crate) buffer_drained: AtomicU64,
    pub(crate) buffer_dropped: AtomicU64,
    pub(crate) buffer_rejected: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    health: Mutex<LinkHealth>,
}

/// A copy of a link's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    /// Records read from the source system.
    pub polled: u64,
    /// Records the component accepted (`deliver` returned success for them).
    pub delivered: u64,
    /// Batch deliveries that were retried (after `retry`, a timeout or a transport error).
    pub retried: u64,
    /// Records the component rejected.
    pub rejected: u64,
    /// Records handed to the dead-letter destination (rejected or out of retries).
    pub dead_lettered: u64,
    /// Records acknowledged to the source system.
    pub acked: u64,
    /// Records a sink wrote durably.
    pub written: u64,
    /// Sink batches that failed (answered `retry` or `reject`).
    pub write_failures: u64,
    /// Sink calls answered `retry`, or requests answered "busy", because the link was at its
    /// concurrency limit (or its disk buffer was full, with `buffer_full = "block"`).
    pub busy: u64,
    /// Batches being delivered or written right now.
    pub in_flight: u64,
    /// Sink links with `buffer = "disk"`: bytes of batches in the buffer not yet drained.
    #[serde(default)]
    pub buffered_bytes: u64,
    /// Records in the buffer not yet drained.
    #[serde(default)]
    pub buffered_records: u64,
    /// How long ago the oldest batch not yet drained was appended, in milliseconds (0 when the
    /// buffer is empty).
    #[serde(default)]
    pub buffer_oldest_age_ms: u64,
    /// Records taken out of the buffer because the sink wrote (or rejected) them.
    #[serde(default)]
    pub buffer_drained: u64,
    /// Records dropped from the buffer unwritten: `buffer_full = "drop_oldest"`, `buffer_max_age`,
    /// or a batch that no longer reads back.
    #[serde(default)]
    pub buffer_dropped: u64,
    /// Buffered records the sink rejected. Their writes were already answered success, so the
    /// rejection can no longer reach the caller: they are logged with their origins and counted.
    #[serde(default)]
    pub buffer_rejected: u64,
    /// fsync calls of the buffer (one per appended batch, one per drained-position write: per
    /// group of drained batches, and one per new segment).
    #[serde(default)]
    pub fsyncs: u64,
}

impl MetricsSnapshot {
    /// Adds the counters of another instance's copy of the same link: totals and gauges add
    /// up, the oldest buffered age is the older of the two.
    pub fn add(&mut self, other: &Self) {
        let Self {
            polled,
            delivered,
            retried,
            rejected,
            dead_lettered,
            acked,
            written,
            write_failures,
            busy,
            in_flight,
            buffered_bytes,
            buffered_records,
            buffer_oldest_age_ms,
            buffer_drained,
            buffer_dropped,
            buffer_rejected,
            fsyncs,
        } = other;
        self.polled += polled;
        self.delivered += delivered;
        self.retried += retried;
        self.rejected += rejected;
        self.dead_lettered += dead_lettered;
        self.acked += acked;
        self.written += written;
        self.write_failures += write_failures;
        self.busy += busy;
        self.in_flight += in_flight;
        self.buffered_bytes += buffered_bytes;
        self.buffered_records += buffered_records;
        self.buffer_oldest_age_ms = self.buffer_oldest_age_ms.max(*buffer_oldest_age_ms);
        self.buffer_drained += buffer_drained;
        self.buffer_dropped += buffer_dropped;
        self.buffer_rejected += buffer_rejected;
        self.fsyncs += fsyncs;
    }
}

impl LinkMetrics {
    /// Reads every counter.
    #[must_use]
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            polled: self.polled.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            retried: self.retried.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            acked: self.acked.load(Relaxed),
            written: self.written.load(Relaxed),
            write_failures: self.write_failures.load(Relaxed),
            busy: self.busy.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            buffered_bytes: self.buffered_bytes.load(Relaxed),
            buffered_records: self.buffered_records.load(Relaxed),
            buffer_oldest_age_ms: match self.buffer_oldest_ms.load(Relaxed) {
                0 => 0,
                oldest => crate::time::unix_ms().saturating_sub(oldest),
            },
            buffer_drained: self.buffer_drained.load(Relaxed),
            buffer_dropped: self.buffer_dropped.load(Relaxed),
            buffer_rejected: self.buffer_rejected.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
        }
    }

    /// Whether the link can move records.
    #[must_use]
    pub fn health(&self) -> LinkHealth {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_health(&self, health: LinkHealth) {
        *self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = health;
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }
}

/// Increments the in-flight gauge for as long as it lives.
pub(crate) struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
