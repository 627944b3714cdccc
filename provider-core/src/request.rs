//! Request-driven sources: records arrive with a caller waiting for the answer (an HTTP request,
//! a webhook), so there is nothing to poll and nothing to acknowledge later.
//!
//! A connector implements [`RequestSource`]; wrapped in [`Requests`] it runs on the same engine
//! as every polled source: the same link table, config parsing, refusals, counters and status.
//! Each link it [attaches](RequestSource::attach) gets a [`Delivery`]: the link's `ingest` handle
//! with its settings. A caller first [reserves](Delivery::try_reserve) one of the link's
//! `max_in_flight` slots (none free: answer "busy", never queue), then [delivers](Slot::deliver)
//! its records with the link's deadline and retry policy and answers from the [`Outcome`].

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument as _};

use crate::config::{ConfigError, ConfigReader};
use crate::link::{LinkErrorReason, LinkKey};
use crate::metrics::LinkMetrics;
use crate::source::{attempt, Attempt, Ingest, RunnerSettings, SourceSide};
use crate::{ConnectorError, Message, Rejected};

/// A source whose records arrive with a caller waiting for the answer.
pub trait RequestSource: Send + Sync + 'static {
    /// The connector's typed config for one link.
    type Config: Send + 'static;
    /// What the connector keeps for an attached link, given back to [`Self::detach`].
    type Route: Send + 'static;

    /// The engine settings a link gets for keys its config leaves out. Of these a request
    /// source uses `max_in_flight` (slots), `deliver_timeout`, `retry_initial`/`retry_max`,
    /// `max_retries` and `drain_timeout`.
    fn runner_defaults(&self) -> RunnerSettings {
        RunnerSettings::default()
    }

    /// Parses a link's config. Keys the engine itself reads are already taken.
    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<Self::Config, ConfigError>;

    /// Starts taking requests for a link, delivering them through `delivery`. An error refuses
    /// the link with the error's message (e.g. its route is already another link's), and every
    /// other link keeps running.
    fn attach(&self, link: &LinkKey, config: Self::Config, delivery: Delivery) -> Result<Self::Route, ConnectorError>;

    /// Stops taking new requests for a link. The engine then waits for the requests already
    /// holding a slot to finish (within `drain_timeout`).
    fn detach(&self, route: Self::Route);

    /// Called when the provider stops, after every link has been detached and drained (the host
    /// may ask more than once: make it idempotent).
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs a [`RequestSource`] on the engine: `Engine::new(Requests::new(source), sink)`.
#[derive(Debug, Default)]
pub struct Requests<R>(Arc<R>);

impl<R> Requests<R> {
    /// Wraps `source`.
    pub fn new(source: R) -> Self {
        Self(Arc::new(source))
    }

    /// The wrapped source.
    pub fn source(&self) -> &Arc<R> {
        &self.0
    }
}

impl<R: RequestSource> SourceSide for Requests<R> {
    type Config = R::Config;

    fn runner_defaults(&self) -> RunnerSettings {
        self.0.runner_defaults()
    }

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<Self::Config, ConfigError> {
        self.0.parse_config(config)
    }

    async fn start<I: Ingest>(
        &self,
        link: LinkKey,
        config: Self::Config,
        ingest: Arc<I>,
        settings: RunnerSettings,
        metrics: Arc<LinkMetrics>,
        stop: CancellationToken,
    ) -> Result<BoxFuture<'static, ()>, LinkErrorReason> {
        let delivery = Delivery::new(link.clone(), ingest, settings, metrics);
        let route = self
            .0
            .attach(&link, config, delivery.clone())
            .map_err(LinkErrorReason::Connector)?;
        let source = Arc::clone(&self.0);
        Ok(Box::pin(async move {
            stop.cancelled().await;
            source.detach(route);
            let within = delivery.settings().drain_timeout;
            if !delivery.drain(within).await {
                warn!(%link, in_flight = delivery.in_flight(), "drain timed out; unanswered requests get no answer");
            }
        }))
    }

    fn close(&self) -> impl Future<Output = ()> + Send {
        self.0.close()
    }
}

/// [`Ingest`] behind a pointer, so a connector can keep the links of one provider in one table.
trait ErasedIngest: Send + Sync + 'static {
    fn deliver_boxed<'a>(
        &'a self,
        batch: &'a [Message],
    ) -> BoxFuture<'a, Result<Result<(), crate::Failure>, anyhow::Error>>;
}

impl<I: Ingest> ErasedIngest for I {
    fn deliver_boxed<'a>(
        &'a self,
        batch: &'a [Message],
    ) -> BoxFuture<'a, Result<Result<(), crate::Failure>, anyhow::Error>> {
        Box::pin(self.deliver(batch))
    }
}

/// A shared [`ErasedIngest`], itself an [`Ingest`] (a sized type, so futures over it stay `Send`
/// for every lifetime).
#[derive(Clone)]
struct SharedIngest(Arc<dyn ErasedIngest>);

impl Ingest for SharedIngest {
    async fn deliver(&self, batch: &[Message]) -> Result<Result<(), crate::Failure>, anyhow::Error> {
        self.0.deliver_boxed(batch).await
    }
}

/// One link's way to its component, for a request-driven source: its `ingest` handle, settings,
/// counters and `max_in_flight` slots. Cheap to clone.
#[derive(Clone)]
pub struct Delivery(Arc<DeliveryInner>);

