//! Leases: one active reader per source link when a provider runs as several instances.
//!
//! Every instance of a provider gets every link. For a source that must have one reader at a
//! time (a Modbus device polled once, an S3 prefix with one checkpoint, one MQTT session), the
//! instances compete for a per-link lease in a NATS KV bucket and only its holder reads; the
//! others stand by and take over when the holder is gone.
//!
//! - **Acquire**: `create` the link's key (fails when it exists). The value names the holder and
//!   its process ([`LeaseValue`]); the same process takes its own lease back at once (after it gave
//!   it up for want of renewals), and so does a provider its host restarted after a crash: the
//!   holder is this instance (its host) and the process it names is gone from this machine.
//! - **Renew**: every `ttl / 3`, `update` on the revision the holder last wrote. A renewal that
//!   finds another revision means someone else took the lease: the holder stops reading at once.
//!   A holder that cannot renew (NATS unreachable) for `2 * ttl / 3` since its last successful
//!   renewal gives the lease up the same way, before anyone else can take it.
//! - **Take over**: a standby watches the key's revision. One that stays unchanged for a whole
//!   `ttl` of the standby's own clock (the longer of its TTL and the holder's) means the holder
//!   stopped renewing: the standby `update`s on that revision, which fails if the holder renewed
//!   meanwhile. Only durations on one machine's monotonic clock are compared, never two clocks.
//! - **Release**: a holder that stops (link deleted, provider shut down) deletes the key on its
//!   revision, so a standby takes over within its poll interval.
//!
//! The bucket's `max_age` ([`BUCKET_MAX_AGE`]) removes keys nobody renews any more (links
//! deleted while their holder was dead); a held key is renewed far more often.
//!
//! Nothing here knows wasmCloud: it takes a JetStream context and names.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::link::LinkKey;

/// The lease TTL when a link's config has no `lease_ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The shortest and longest `lease_ttl` a link may set.
pub const TTL_RANGE: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(600));

/// How long the bucket keeps a key nobody renews (longer than any TTL).
pub const BUCKET_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A link's `lease_ttl` (default [`DEFAULT_TTL`], within [`TTL_RANGE`]).
pub fn ttl_from(config: &crate::config::ConfigReader<'_>) -> Result<Duration, crate::config::ConfigError> {
    let ttl = config.duration_or("lease_ttl", DEFAULT_TTL)?;
    if ttl < TTL_RANGE.0 || ttl > TTL_RANGE.1 {
        return Err(crate::config::ConfigError::invalid(
            "lease_ttl",
            format!("expected a duration from {:?} to {:?}", TTL_RANGE.0, TTL_RANGE.1),
        ));
    }
    Ok(ttl)
}

/// Why a lease operation failed (NATS, JetStream or the bucket).
#[derive(Debug, thiserror::Error)]
#[error("lease bucket `{bucket}`: {message}")]
pub struct LeaseError {
    bucket: String,
    message: String,
}

/// What a lease's key holds: who holds it and how long it may go unrenewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The holding instance (its host's id for a wasmCloud provider).
    pub holder: String,
    /// The holder's process id: for an operator looking for it, and for the holder's successor on
    /// the same host, which takes the lease at once when that process is gone.
    pub pid: u32,
    /// The holder's TTL in milliseconds: a standby waits at least this long.
    pub ttl_ms: u64,
}

/// The leases of one provider instance: a KV bucket, the instance's name, and the prefix that
/// makes a link's key (the provider's id).
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    bucket: String,
    holder: String,
    prefix: String,
    store: OnceCell<kv::Store>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("bucket", &self.inner.bucket)
            .field("holder", &self.inner.holder)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// The bucket holding the leases of `lattice`'s links: `sluice-leases-<lattice>`, characters a
/// bucket name cannot hold replaced by `_`.
#[must_use]
pub fn bucket_for_lattice(lattice: &str) -> String {
    format!("sluice-leases-{}", crate::link::identifier(lattice))
}

