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
    /// concurrency limit.
    pub busy: u64,
    /// Batches being delivered or written right now.
    pub in_flight: u64,
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
