//! Taps: a sampled, bounded copy of the records crossing a provider's links, for an operator
//! watching a running pipeline (`sluice tap`).
//!
//! The engine calls [`Taps::observe`] where a source batch is delivered to its step and where a
//! step's `sink.write` arrives. With no tap open that is one relaxed atomic load, so throughput
//! is unchanged. An open tap takes at most `n` records, at most `rate` a second (a token bucket:
//! the rest of a burst is skipped, not queued), and ends by itself after `n` records or its
//! timeout, or when the one reading it goes away: a vanished client leaves nothing running.
//!
//! A link whose config sets `sensitive = true` is never tapped: a tap that would cover it is
//! refused with an error naming the link.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::link::{LinkKey, Role};
use crate::Message;

/// The link config key marking a link whose records must not be tapped.
pub const SENSITIVE_KEY: &str = "sensitive";

/// Most records one tap takes (`n` is clamped to it).
pub const MAX_RECORDS: usize = 1_000;
/// Most records a second one tap takes, whatever it asks.
pub const MAX_RATE: u32 = 100;
/// The longest a tap stays open.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Most bytes of a payload a record's preview shows.
pub const MAX_PREVIEW: usize = 4_096;
/// Most taps open on one provider at once.
pub const MAX_TAPS: usize = 16;

/// What a tap asks for (the JSON body of a tap request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRequest {
    /// Which links: the provider's `source` links (records as delivered to the step) or its
    /// `sink` links (records as the step wrote them).
    pub at: Role,
    /// Only the links to or from this component (the pipeline's step); every link of that role
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Records to take before the tap ends (default 20, at most [`MAX_RECORDS`]).
    #[serde(default = "default_n")]
    pub n: usize,
    /// Records a second at most (default 10, at most [`MAX_RATE`]).
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// Milliseconds after which the tap ends however many records it took (default 60 000, at
    /// most [`MAX_TIMEOUT`]).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Payload bytes shown per record (default 256, at most [`MAX_PREVIEW`]).
    #[serde(default = "default_preview")]
    pub preview_bytes: usize,
}

fn default_n() -> usize {
    20
}
fn default_rate() -> u32 {
    10
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_preview() -> usize {
    256
}

impl TapRequest {
    /// A request for `n` records at the links of role `at` with `component`, other settings
    /// default.
    #[must_use]
    pub fn new(at: Role, component: Option<String>, n: usize) -> Self {
        Self {
            at,
            component,
            n,
            rate: default_rate(),
            timeout_ms: default_timeout_ms(),
            preview_bytes: default_preview(),
        }
    }

    /// How long the tap stays open, clamped to [`MAX_TIMEOUT`].
    #[must_use]
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms).min(MAX_TIMEOUT)
    }
}

/// One tapped record as JSON: where it crossed, and a printable preview of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRecord {
    /// `source` or `sink`.
    pub at: Role,
    /// The component at the other end of the link.
    pub component: String,
    /// The link name.
    pub link: String,
    /// The record's origin (`mqtt:sensors/plant-a#12`, `kafka:orders/3@1187`, ...).
    pub origin: String,
    /// The record's key, previewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Header names with previewed values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The record's timestamp (ms since the Unix epoch), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<u64>,
    /// The payload's size in bytes.
    pub payload_bytes: usize,
    /// The first `preview_bytes` of the payload, printable (see [`preview`]).
    pub payload: String,
    /// Whether the preview is cut short.
    pub truncated: bool,
}

/// What a provider sends to a tap's reply inbox, one JSON message each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum TapEvent {
    /// The tap is open on these links (`link `name` of component `c``).
    Started {
        /// The links it covers.
        links: Vec<String>,
    },
    /// A tapped record.
    Record(TapRecord),
    /// The tap ended.
    Ended {
        /// Records sent.
        records: usize,
        /// Why: `n records`, `timed out`, `the link stopped`.
        reason: String,
    },
    /// The tap was refused.
    Refused {
        /// Why, naming the link when a link's config is the reason.
        error: String,
    },
}