/// `text` as one token of a KV key: bytes outside `A-Z a-z 0-9 - _` are written `=XX` (hex), so
/// two texts never share a token; an empty text is `=`.
fn key_token(text: &str) -> String {
    if text.is_empty() {
        return "=".into();
    }
    crate::percent::encode(text.as_bytes(), |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')
    })
    .replace('%', "=")
}

impl Leases {
    /// Leases in `bucket` (made on first use), held under the name `holder` (with this process's
    /// id: the instance, e.g. its host's id), for the links of the provider `prefix` names.
    pub fn new(
        js: jetstream::Context,
        bucket: impl Into<String>,
        holder: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                js,
                bucket: bucket.into(),
                holder: holder.into(),
                prefix: prefix.into(),
                store: OnceCell::new(),
            }),
        }
    }

    /// This instance's name in the leases it holds.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The bucket.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The KV key of `link`'s lease: `<provider>.<component>.<link name>`, each part encoded.
    #[must_use]
    pub fn key(&self, link: &LinkKey) -> String {
        format!(
            "{}.{}.{}",
            key_token(&self.inner.prefix),
            key_token(&link.component),
            key_token(&link.name)
        )
    }

    /// The lease of `link`, with `ttl`.
    #[must_use]
    pub fn lease(&self, link: &LinkKey, ttl: Duration) -> Lease {
        Lease {
            leases: self.clone(),
            key: self.key(link),
            link: link.clone(),
            ttl,
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> LeaseError {
        LeaseError {
            bucket: self.inner.bucket.clone(),
            message: message.to_string(),
        }
    }

    /// The bucket, made when it does not exist yet.
    async fn store(&self) -> Result<kv::Store, LeaseError> {
        self.inner
            .store
            .get_or_try_init(|| async {
                if let Ok(store) = self.inner.js.get_key_value(&self.inner.bucket).await {
                    return Ok(store);
                }
                let created = self
                    .inner
                    .js
                    .create_key_value(kv::Config {
                        bucket: self.inner.bucket.clone(),
                        description: "Sluice: which provider instance reads each source link".into(),
                        history: 1,
                        max_age: BUCKET_MAX_AGE,
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(store) => Ok(store),
                    // Another instance may have made it meanwhile.
                    Err(err) => self
                        .inner
                        .js
                        .get_key_value(&self.inner.bucket)
                        .await
                        .map_err(|_| self.error(format!("cannot create the bucket: {err}"))),
                }
            })
            .await
            .cloned()
    }
}

/// One link's lease, not necessarily held.
#[derive(Debug, Clone)]
pub struct Lease {
    leases: Leases,
    key: String,
    link: LinkKey,
    ttl: Duration,
}

/// What a standby saw of a lease held by someone else: its revision and since when (this
/// machine's clock), and the longest TTL it must wait.
#[derive(Debug, Clone, Copy)]
struct Seen {
    revision: u64,
    since: Instant,
    wait: Duration,
}

/// What one look at a lease found.
#[derive(Debug, Clone, Copy)]
pub enum Look<'a> {
    /// This instance holds it now.
    Held,
    /// Another instance holds it (its name and process, `?` when unreadable).
    Busy(&'a str),
    /// The lease could not be read or written.
    Unreachable(&'a LeaseError),
}

impl<'a> Look<'a> {
    fn of(attempt: &'a Result<Attempt, LeaseError>) -> Self {
        match attempt {
            Ok(Attempt::Held(_)) => Self::Held,
            Ok(Attempt::Busy(holder)) => Self::Busy(holder),
            Err(err) => Self::Unreachable(err),
        }
    }
}

/// The outcome of one attempt to take a lease.
enum Attempt {
    Held(u64),
    /// Someone else holds it; the standby checks again after its poll interval.
    Busy(String),
}

impl Lease {
    /// The KV key.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The TTL.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often a standby looks at the lease: a quarter of the TTL, between 100 ms and 5 s.
    fn poll_interval(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    fn value(&self) -> Bytes {
        serde_json::to_vec(&LeaseValue {
            holder: self.leases.inner.holder.clone(),
            pid: std::process::id(),
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
        })
        .expect("a lease value serializes")
        .into()
    }

    /// Waits until this instance holds the lease, or `stop` is cancelled (`None`). Errors from
    /// NATS are logged and tried again.
    pub async fn acquire(&self, stop: &CancellationToken) -> Option<Held> {
        self.acquire_reporting(stop, |_| {}).await
    }

    /// Like [`acquire`](Self::acquire), telling `look` what each look at the lease found
    /// (e.g. to show the link standing by, or degraded while the lease cannot be read).
    pub async fn acquire_reporting(&self, stop: &CancellationToken, mut look: impl FnMut(Look<'_>)) -> Option<Held> {
        let mut seen = None;
        let mut failures = 0u32;
        let mut standby_logged = false;
        let backoff = Backoff {
            initial: Duration::from_millis(200),
            max: self.poll_interval().max(Duration::from_secs(2)),
        };
        loop {
            let attempt = self.try_acquire(&mut seen).await;
            look(Look::of(&attempt));
            let delay = match attempt {
                Ok(Attempt::Held(revision)) => {
                    info!(link = %self.link, key = %self.key, "lease acquired: this instance reads the link");
                    return Some(Held::start(self.clone(), revision));
                }
                Ok(Attempt::Busy(holder)) => {
                    failures = 0;
                    if !standby_logged {
                        info!(link = %self.link, %holder, "standing by: another instance reads the link");
                        standby_logged = true;
                    }
                    self.poll_interval()
                }
                Err(err) => {
                    failures += 1;
                    if failures == 1 {
                        warn!(link = %self.link, error = %err, "cannot reach the lease; trying again");
                    }
                    backoff.delay(failures)
                }
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One look at the lease: take it when it is free, ours, or its holder stopped renewing.
    async fn try_acquire(&self, seen: &mut Option<Seen>) -> Result<Attempt, LeaseError> {
        let leases = &self.leases;
        let store = leases.store().await?;
        let entry = store.entry(&self.key).await.map_err(|e| leases.error(e))?;
        let entry = match entry {
            Some(e) if e.operation == kv::Operation::Put => e,
            // Never held, released, or removed by the bucket's max_age.
            _ => {
                return match store.create(&self.key, self.value()).await {
                    Ok(revision) => Ok(Attempt::Held(revision)),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Attempt::Busy("?".into())),
                    Err(e) => Err(leases.error(e)),
                };
            }
        };
        let holder: Option<LeaseValue> = serde_json::from_slice(&entry.value).ok();
        let holder_name = holder
            .as_ref()
            .map_or_else(|| "?".to_string(), |h| format!("{} (pid {})", h.holder, h.pid));
        let ours = holder
            .as_ref()
            .is_some_and(|h| h.holder == leases.inner.holder && (h.pid == std::process::id() || !process_alive(h.pid)));
        let take = if ours {
            // This process gave the lease up (renewals failed), or this instance's previous
            // process died holding it (its host restarted the provider); nobody took it meanwhile.
            true
        } else {
            let wait = holder
                .as_ref()
                .map_or(self.ttl, |h| Duration::from_millis(h.ttl_ms).max(self.ttl));
            match seen {
                Some(s) if s.revision == entry.revision => s.since.elapsed() >= s.wait,
                _ => {
                    *seen = Some(Seen {
                        revision: entry.revision,
                        since: Instant::now(),
                        wait,
                    });
                    false
                }
            }
        };
        if !take {
            return Ok(Attempt::Busy(holder_name));
        }
        match store.update(&self.key, self.value(), entry.revision).await {
            Ok(revision) => {
                if !ours {
                    info!(link = %self.link, previous = %holder_name, "taking over the lease: its holder stopped renewing it");
                }
                Ok(Attempt::Held(revision))
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Attempt::Busy(holder_name)),
            Err(e) => Err(leases.error(e)),
        }
    }
}

/// Whether a process `pid` runs on this machine (an instance's provider processes run on its
/// host's machine). A pid taken again by another process reads as alive: the lease then expires.
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A held lease, renewed in the background until [released](Held::release) or lost. Dropped,
/// it is no longer renewed (nor released): it expires as a dead holder's does.
#[derive(Debug)]
pub struct Held {
    lease: Lease,
    lost: CancellationToken,
    /// Cancelled to stop renewing.
    done: CancellationToken,
    renewer: Option<tokio::task::JoinHandle<Option<u64>>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

impl Held {
    fn start(lease: Lease, revision: u64) -> Self {
        let lost = CancellationToken::new();
        let done = CancellationToken::new();
        let renewer = tokio::spawn(renew(lease.clone(), revision, lost.clone(), done.clone()));
        Self {
            lease,
            lost,
            done,
            renewer: Some(renewer),
        }
    }

    /// Resolves when the lease is lost: another instance holds it, or it could not be renewed
    /// in time. The holder must stop reading at once.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Whether the lease is lost.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Stops renewing and, if the lease is still ours, deletes it so a standby takes over now.
    pub async fn release(mut self) {
        self.done.cancel();
        let Some(renewer) = self.renewer.take() else {
            return;
        };
        let Ok(Some(revision)) = renewer.await else {
            return;
        };
        let leases = &self.lease.leases;
        let released = async {
            let store = leases.store().await?;
            store
                .delete_expect_revision(&self.lease.key, Some(revision))
                .await
                .map_err(|e| leases.error(e))
        };
        match tokio::time::timeout(Duration::from_secs(2), released).await {
            Ok(Ok(())) => debug!(link = %self.lease.link, "lease released"),
            Ok(Err(err)) => {
                warn!(link = %self.lease.link, error = %err, "releasing the lease failed; it expires on its own")
            }
            Err(_) => warn!(link = %self.lease.link, "releasing the lease timed out; it expires on its own"),
        }
    }
}

/// Renews `lease` from `revision` until `done` (returns the last revision, when still held) or
/// the lease is lost (cancels `lost`, returns `None`).
async fn renew(lease: Lease, mut revision: u64, lost: CancellationToken, done: CancellationToken) -> Option<u64> {
    let every = lease.ttl / 3;
    // A renewal sent at `renewed` keeps the lease until at least `renewed + ttl` on any standby's
    // clock: give it up well before that when renewals fail.
    let give_up_at = |renewed: Instant| renewed + lease.ttl * 2 / 3;
    let retry = (lease.ttl / 10).max(Duration::from_millis(50));
    let mut renewed = Instant::now();
    let mut next = renewed + every;
    loop {
        tokio::select! {
            () = done.cancelled() => return Some(revision),
            () = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let deadline = give_up_at(renewed);
        let attempt = async {
            let store = lease.leases.store().await.map_err(Renewal::Failed)?;
            store
                .update(&lease.key, lease.value(), revision)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        lease.leases.error(e),
                    )
                })
                .map_err(|(taken, e)| if taken { Renewal::Taken } else { Renewal::Failed(e) })
        };
        let outcome = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(new_revision)) => {
                revision = new_revision;
                renewed = sent;
                next = renewed + every;
                continue;
            }
            Ok(Err(Renewal::Taken)) => "another instance holds it".to_string(),
            Ok(Err(Renewal::Failed(err))) if Instant::now() + retry < deadline => {
                debug!(link = %lease.link, error = %err, "renewing the lease failed; trying again");
                next = Instant::now() + retry;
                continue;
            }
            Ok(Err(Renewal::Failed(err))) => format!("not renewed in time: {err}"),
            Err(_) => "not renewed in time".to_string(),
        };
        warn!(link = %lease.link, reason = %outcome, "lease lost: this instance stops reading the link");
        lost.cancel();
        return None;
    }
}

/// Why a renewal failed.
enum Renewal {
    /// The key has another revision: someone else took the lease.
    Taken,
    /// NATS or JetStream failed.
    Failed(LeaseError),
}

/// Serves a source link only while this instance holds its lease: stands by until it is held,
/// then `start`s the link (open the reader and run it) with a stop token of its own. When the
/// lease is lost that token is cancelled at once (the runner stops polling and drains), and the
/// link stands by again; when `link.stop` is cancelled the link drains and the lease is
/// released.
///
/// The lease is looked at once before this returns: a link whose lease is free (or this
/// process's own) is open and reading when its put is answered, as an unleased link is, so
/// what its system sends right after the put is not missed; a config its system refuses then
/// refuses the put. A standby returns at once and waits in the returned future.
pub(crate) async fn serve_leased<I, F, Fut>(
    lease: Lease,
    link: crate::source::LinkStart<I>,
    start: F,
) -> Result<futures::future::BoxFuture<'static, ()>, crate::link::LinkErrorReason>
where
    I: crate::source::Ingest,
    F: Fn(crate::source::LinkStart<I>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<futures::future::BoxFuture<'static, ()>, crate::link::LinkErrorReason>>
        + Send,
{
    use crate::metrics::LinkHealth;
    let crate::source::LinkStart {
        link: key,
        ingest,
        settings,
        metrics,
        stop,
        lease: _,
    } = link;
    // What each run of the link gets: the link's own, with a stop token of the run's.
    let run_start = {
        let (key, metrics) = (key.clone(), Arc::clone(&metrics));
        move |run_stop: CancellationToken| crate::source::LinkStart {
            link: key.clone(),
            ingest: Arc::clone(&ingest),
            settings: settings.clone(),
            metrics: Arc::clone(&metrics),
            stop: run_stop,
            lease: None,
        }
    };
    // Shows what a look at the lease found in the link's health.
    let show = {
        let metrics = Arc::clone(&metrics);
        move |look: Look<'_>| match look {
            Look::Held => metrics.set_health(LinkHealth::Ok),
            Look::Busy(holder) => metrics.set_health(LinkHealth::Standby(holder.to_string())),
            Look::Unreachable(err) => {
                metrics.set_health(LinkHealth::Degraded(format!("cannot take the link's lease: {err}")));
            }
        }
    };
    let mut first = None;
    let attempt = lease.try_acquire(&mut None).await;
    show(Look::of(&attempt));
    match attempt {
        Ok(Attempt::Held(revision)) => {
            info!(link = %lease.link, key = %lease.key, "lease acquired: this instance reads the link");
            let held = Held::start(lease.clone(), revision);
            let run_stop = stop.child_token();
            match start(run_start(run_stop.clone())).await {
                Ok(run) => first = Some((held, run, run_stop)),
                Err(reason) => {
                    held.release().await;
                    return Err(reason);
                }
            }
        }
        Ok(Attempt::Busy(_)) | Err(_) => {}
    }
    Ok(Box::pin(async move {
        loop {
            let (held, run, run_stop) = match first.take() {
                Some(running) => running,
                None => {
                    let Some(held) = lease.acquire_reporting(&stop, &show).await else {
                        return;
                    };
                    let run_stop = stop.child_token();
                    match start(run_start(run_stop.clone())).await {
                        Ok(run) => (held, run, run_stop),
                        Err(reason) => {
                            let refused = crate::link::LinkError {
                                key: key.clone(),
                                role: crate::link::Role::Source,
                                reason,
                            };
                            tracing::error!(error = %refused, "link refused");
                            metrics.set_health(LinkHealth::Refused(refused.to_string()));
                            held.release().await;
                            return;
                        }
                    }
                }
            };
            let mut run = std::pin::pin!(run);
            tokio::select! {
                () = &mut run => {}
                () = held.lost() => {
                    run_stop.cancel();
                    run.await;
                }
            }
            let lost = held.is_lost();
            held.release().await;
            if !lost {
                // Stopped, or ended on its own (refused while opening in the background).
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_token_per_part_and_distinct() {
        assert_eq!(key_token("step-1_a"), "step-1_a");
        assert_eq!(key_token("a.b"), "a=2Eb");
        assert_eq!(key_token("a=2Eb"), "a=3D2Eb");
        assert_eq!(key_token(""), "=");
        assert_eq!(key_token("a/b c"), "a=2Fb=20c");
        assert_eq!(bucket_for_lattice("customer.a/b"), "sluice-leases-customer_a_b");
    }
}
