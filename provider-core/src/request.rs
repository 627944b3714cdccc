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
use tracing::{debug, warn, Instrument as _};

use crate::config::{ConfigError, ConfigReader};
use crate::link::{LinkErrorReason, LinkKey};
use crate::metrics::LinkMetrics;
use crate::source::{attempt, Attempt, Ingest, LinkStart, RunnerSettings, SourceSide};
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

    /// Checks a link's config against the links already attached, ignoring the link's own
    /// running route (e.g. its route is another link's). When a link is put again the engine
    /// calls it before detaching the running link, which keeps serving if this fails. The default
    /// checks nothing.
    fn check(&self, link: &LinkKey, config: &Self::Config) -> Result<(), ConnectorError> {
        let _ = (link, config);
        Ok(())
    }

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

    fn check(&self, link: &LinkKey, config: &Self::Config) -> impl Future<Output = Result<(), LinkErrorReason>> + Send {
        std::future::ready(self.0.check(link, config).map_err(LinkErrorReason::Connector))
    }

    async fn start<I: Ingest>(
        self: Arc<Self>,
        config: Self::Config,
        LinkStart {
            link,
            ingest,
            settings,
            metrics,
            stop,
            ..
        }: LinkStart<I>,
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
        crate::trace::follow_records(&span, &batch);
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::engine::Engine;
    use crate::link::LinkSpec;
    use crate::{Failure, Unsupported};

    /// Answers each call with the next scripted answer (then accepts), or never answers.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<Vec<Result<(), Failure>>>,
        calls: std::sync::atomic::AtomicUsize,
        hang: bool,
    }

    impl Ingest for Scripted {
        async fn deliver(&self, _: &[Message]) -> Result<Result<(), Failure>, anyhow::Error> {
            self.calls.fetch_add(1, Relaxed);
            if self.hang {
                std::future::pending::<()>().await;
            }
            let mut answers = self.answers.lock().unwrap();
            Ok(if answers.is_empty() { Ok(()) } else { answers.remove(0) })
        }
    }

    fn settings(max_in_flight: usize, max_retries: Option<u32>) -> RunnerSettings {
        RunnerSettings {
            max_in_flight,
            deliver_timeout: Duration::from_millis(200),
            backoff: crate::backoff::Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(20),
            },
            max_retries,
            ..RunnerSettings::default()
        }
    }

    fn delivery(ingest: Scripted, settings: RunnerSettings) -> (Delivery, Arc<Scripted>) {
        let ingest = Arc::new(ingest);
        let d = Delivery::new(
            LinkKey::new("c", "default"),
            Arc::clone(&ingest),
            settings,
            Arc::new(LinkMetrics::default()),
        );
        (d, ingest)
    }

    fn batch(n: usize) -> Vec<Message> {
        (0..n).map(|i| Message::new(vec![b'x'], format!("t#{i}"))).collect()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn delivered_and_rejected_are_counted() {
        let script = Scripted {
            answers: Mutex::new(vec![
                Ok(()),
                Err(Failure::Reject(vec![
                    Rejected {
                        index: 2,
                        reason: "bad".into(),
                    },
                    Rejected {
                        index: 9,
                        reason: "outside".into(),
                    },
                    Rejected {
                        index: 0,
                        reason: "worse".into(),
                    },
                ])),
            ]),
            ..Scripted::default()
        };
        let (d, _) = delivery(script, settings(2, None));
        let slot = d.try_reserve().unwrap();
        assert_eq!(slot.deliver(batch(2), soon()).await, Outcome::Delivered);
        let outcome = slot.deliver(batch(3), soon()).await;
        assert_eq!(
            outcome,
            Outcome::Rejected(vec![
                Rejected {
                    index: 0,
                    reason: "worse".into()
                },
                Rejected {
                    index: 2,
                    reason: "bad".into()
                },
            ])
        );
        let m = d.metrics().snapshot();
        assert_eq!((m.polled, m.delivered, m.rejected, m.retried), (5, 3, 2, 0));
    }

    #[tokio::test]
    async fn retries_within_max_retries_then_tells_the_caller_to_retry() {
        let script = Scripted {
            answers: Mutex::new(vec![Err(Failure::Retry("full".into())); 5]),
            ..Scripted::default()
        };
        let (d, ingest) = delivery(script, settings(1, Some(2)));
        let slot = d.try_reserve().unwrap();
        match slot.deliver(batch(1), soon()).await {
            Outcome::Retry { reason, retry_after } => {
                assert!(reason.contains("full"), "{reason}");
                assert!(retry_after >= Duration::from_millis(10), "{retry_after:?}");
            }
            other => panic!("expected retry, got {other:?}"),
        }
        assert_eq!(ingest.calls.load(Relaxed), 3);
        assert_eq!(d.metrics().snapshot().retried, 2);
        // Retries forever (no `max_retries`) until the answer is success.
        let script = Scripted {
            answers: Mutex::new(vec![Err(Failure::Retry("full".into())); 3]),
            ..Scripted::default()
        };
        let (d, ingest) = delivery(script, settings(1, None));
        assert_eq!(
            d.try_reserve().unwrap().deliver(batch(1), soon()).await,
            Outcome::Delivered
        );
        assert_eq!(ingest.calls.load(Relaxed), 4);
    }

    #[tokio::test]
    async fn the_deadline_bounds_a_stalled_component() {
        let (d, _) = delivery(
            Scripted {
                hang: true,
                ..Scripted::default()
            },
            settings(1, None),
        );
        let started = Instant::now();
        let outcome = d
            .try_reserve()
            .unwrap()
            .deliver(batch(1), started + Duration::from_millis(300))
            .await;
        assert!(
            matches!(outcome, Outcome::Retry { ref reason, .. } if reason.contains("no answer")),
            "{outcome:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(280) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn slots_are_bounded_and_drained() {
        let (d, _) = delivery(Scripted::default(), settings(2, None));
        let a = d.try_reserve().unwrap();
        let _b = d.try_reserve().unwrap();
        assert!(d.try_reserve().is_none());
        assert_eq!(d.in_flight(), 2);
        assert_eq!(d.metrics().snapshot().busy, 1);
        assert_eq!(d.metrics().snapshot().in_flight, 2);
        assert!(!d.drain(Duration::from_millis(20)).await);
        drop(a);
        assert!(d.try_reserve().is_some());
        drop(_b);
        assert!(d.drain(Duration::from_millis(20)).await);
        assert_eq!(d.metrics().snapshot().in_flight, 0);
    }

    /// A request source whose routes are names that must be unique.
    #[derive(Default)]
    struct Names {
        taken: Mutex<HashMap<String, Delivery>>,
        closed: std::sync::atomic::AtomicUsize,
    }

    impl RequestSource for Names {
        type Config = String;
        type Route = String;

        fn runner_defaults(&self) -> RunnerSettings {
            settings(3, Some(1))
        }

        fn parse_config(&self, config: &ConfigReader<'_>) -> Result<String, ConfigError> {
            Ok(config.required_str("name")?.to_string())
        }

        fn attach(&self, link: &LinkKey, name: String, delivery: Delivery) -> Result<String, ConnectorError> {
            let mut taken = self.taken.lock().unwrap();
            if let Some(other) = taken.get(&name) {
                return Err(ConnectorError::msg(format!("`{name}` is taken by {}", other.link())));
            }
            assert_eq!(delivery.link(), link);
            taken.insert(name.clone(), delivery);
            Ok(name)
        }

        fn detach(&self, name: String) {
            self.taken.lock().unwrap().remove(&name);
        }

        async fn close(&self) {
            self.closed.fetch_add(1, Relaxed);
        }
    }

    fn spec(component: &str, pairs: &[(&str, &str)]) -> LinkSpec {
        LinkSpec::new(
            LinkKey::new(component, "default"),
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        )
    }

    #[tokio::test]
    async fn engine_runs_request_sources_with_their_defaults_and_refusals() {
        let engine = Engine::new(Requests::new(Names::default()), Unsupported);
        let ingest = || async { Ok(Scripted::default()) };
        engine
            .put_source_link(spec("a", &[("name", "x")]), ingest)
            .await
            .unwrap();
        let names = Arc::clone(engine_source(&engine));
        let first = names.taken.lock().unwrap()["x"].clone();
        assert_eq!(first.settings().max_in_flight, 3, "connector default");
        assert_eq!(first.settings().max_retries, Some(1), "connector default");

        let err = engine
            .put_source_link(spec("b", &[("name", "x"), ("max_in_flight", "7")]), ingest)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused source link `default` of component `b`: `x` is taken by link `default` of component `a`"
        );
        let status = engine.status();
        assert_eq!(status.links.len(), 1);
        assert_eq!(status.refused[0].component, "b");
        assert!(names.taken.lock().unwrap()["x"].link().component == "a");

        engine
            .put_source_link(spec("b", &[("name", "y"), ("max_in_flight", "7")]), ingest)
            .await
            .unwrap();
        assert_eq!(names.taken.lock().unwrap()["y"].settings().max_in_flight, 7);
        assert!(engine.status().refused.is_empty());

        // Delete waits for the link's requests to finish.
        let slot = first.try_reserve().unwrap();
        let deleting = tokio::spawn({
            let engine = Arc::new(engine);
            let e = Arc::clone(&engine);
            async move {
                e.delete_source_link(&LinkKey::new("a", "default")).await;
                e
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!deleting.is_finished(), "delete must wait for the request in flight");
        assert!(
            !names.taken.lock().unwrap().contains_key("x"),
            "no new requests once deleting"
        );
        drop(slot);
        let engine = deleting.await.unwrap();
        engine.shutdown().await;
        assert!(names.taken.lock().unwrap().is_empty());
        assert_eq!(names.closed.load(Relaxed), 1);
    }

    fn engine_source<K: crate::SinkConnector>(engine: &Engine<Requests<Names>, K>) -> &Arc<Names> {
        engine.source().source()
    }
}