/// Why a tap was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    /// A link the tap would cover is marked sensitive.
    #[error("{role} {key} is marked sensitive (`sensitive = true`): its records are not tapped")]
    Sensitive {
        /// The link's role at this provider.
        role: Role,
        /// The link.
        key: LinkKey,
    },
    /// No link matches.
    #[error("no {role} link{} on this provider", .component.as_ref().map(|c| format!(" with component `{c}`")).unwrap_or_default())]
    NoLink {
        /// The role asked for.
        role: Role,
        /// The component asked for.
        component: Option<String>,
    },
    /// Too many taps open at once.
    #[error("{MAX_TAPS} taps are open on this provider already")]
    TooMany,
    /// The request is malformed.
    #[error("bad tap request: {0}")]
    BadRequest(String),
}

struct OpenTap {
    at: Role,
    links: HashSet<LinkKey>,
    remaining: usize,
    rate: f64,
    tokens: f64,
    refilled: Instant,
    deadline: Instant,
    preview_bytes: usize,
    tx: mpsc::Sender<TapRecord>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    taps: HashMap<u64, OpenTap>,
    sensitive: HashSet<(Role, LinkKey)>,
}

/// The taps open on one provider, and which of its links are sensitive.
#[derive(Default)]
pub struct Taps {
    /// How many taps are open: the hot path's only cost when it is 0.
    active: AtomicUsize,
    registry: Mutex<Registry>,
}

impl Taps {
    /// Records whether the link `key` in `role` is sensitive (its config's `sensitive`); a
    /// sensitive link leaves every tap covering it at once.
    pub fn set_sensitive(&self, role: Role, key: &LinkKey, sensitive: bool) {
        let mut registry = self.lock();
        if sensitive {
            registry.sensitive.insert((role, key.clone()));
        } else {
            registry.sensitive.remove(&(role, key.clone()));
        }
        if sensitive {
            Self::drop_link(&mut registry, role, key);
            self.active.store(registry.taps.len(), Ordering::Relaxed);
        }
    }

    /// Forgets a deleted link: taps covering only it end.
    pub fn forget(&self, role: Role, key: &LinkKey) {
        let mut registry = self.lock();
        registry.sensitive.remove(&(role, key.clone()));
        Self::drop_link(&mut registry, role, key);
        self.active.store(registry.taps.len(), Ordering::Relaxed);
    }

    fn drop_link(registry: &mut Registry, role: Role, key: &LinkKey) {
        registry.taps.retain(|_, tap| {
            if tap.at == role {
                tap.links.remove(key);
            }
            !tap.links.is_empty()
        });
    }

    /// Opens a tap on `links` (the live links of `request.at` matching its component), unless
    /// one of them is sensitive.
    pub fn open(self: &Arc<Self>, request: &TapRequest, links: Vec<LinkKey>) -> Result<TapStream, TapError> {
        if links.is_empty() {
            return Err(TapError::NoLink {
                role: request.at,
                component: request.component.clone(),
            });
        }
        if request.n == 0 || request.rate == 0 || request.timeout_ms == 0 {
            return Err(TapError::BadRequest(
                "`n`, `rate` and `timeout_ms` must be positive".into(),
            ));
        }
        let mut registry = self.lock();
        if let Some(key) = links
            .iter()
            .find(|k| registry.sensitive.contains(&(request.at, (*k).clone())))
        {
            return Err(TapError::Sensitive {
                role: request.at,
                key: key.clone(),
            });
        }
        if registry.taps.len() >= MAX_TAPS {
            return Err(TapError::TooMany);
        }
        let n = request.n.min(MAX_RECORDS);
        let rate = f64::from(request.rate.min(MAX_RATE));
        let now = Instant::now();
        let deadline = now + request.timeout();
        let (tx, rx) = mpsc::channel(n.min(256));
        let id = registry.next_id;
        registry.next_id += 1;
        let mut names: Vec<String> = links.iter().map(ToString::to_string).collect();
        names.sort();
        registry.taps.insert(
            id,
            OpenTap {
                at: request.at,
                links: links.into_iter().collect(),
                remaining: n,
                rate,
                tokens: rate.min(n as f64),
                refilled: now,
                deadline,
                preview_bytes: request.preview_bytes.min(MAX_PREVIEW),
                tx,
            },
        );
        self.active.store(registry.taps.len(), Ordering::Relaxed);
        Ok(TapStream {
            id,
            rx,
            deadline,
            wanted: n,
            received: 0,
            links: names,
            taps: Arc::downgrade(self),
        })
    }