struct DeliveryInner {
    link: LinkKey,
    ingest: SharedIngest,
    settings: RunnerSettings,
    metrics: Arc<LinkMetrics>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("link", &self.0.link)
            .field("settings", &self.0.settings)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery handle for `link` through `ingest`, counting into `metrics`.
    pub fn new<I: Ingest>(link: LinkKey, ingest: Arc<I>, settings: RunnerSettings, metrics: Arc<LinkMetrics>) -> Self {
        Self(Arc::new(DeliveryInner {
            link,
            ingest: SharedIngest(ingest),
            slots: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
            metrics,
        }))
    }

    /// The link this delivers for.
    #[must_use]
    pub fn link(&self) -> &LinkKey {
        &self.0.link
    }

    /// The link's engine settings.
    #[must_use]
    pub fn settings(&self) -> &RunnerSettings {
        &self.0.settings
    }

    /// The link's counters.
    #[must_use]
    pub fn metrics(&self) -> &Arc<LinkMetrics> {
        &self.0.metrics
    }

    /// Slots held right now.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.0.settings.max_in_flight - self.0.slots.available_permits()
    }

    /// Takes one of the link's `max_in_flight` slots, or `None` (counted as `busy`) when all are
    /// held: the caller answers "busy" rather than waiting, so nothing queues without bound.
    #[must_use]
    pub fn try_reserve(&self) -> Option<Slot> {
        match Arc::clone(&self.0.slots).try_acquire_owned() {
            Ok(permit) => {
                self.0.metrics.in_flight.fetch_add(1, Relaxed);
                Some(Slot {
                    delivery: self.clone(),
                    _permit: permit,
                })
            }
            Err(_) => {
                LinkMetrics::add(&self.0.metrics.busy, 1);
                None
            }
        }
    }

    /// Waits until no slot is held, or `within` passes; returns whether every slot came back.
    pub async fn drain(&self, within: Duration) -> bool {
        let all = u32::try_from(self.0.settings.max_in_flight).unwrap_or(u32::MAX);
        tokio::time::timeout(within, self.0.slots.acquire_many(all))
            .await
            .is_ok()
    }
}

/// One of a link's in-flight slots, held while a request is read and delivered.
#[derive(Debug)]
pub struct Slot {
    delivery: Delivery,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.delivery.0.metrics.in_flight.fetch_sub(1, Relaxed);
    }
}

/// What became of records handed to [`Slot::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The component accepted every record.
    Delivered,
    /// The component rejected these records for good (indices into the batch, in order); it
    /// accepted the others.
    Rejected(Vec<Rejected>),
    /// Not accepted in time (the component asked to retry, did not answer, or could not be
    /// reached): the caller should send the records again after `retry_after`.
    Retry {
        /// Why, for the caller.
        reason: String,
        /// The link's next backoff delay.
        retry_after: Duration,
    },
}

impl Slot {
    /// Delivers `batch` with the link's policy: each attempt is bounded by `deliver_timeout` and
    /// by `deadline`; a `retry` answer, a transport error or a timeout is retried after the
    /// link's backoff while `max_retries` allows and the next attempt can start before
    /// `deadline`, else the outcome is [`Outcome::Retry`]. Counts every record as `polled` and
    /// what the component accepted or rejected.
    pub async fn deliver(&self, batch: Vec<Message>, deadline: Instant) -> Outcome {
        let inner = &self.delivery.0;
        let settings = &inner.settings;
        LinkMetrics::add(&inner.metrics.polled, batch.len());
        let span = tracing::info_span!(
            "request",
            component = %inner.link.component,
            link = %inner.link.name,
            records = batch.len(),
            bytes = batch.iter().map(|m| m.payload.len()).sum::<usize>(),
            outcome = tracing::field::Empty,
        );
        async {
            let mut attempts = 0u32;
            loop {
                let limit = settings
                    .deliver_timeout
                    .min(deadline.saturating_duration_since(Instant::now()));
                let reason = match attempt(&inner.ingest, &batch, limit, &inner.metrics).await {
                    Attempt::Delivered => return Outcome::Delivered,
                    Attempt::Rejected(reasons) => {
                        for (index, reason) in &reasons {
                            debug!(origin = %batch[*index].origin, %reason, "record rejected");
                        }
                        return Outcome::Rejected(
                            reasons
                                .into_iter()
                                .map(|(index, reason)| Rejected {
                                    index: u32::try_from(index).unwrap_or(u32::MAX),
                                    reason,
                                })
                                .collect(),
                        );
                    }
                    Attempt::Failed(reason) => reason,
                };
                attempts += 1;
                let delay = settings.backoff.delay(attempts);
                let out_of_retries = settings.max_retries.is_some_and(|max| attempts > max);
                if out_of_retries || Instant::now() + delay >= deadline {
                    tracing::Span::current().record("outcome", "retry");
                    debug!(%reason, attempts, "records not accepted in time; the caller is told to retry");
                    return Outcome::Retry {
                        reason,
                        retry_after: delay,
                    };
                }
                inner.metrics.retried.fetch_add(1, Relaxed);
                debug!(%reason, attempt = attempts, ?delay, "retrying records");
                tokio::time::sleep(delay).await;
            }
        }
        .instrument(span)
        .await
    }
}