    /// Offers `batch`, crossing link `key` in `role`, to the open taps. One atomic load when no
    /// tap is open.
    #[inline]
    pub fn observe(&self, role: Role, key: &LinkKey, batch: &[Message]) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.sample(role, key, batch);
    }

    #[cold]
    fn sample(&self, role: Role, key: &LinkKey, batch: &[Message]) {
        let mut registry = self.lock();
        if registry.sensitive.contains(&(role, key.clone())) {
            return;
        }
        let now = Instant::now();
        registry.taps.retain(|_, tap| {
            if now >= tap.deadline || tap.tx.is_closed() {
                return false;
            }
            if tap.at != role || !tap.links.contains(key) {
                return true;
            }
            tap.tokens = (tap.tokens + now.duration_since(tap.refilled).as_secs_f64() * tap.rate).min(tap.rate);
            tap.refilled = now;
            for message in batch {
                if tap.tokens < 1.0 || tap.remaining == 0 {
                    break;
                }
                match tap.tx.try_send(TapRecord::of(role, key, message, tap.preview_bytes)) {
                    Ok(()) => {
                        tap.tokens -= 1.0;
                        tap.remaining -= 1;
                    }
                    // The reader is behind: skip, it is a sample.
                    Err(mpsc::error::TrySendError::Full(_)) => break,
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            tap.remaining > 0
        });
        self.active.store(registry.taps.len(), Ordering::Relaxed);
    }

    fn close(&self, id: u64) {
        let mut registry = self.lock();
        registry.taps.remove(&id);
        self.active.store(registry.taps.len(), Ordering::Relaxed);
    }

    /// How many taps are open.
    #[must_use]
    pub fn open_count(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The records of one open tap. Dropping it closes the tap.
pub struct TapStream {
    id: u64,
    rx: mpsc::Receiver<TapRecord>,
    deadline: Instant,
    wanted: usize,
    received: usize,
    links: Vec<String>,
    taps: Weak<Taps>,
}

impl TapStream {
    /// The links the tap covers.
    #[must_use]
    pub fn links(&self) -> &[String] {
        &self.links
    }

    /// The next tapped record; `None` once the tap has ended (see [`TapStream::end_reason`]).
    pub async fn next(&mut self) -> Option<TapRecord> {
        match tokio::time::timeout_at(self.deadline, self.rx.recv()).await {
            Ok(Some(record)) => {
                self.received += 1;
                Some(record)
            }
            Ok(None) | Err(_) => {
                self.rx.close();
                None
            }
        }
    }

    /// Records received so far.
    #[must_use]
    pub fn received(&self) -> usize {
        self.received
    }

    /// Why the tap ended, once [`TapStream::next`] returned `None`.
    #[must_use]
    pub fn end_reason(&self) -> String {
        if self.received >= self.wanted {
            format!("{} records", self.received)
        } else if Instant::now() >= self.deadline {
            "timed out".into()
        } else {
            "the link stopped".into()
        }
    }
}

impl Drop for TapStream {
    fn drop(&mut self) {
        if let Some(taps) = self.taps.upgrade() {
            taps.close(self.id);
        }
    }
}

impl TapRecord {
    fn of(at: Role, key: &LinkKey, message: &Message, preview_bytes: usize) -> Self {
        let (payload, truncated) = preview(&message.payload, preview_bytes);
        Self {
            at,
            component: key.component.clone(),
            link: key.name.clone(),
            origin: message.origin.clone(),
            key: message.key.as_ref().map(|k| preview(k, preview_bytes).0),
            headers: message
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), preview(value, preview_bytes).0))
                .collect(),
            timestamp_ms: message.timestamp_ms,
            payload_bytes: message.payload.len(),
            payload,
            truncated,
        }
    }
}

/// The first `max` bytes of `bytes` as printable text: UTF-8 as it is, except control characters
/// escaped (`\n`, `\u{1b}`), and bytes that are not UTF-8 as `\xNN`. The flag says whether
/// `bytes` was longer than `max`.
#[must_use]
pub fn preview(bytes: &[u8], max: usize) -> (String, bool) {
    let shown = &bytes[..bytes.len().min(max)];
    let mut out = String::with_capacity(shown.len());
    for chunk in shown.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_debug());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    (out, bytes.len() > max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_printable_and_cut() {
        assert_eq!(preview(b"hello", 256), ("hello".into(), false));
        assert_eq!(preview(b"a\nb\x1b", 256), ("a\\nb\\u{1b}".into(), false));
        assert_eq!(preview(&[0x66, 0xff, 0x67], 256), ("f\\xffg".into(), false));
        assert_eq!(preview(b"abcdef", 3), ("abc".into(), true));
        // A character cut in the middle shows its bytes.
        assert_eq!(preview("é".as_bytes(), 1), ("\\xc3".into(), true));
    }

    fn batch(n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| Message::new(format!("r{i}"), format!("t@{i}")))
            .collect()
    }

    #[tokio::test]
    async fn a_tap_takes_at_most_n_within_its_rate_then_ends() {
        let taps = Arc::new(Taps::default());
        let key = LinkKey::new("step", "default");
        let mut request = TapRequest::new(Role::Source, Some("step".into()), 5);
        request.rate = 3;
        let mut stream = taps.open(&request, vec![key.clone()]).unwrap();
        assert_eq!(taps.open_count(), 1);
        // A burst of 100: the bucket holds 3.
        taps.observe(Role::Source, &key, &batch(100));
        // Another role or link is not tapped.
        taps.observe(Role::Sink, &key, &batch(10));
        taps.observe(Role::Source, &LinkKey::new("other", "default"), &batch(10));
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(stream.next().await.unwrap().payload);
        }
        assert_eq!(got, ["r0", "r1", "r2"]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        taps.observe(Role::Source, &key, &batch(100));
        assert_eq!(stream.next().await.unwrap().payload, "r0");
        assert_eq!(stream.next().await.unwrap().payload, "r1");
        assert_eq!(taps.open_count(), 0, "closed after n");
        assert!(stream.next().await.is_none());
        assert_eq!(stream.end_reason(), "5 records");
    }

    #[tokio::test]
    async fn a_sensitive_link_is_refused_by_name_and_a_dropped_stream_closes_its_tap() {
        let taps = Arc::new(Taps::default());
        let key = LinkKey::new("step", "orders");
        let request = TapRequest::new(Role::Sink, None, 5);
        let stream = taps.open(&request, vec![key.clone()]).unwrap();
        drop(stream);
        assert_eq!(taps.open_count(), 0);
        let _open = taps.open(&request, vec![key.clone()]).unwrap();
        taps.set_sensitive(Role::Sink, &key, true);
        assert_eq!(taps.open_count(), 0, "marking a link sensitive ends its taps");
        let err = taps.open(&request, vec![key]).err().unwrap().to_string();
        assert!(
            err.contains("`orders`") && err.contains("`step`") && err.contains("sensitive"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tap_with_no_traffic_times_out() {
        let taps = Arc::new(Taps::default());
        let mut request = TapRequest::new(Role::Source, None, 5);
        request.timeout_ms = 1_000;
        let mut stream = taps.open(&request, vec![LinkKey::new("s", "default")]).unwrap();
        assert!(stream.next().await.is_none());
        assert_eq!(stream.end_reason(), "timed out");
        drop(stream);
        assert_eq!(taps.open_count(), 0);
    }
}
