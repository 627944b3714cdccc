//! The link table: every link this provider serves, as a source or as a sink, and the tasks and
//! writers behind them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::buffer::source::SourceBuffer;
use crate::buffer::BufferOptions;
use crate::config::{ConfigError, ConfigReader};
use crate::link::{keep_opening, open_with_retry, LinkError, LinkErrorReason, LinkKey, LinkSpec, Role};
use crate::metrics::{LinkHealth, LinkMetrics, MetricsSnapshot};
use crate::sink::{SinkConnector, SinkLink, SinkSettings};
use crate::source::{Ingest, LinkStart, RunnerSettings, SourceSide};
use crate::tap::{TapError, TapRequest, TapStream, Taps};
use crate::{ConnectorError, Failure, Message};

struct SourceLink {
    stop: CancellationToken,
    task: JoinHandle<()>,
    metrics: Arc<LinkMetrics>,
    drain_timeout: std::time::Duration,
}

/// The delivery engine of one provider: its source links (each a running
/// [runner](crate::source::run_source), or a [request-driven](crate::request) link), its sink
/// links, and the links it refused.
///
/// It knows nothing of wasmCloud: [`crate::wasmcloud`] feeds it links and calls, and a 2.x host
/// plugin or a standalone wRPC service could do the same.
pub struct Engine<S: SourceSide, K: SinkConnector> {
    source: Arc<S>,
    sink: Arc<K>,
    sources: Mutex<HashMap<LinkKey, SourceLink>>,
    /// Deleted source links whose runner is still finishing its in-flight batches; listed in
    /// [`Engine::status`] until it has stopped, so that "gone from the status" means "reads no more".
    stopping: Mutex<HashMap<LinkKey, Arc<LinkMetrics>>>,
    sinks: RwLock<HashMap<LinkKey, Arc<SinkLink<K::Writer>>>>,
    refused: Mutex<BTreeMap<(Role, LinkKey), String>>,
    /// Where single-reader source links take their lease, once [`Engine::use_leases`] is called.
    leases: std::sync::OnceLock<crate::lease::Leases>,
    /// Open taps, fed where source batches are delivered and sink writes arrive.
    taps: Arc<Taps>,
    /// The keys links may carry ([`Engine::with_schema`]); without one, unknown keys are warned about.
    schema: Option<Arc<crate::schema::Schema>>,
}

/// A refused link and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RefusedLink {
    /// `source` or `sink`.
    pub role: String,
    /// The component at the other end.
    pub component: String,
    /// The link name.
    pub name: String,
    /// The error, naming the key at fault.
    pub error: String,
}

/// A live link and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LinkStatus {
    /// `source` or `sink`.
    pub role: String,
    /// The component at the other end.
    pub component: String,
    /// The link name.
    pub name: String,
    /// Its counters.
    pub metrics: MetricsSnapshot,
    /// Why the link moves nothing yet, while its system cannot be reached (the engine keeps
    /// trying); absent when it is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// The instance that reads the link while this one stands by (a single-reader source link
    /// of a provider running as several instances); absent when this instance reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_for: Option<String>,
}

/// What the engine is doing: live links with counters, and refused links with their errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Status {
    /// Links being served.
    pub links: Vec<LinkStatus>,
    /// Links refused since they were last put successfully.
    pub refused: Vec<RefusedLink>,
}

impl Status {
    /// One status of the statuses several instances of a provider answered (every instance
    /// gets every link): a link's counters add up; it is standing by only when every instance
    /// stands by, and degraded when no instance that reads it is healthy; refusals are listed
    /// once each.
    #[must_use]
    pub fn merge(instances: impl IntoIterator<Item = Status>) -> Status {
        let mut merged = Status::default();
        for status in instances {
            for link in status.links {
                let same = merged
                    .links
                    .iter_mut()
                    .find(|l| (&l.role, &l.component, &l.name) == (&link.role, &link.component, &link.name));
                let Some(m) = same else {
                    merged.links.push(link);
                    continue;
                };
                m.metrics.add(&link.metrics);
                match (m.standby_for.is_some(), link.standby_for.is_some()) {
                    // The other instance reads it: its health is the link's.
                    (true, false) => {
                        m.standby_for = None;
                        m.degraded = link.degraded;
                    }
                    (false, false) if link.degraded.is_none() => m.degraded = None,
                    _ => {}
                }
            }
            for refused in status.refused {
                if !merged.refused.contains(&refused) {
                    merged.refused.push(refused);
                }
            }
        }
        merged
            .links
            .sort_by(|a, b| (&a.role, &a.component, &a.name).cmp(&(&b.role, &b.component, &b.name)));
        merged
    }

    /// Why the link from or to `component` moves nothing yet, if it is degraded.
    #[must_use]
    pub fn degraded(&self, component: &str) -> Option<&str> {
        self.links
            .iter()
            .find(|l| l.component == component)
            .and_then(|l| l.degraded.as_deref())
    }

    /// Why the link from or to `component` was refused, if it was.
    #[must_use]
    pub fn refusal(&self, component: &str) -> Option<&str> {
        self.refused
            .iter()
            .find(|r| r.component == component)
            .map(|r| r.error.as_str())
    }
}

impl<S: SourceSide, K: SinkConnector> Engine<S, K> {
    /// An engine with no links, for a provider made of `source` and `sink`.
    pub fn new(source: S, sink: K) -> Self {
        Self {
            source: Arc::new(source),
            sink: Arc::new(sink),
            sources: Mutex::default(),
            stopping: Mutex::default(),
            sinks: RwLock::default(),
            refused: Mutex::default(),
            leases: std::sync::OnceLock::new(),
            taps: Arc::default(),
            schema: None,
        }
    }

    /// Checks every link's keys against `schema` before its config is parsed: a key the
    /// provider does not know, or a secret given as plain config, refuses the link (naming the
    /// key and the link); keys of the other role are warned about and ignored.
    #[must_use]
    pub fn with_schema(mut self, schema: crate::schema::Schema) -> Self {
        self.schema = Some(Arc::new(schema));
        self
    }

    /// Refuses a link whose keys the schema does not know; warns about keys of the other role.
    fn check_keys(&self, role: Role, spec: &LinkSpec) -> Result<(), LinkError> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let ignored = schema
            .check_link(role, &spec.config, &spec.secrets)
            .map_err(|e| self.refuse(role, &spec.key, e.into()))?;
        if !ignored.is_empty() {
            let key = &spec.key;
            warn!(%role, component = %key.component, link = %key.name, keys = ?ignored, "ignoring link config keys this role does not read");
        }
        Ok(())
    }

    /// From now on, a source link that must have one reader across the provider's instances
    /// ([`SourceSide::single_reader`]) is read only while this instance holds its lease in
    /// `leases` (link config `lease_ttl`). The first call wins; `make` runs once.
    pub fn use_leases(&self, make: impl FnOnce() -> crate::lease::Leases) {
        self.leases.get_or_init(make);
    }

    /// The provider's source side.
    pub fn source(&self) -> &S {
        &self.source
    }

    fn refuse(&self, role: Role, key: &LinkKey, reason: LinkErrorReason) -> LinkError {
        let err = LinkError {
            key: key.clone(),
            role,
            reason,
        };
        error!(%role, component = %key.component, link = %key.name, error = %err, "link refused");
        lock(&self.refused).insert((role, key.clone()), err.to_string());
        err
    }

    fn warn_unread(&self, role: Role, key: &LinkKey, config: &ConfigReader<'_>) {
        if self.schema.is_some() {
            // Checked against the schema before parsing.
            return;
        }
        let unread = config.unread_keys();
        if !unread.is_empty() {
            warn!(%role, component = %key.component, link = %key.name, keys = ?unread, "ignoring unknown link config keys");
        }
    }

    /// Starts feeding the component of `spec` through the [`Ingest`] `make_ingest` makes, once the
    /// link's config is accepted.
    ///
    /// A link that is already running is replaced: the new config is parsed and
    /// [checked](SourceSide::check) first, and only if it passes is the running link stopped
    /// (drained) and the new one opened; a refused config leaves the running link as it was. The
    /// old link stops before the new one opens because most sources hold something two readers
    /// of one link cannot share (a consumer group member id, a persistent session, a checkpoint,
    /// an HTTP route), so what only opening can tell still refuses the new link after the old one
    /// stopped.
    pub async fn put_source_link<I, F, Fut>(&self, spec: LinkSpec, make_ingest: F) -> Result<(), LinkError>
    where
        I: Ingest,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<I>>,
    {
        let key = spec.key.clone();
        if !S::ENABLED {
            return Err(self.refuse(Role::Source, &key, LinkErrorReason::Unsupported(Role::Source)));
        }
        self.check_keys(Role::Source, &spec)?;
        let reader_config = ConfigReader::new(&spec.config, &spec.secrets);
        let settings = RunnerSettings::from_config_or(&reader_config, &self.source.runner_defaults())
            .map_err(|e| self.refuse(Role::Source, &key, e.into()))?;
        let sensitive = reader_config
            .bool_or(crate::tap::SENSITIVE_KEY, false)
            .map_err(|e| self.refuse(Role::Source, &key, e.into()))?;
        if sensitive {
            // At once, so that no tap sees a record of the link while it is being replaced.
            self.taps.set_sensitive(Role::Source, &key, true);
        }
        let buffer =
            BufferOptions::from_config(&reader_config).map_err(|e| self.refuse(Role::Source, &key, e.into()))?;
        let config = self
            .source
            .parse_config(&reader_config)
            .map_err(|e| self.refuse(Role::Source, &key, e.into()))?;
        let lease = match self.leases.get().filter(|_| self.source.single_reader(&config)) {
            Some(leases) => Some(leases.lease(
                &key,
                crate::lease::ttl_from(&reader_config).map_err(|e| self.refuse(Role::Source, &key, e.into()))?,
            )),
            None => None,
        };
        self.warn_unread(Role::Source, &key, &reader_config);
        let ingest = make_ingest().await.map_err(|e| {
            self.refuse(
                Role::Source,
                &key,
                LinkErrorReason::Open(crate::ConnectorError::msg(format!("{e:#}"))),
            )
        })?;
        if lock(&self.sources).contains_key(&key) {
            if let Err(reason) = self.source.check(&key, &config).await {
                warn!(component = %key.component, link = %key.name, "the new config is refused; the running link keeps its old one");
                return Err(self.refuse(Role::Source, &key, reason));
            }
        }
        self.delete_source_link(&key).await;
        self.taps.set_sensitive(Role::Source, &key, sensitive);
        let ingest = Arc::new(TappedIngest {
            inner: ingest,
            taps: Arc::clone(&self.taps),
            key: key.clone(),
        });
        let metrics = Arc::new(LinkMetrics::default());
        let stop = CancellationToken::new();
        let drain_timeout = settings.drain_timeout;
        let serve = match buffer {
            None => Arc::clone(&self.source)
                .start(config, link_start(&key, ingest, &settings, &metrics, &stop, lease))
                .await
                .map_err(|reason| self.refuse(Role::Source, &key, reason))?,
            Some(options) => {
                // The reader delivers into the buffer; its drainer delivers to the step.
                let (buffered, buffer) =
                    SourceBuffer::start(&key, &options, ingest, &settings, Arc::clone(&metrics), stop.clone())
                        .await
                        .map_err(|err| {
                            let reason =
                                ConfigError::invalid("buffer_dir", format!("cannot open the source buffer: {err}"));
                            self.refuse(Role::Source, &key, reason.into())
                        })?;
                let link = link_start(&key, Arc::new(buffered), &settings, &metrics, &stop, lease);
                match Arc::clone(&self.source).start(config, link).await {
                    Ok(serve) => Box::pin(async move {
                        serve.await;
                        buffer.finish().await;
                    }),
                    Err(reason) => {
                        stop.cancel();
                        buffer.finish().await;
                        return Err(self.refuse(Role::Source, &key, reason));
                    }
                }
            }
        };
        let task = tokio::spawn(serve);
        lock(&self.refused).remove(&(Role::Source, key.clone()));
        lock(&self.sources).insert(
            key.clone(),
            SourceLink {
                stop,
                task,
                metrics,
                drain_timeout,
            },
        );
        info!(component = %key.component, link = %key.name, "source link started");
        Ok(())
    }

    /// Stops a source link: no more polling, in-flight batches finish (within `drain_timeout`)
    /// and are acknowledged. Returns once the link has stopped; `false` if there was no such link.
    pub async fn delete_source_link(&self, key: &LinkKey) -> bool {
        lock(&self.refused).remove(&(Role::Source, key.clone()));
        let link = {
            // Moved under the lock, so a status never misses it (the same order as `status`).
            let mut sources = lock(&self.sources);
            let Some(link) = sources.remove(key) else {
                return false;
            };
            lock(&self.stopping).insert(key.clone(), Arc::clone(&link.metrics));
            link
        };
        link.stop.cancel();
        if let Err(err) = link.task.await {
            error!(component = %key.component, link = %key.name, %err, "source link task failed");
        }
        lock(&self.stopping).remove(key);
        self.taps.forget(Role::Source, key);
        info!(component = %key.component, link = %key.name, "source link stopped");
        true
    }

    /// Starts serving `sink.write` for the component of `spec`.
    ///
    /// A link that already exists is replaced, and a new config that is refused leaves it as it
    /// was. The new writer is opened first and the old one closed once its running writes are
    /// done, unless the connector is [exclusive](SinkConnector::EXCLUSIVE): then the new config is
    /// [checked](SinkConnector::check), the old writer closed (writes meanwhile answer `retry`),
    /// and the new one opened, so what only opening can tell refuses the new link after the old
    /// one closed.
    pub async fn put_sink_link(&self, spec: LinkSpec) -> Result<(), LinkError> {
        let key = spec.key.clone();
        if !K::ENABLED {
            return Err(self.refuse(Role::Sink, &key, LinkErrorReason::Unsupported(Role::Sink)));
        }
        self.check_keys(Role::Sink, &spec)?;
        let reader_config = ConfigReader::new(&spec.config, &spec.secrets);
        let settings =
            SinkSettings::from_config(&reader_config).map_err(|e| self.refuse(Role::Sink, &key, e.into()))?;
        let sensitive = reader_config
            .bool_or(crate::tap::SENSITIVE_KEY, false)
            .map_err(|e| self.refuse(Role::Sink, &key, e.into()))?;
        if sensitive {
            // At once, so that no tap sees a record of the link while it is being replaced.
            self.taps.set_sensitive(Role::Sink, &key, true);
        }
        let config = self
            .sink
            .parse_config(&reader_config)
            .map_err(|e| self.refuse(Role::Sink, &key, e.into()))?;
        self.warn_unread(Role::Sink, &key, &reader_config);
        let buffer = settings.buffer.clone();
        let link = Arc::new(SinkLink::new(settings));
        // A buffer directory is the link's alone (its lock says so): a buffered link, or one
        // replacing a buffered link, closes the old one first as an exclusive connector does.
        let replace_first = read_lock(&self.sinks)
            .get(&key)
            .is_some_and(|old| K::EXCLUSIVE || buffer.is_some() || old.buffer.get().is_some());
        if replace_first {
            match open_with_retry(&key, Role::Sink, || self.sink.check(&key, &config)).await {
                Err(error) if !error.is_transient() => {
                    warn!(component = %key.component, link = %key.name, "the new config is refused; the running link keeps its old one");
                    return Err(self.refuse(Role::Sink, &key, LinkErrorReason::Open(error)));
                }
                _ => {}
            }
            let old = write_lock(&self.sinks).insert(key.clone(), Arc::clone(&link));
            if let Some(old) = old {
                if let Err(err) = old.drain().await {
                    warn!(component = %key.component, link = %key.name, error = %err, "closing the replaced sink failed");
                }
            }
        }
        if let Some(options) = &buffer {
            if let Err(err) = link.start_buffer(&key, options).await {
                self.forget_new_sink(&key, &link, replace_first);
                let reason = ConfigError::invalid("buffer_dir", format!("cannot open the sink buffer: {err}"));
                return Err(self.refuse(Role::Sink, &key, reason.into()));
            }
        }
        match open_with_retry(&key, Role::Sink, || check_and_open(&*self.sink, &key, &config)).await {
            Ok(writer) => {
                let _ = link.writer.set(writer);
            }
            Err(error) if error.is_transient() => {
                warn!(component = %key.component, link = %key.name, %error, "sink link degraded: cannot connect yet; trying on in the background");
                link.metrics.set_health(LinkHealth::Degraded(error.to_string()));
                tokio::spawn(keep_opening_sink(
                    Arc::clone(&self.sink),
                    key.clone(),
                    config,
                    Arc::clone(&link),
                ));
            }
            Err(error) => {
                self.forget_new_sink(&key, &link, replace_first);
                if let Err(err) = link.drain().await {
                    warn!(component = %key.component, link = %key.name, error = %err, "closing the refused sink failed");
                }
                return Err(self.refuse(Role::Sink, &key, LinkErrorReason::Open(error)));
            }
        }
        lock(&self.refused).remove(&(Role::Sink, key.clone()));
        self.taps.set_sensitive(Role::Sink, &key, sensitive);
        let old = write_lock(&self.sinks).insert(key.clone(), Arc::clone(&link));
        if let Some(old) = old.filter(|old| !Arc::ptr_eq(old, &link)) {
            if let Err(err) = old.drain().await {
                warn!(component = %key.component, link = %key.name, error = %err, "closing the replaced sink failed");
            }
        }
        info!(component = %key.component, link = %key.name, "sink link started");
        Ok(())
    }

    /// Takes a sink link that is being refused out of the table, if it was put there to replace
    /// an old one first.
    fn forget_new_sink(&self, key: &LinkKey, link: &Arc<SinkLink<K::Writer>>, replace_first: bool) {
        if replace_first {
            let mut sinks = write_lock(&self.sinks);
            if sinks.get(key).is_some_and(|l| Arc::ptr_eq(l, link)) {
                sinks.remove(key);
            }
        }
    }

    /// Stops a sink link: new writes are refused, running writes finish, a buffered link's
    /// drainer writes what it can within [`FINAL_DRAIN`](crate::buffer::FINAL_DRAIN)
    /// (the rest stays on disk for the next put), the writer flushes. `false` if there was no
    /// such link.
    pub async fn delete_sink_link(&self, key: &LinkKey) -> bool {
        lock(&self.refused).remove(&(Role::Sink, key.clone()));
        let Some(link) = write_lock(&self.sinks).remove(key) else {
            return false;
        };
        self.taps.forget(Role::Sink, key);
        if let Err(err) = link.drain().await {
            warn!(component = %key.component, link = %key.name, error = %err, "closing the sink failed");
        }
        info!(component = %key.component, link = %key.name, "sink link stopped");
        true
    }

    /// Serves one `sink.write` from `component` over its link `link_name`. A component with no
    /// such link gets an error and never reaches another component's sink.
    pub async fn write(&self, component: &str, link_name: &str, batch: Vec<Message>) -> Result<(), Failure> {
        let key = LinkKey::new(component, link_name);
        let link = read_lock(&self.sinks).get(&key).cloned();
        match link {
            Some(link) => {
                self.taps.observe(Role::Sink, &key, &batch);
                link.write(&key, batch).await
            }
            None => {
                warn!(component, link = link_name, "write from a component with no sink link");
                Err(Failure::Retry(format!(
                    "no sink link: {key} is not linked to this provider"
                )))
            }
        }
    }

    /// The longest `drain_timeout` of the running source links: how long [`Engine::shutdown`]
    /// may take to drain them.
    pub fn longest_drain(&self) -> std::time::Duration {
        lock(&self.sources)
            .values()
            .map(|l| l.drain_timeout)
            .max()
            .unwrap_or_default()
    }

    /// Stops every link, draining sources and flushing sinks. Safe to call more than once.
    pub async fn shutdown(&self) {
        let sources: Vec<LinkKey> = lock(&self.sources).keys().cloned().collect();
        let sinks: Vec<LinkKey> = read_lock(&self.sinks).keys().cloned().collect();
        futures::future::join_all(sources.iter().map(|k| self.delete_source_link(k))).await;
        futures::future::join_all(sinks.iter().map(|k| self.delete_sink_link(k))).await;
        self.source.close().await;
    }

    /// Opens a tap on the live links of `request.at` (to or from `request.component`, when
    /// given): a sampled, bounded copy of their records until `n` arrived or it times out.
    /// Refused when a link it would cover is [sensitive](crate::tap::SENSITIVE_KEY) or none
    /// matches.
    pub fn tap(&self, request: &TapRequest) -> Result<TapStream, TapError> {
        let matches = |k: &&LinkKey| request.component.as_ref().is_none_or(|c| &k.component == c);
        let links: Vec<LinkKey> = match request.at {
            Role::Source => lock(&self.sources).keys().filter(matches).cloned().collect(),
            Role::Sink => read_lock(&self.sinks).keys().filter(matches).cloned().collect(),
        };
        self.taps.open(request, links)
    }

    /// Live links with their counters (and why a degraded one moves nothing yet), and refused
    /// links with their errors.
    pub fn status(&self) -> Status {
        let live: Vec<(Role, LinkKey, Arc<LinkMetrics>)> = lock(&self.sources)
            .iter()
            .map(|(k, l)| (Role::Source, k.clone(), Arc::clone(&l.metrics)))
            .chain(
                lock(&self.stopping)
                    .iter()
                    .map(|(k, metrics)| (Role::Source, k.clone(), Arc::clone(metrics))),
            )
            .chain(
                read_lock(&self.sinks)
                    .iter()
                    .map(|(k, l)| (Role::Sink, k.clone(), Arc::clone(&l.metrics))),
            )
            .collect();
        let mut refused: Vec<RefusedLink> = lock(&self.refused)
            .iter()
            .map(|((role, k), error)| RefusedLink {
                role: role.to_string(),
                component: k.component.clone(),
                name: k.name.clone(),
                error: error.clone(),
            })
            .collect();
        let mut links = Vec::with_capacity(live.len());
        for (role, k, metrics) in live {
            let (degraded, standby_for) = match metrics.health() {
                LinkHealth::Ok => (None, None),
                LinkHealth::Degraded(reason) => (Some(reason), None),
                LinkHealth::Standby(holder) => (None, Some(holder)),
                LinkHealth::Refused(error) => {
                    refused.push(RefusedLink {
                        role: role.to_string(),
                        component: k.component,
                        name: k.name,
                        error,
                    });
                    continue;
                }
            };
            links.push(LinkStatus {
                role: role.to_string(),
                component: k.component,
                name: k.name,
                metrics: metrics.snapshot(),
                degraded,
                standby_for,
            });
        }
        links.sort_by(|a, b| (&a.role, &a.component, &a.name).cmp(&(&b.role, &b.component, &b.name)));
        refused.sort_by(|a, b| (&a.role, &a.component, &a.name).cmp(&(&b.role, &b.component, &b.name)));
        Status { links, refused }
    }
}

/// A source link's way to its step, offering each batch to the open taps before delivering it.
struct TappedIngest<I> {
    inner: I,
    taps: Arc<Taps>,
    key: LinkKey,
}

impl<I: Ingest> Ingest for TappedIngest<I> {
    fn deliver(&self, batch: &[Message]) -> impl Future<Output = Result<Result<(), Failure>, anyhow::Error>> + Send {
        self.taps.observe(Role::Source, &self.key, batch);
        self.inner.deliver(batch)
    }

    fn max_batch_bytes(&self) -> Option<u64> {
        self.inner.max_batch_bytes()
    }
}

/// What a source link is started with.
fn link_start<I>(
    key: &LinkKey,
    ingest: Arc<I>,
    settings: &RunnerSettings,
    metrics: &Arc<LinkMetrics>,
    stop: &CancellationToken,
    lease: Option<crate::lease::Lease>,
) -> LinkStart<I> {
    LinkStart {
        link: key.clone(),
        ingest,
        settings: settings.clone(),
        metrics: Arc::clone(metrics),
        stop: stop.clone(),
        lease,
    }
}

/// Opens a degraded sink link in the background until it connects (its writes answer `retry`
/// meanwhile), fails for good (refused), or is deleted.
async fn keep_opening_sink<K: SinkConnector>(
    sink: Arc<K>,
    key: LinkKey,
    config: K::Config,
    link: Arc<SinkLink<K::Writer>>,
) {
    let opened = tokio::select! {
        () = link.stop.cancelled() => return,
        opened = keep_opening(
            &key,
            Role::Sink,
            || check_and_open(&*sink, &key, &config),
            |error| link.metrics.set_health(LinkHealth::Degraded(error.to_string())),
        ) => opened,
    };
    match opened {
        Ok(writer) => {
            if link.writer.set(writer).is_ok() {
                link.metrics.set_health(LinkHealth::Ok);
                info!(component = %key.component, link = %key.name, "sink link connected");
            }
        }
        Err(error) => {
            let refused = LinkError {
                key,
                role: Role::Sink,
                reason: LinkErrorReason::Open(error),
            };
            error!(error = %refused, "link refused");
            link.metrics.set_health(LinkHealth::Refused(refused.to_string()));
        }
    }
}

/// [`SinkConnector::check`], then [`SinkConnector::open`].
async fn check_and_open<K: SinkConnector>(
    sink: &K,
    key: &LinkKey,
    config: &K::Config,
) -> Result<K::Writer, ConnectorError> {
    sink.check(key, config).await?;
    sink.open(key, config.clone()).await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::sink::SinkWriter;
    use crate::testing::{MemoryIngest, MemorySink, MemorySource, MemoryStream};

    const WITHIN: Duration = Duration::from_secs(10);

    fn link(polled: u64, degraded: Option<&str>, standby_for: Option<&str>) -> LinkStatus {
        LinkStatus {
            role: "source".into(),
            component: "step".into(),
            name: "default".into(),
            metrics: crate::metrics::MetricsSnapshot {
                polled,
                buffer_oldest_age_ms: polled,
                ..Default::default()
            },
            degraded: degraded.map(str::to_string),
            standby_for: standby_for.map(str::to_string),
        }
    }

    #[test]
    fn the_statuses_of_a_providers_instances_merge_into_one_per_link() {
        let status = |links: Vec<LinkStatus>| Status { links, refused: vec![] };
        // The holder reads; the standby's zeros add nothing and its standby is not the link's.
        let merged = Status::merge([
            status(vec![link(0, None, Some("host-a (pid 7)"))]),
            status(vec![link(40, None, None)]),
        ]);
        assert_eq!(merged.links.len(), 1);
        assert_eq!(merged.links[0].metrics.polled, 40);
        assert_eq!(merged.links[0].standby_for, None);
        // Every instance stands by (the holder did not answer): the link stands by.
        let merged = Status::merge([
            status(vec![link(0, None, Some("host-a"))]),
            status(vec![link(0, None, Some("host-a"))]),
        ]);
        assert_eq!(merged.links[0].standby_for.as_deref(), Some("host-a"));
        // Sinks on two instances: counters add up, the oldest age is the older; one healthy
        // instance makes the link healthy.
        let merged = Status::merge([
            status(vec![link(5, Some("no broker"), None)]),
            status(vec![link(7, None, None)]),
        ]);
        assert_eq!(merged.links[0].metrics.polled, 12);
        assert_eq!(merged.links[0].metrics.buffer_oldest_age_ms, 7);
        assert_eq!(merged.links[0].degraded, None);
        let refused = RefusedLink {
            role: "sink".into(),
            component: "step".into(),
            name: "default".into(),
            error: "bucket: no such bucket".into(),
        };
        let merged = Status::merge([
            Status {
                links: vec![],
                refused: vec![refused.clone()],
            },
            Status {
                links: vec![],
                refused: vec![refused.clone()],
            },
        ]);
        assert_eq!(merged.refused, vec![refused]);
    }

    struct Setup {
        engine: Engine<MemorySource, MemorySink>,
        source: MemorySource,
        sink: MemorySink,
        ingest: MemoryIngest,
    }

    impl Setup {
        fn new() -> Self {
            let source = MemorySource::default();
            let sink = MemorySink::default();
            Self {
                engine: Engine::new(source.clone(), sink.clone()),
                source,
                sink,
                ingest: MemoryIngest::default(),
            }
        }

        async fn put_source(&self, key: &LinkKey, config: &[(&str, &str)]) -> Result<(), LinkError> {
            let ingest = self.ingest.clone();
            self.engine
                .put_source_link(LinkSpec::new(key.clone(), map(config)), || async move { Ok(ingest) })
                .await
        }

        async fn put_sink(&self, key: &LinkKey, config: &[(&str, &str)]) -> Result<(), LinkError> {
            self.engine.put_sink_link(LinkSpec::new(key.clone(), map(config))).await
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn records(prefix: &str, n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| Message::new(format!("{prefix}-{i}").into_bytes(), format!("test@{i}")))
            .collect()
    }

    async fn acked(stream: &MemoryStream, n: usize) -> bool {
        stream.wait_for(WITHIN, |s| s.acked_count() == n).await
    }

    /// Waits until `done` holds for the engine's status.
    async fn status_until(engine: &Engine<MemorySource, MemorySink>, done: impl Fn(&Status) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while tokio::time::Instant::now() < deadline {
            if done(&engine.status()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_dead_letter_write_holds_its_batch_while_the_rest_keeps_moving() {
        let s = Setup::new();
        let key = LinkKey::new("step", "default");
        let stream = s.source.stream(&key);
        stream.fail_dead_letters(Some("dead-letter destination down"));
        s.put_source(
            &key,
            &[
                ("max_batch_records", "10"),
                ("max_in_flight", "4"),
                ("linger", "1ms"),
                ("retry_initial", "10ms"),
                ("retry_max", "50ms"),
            ],
        )
        .await
        .unwrap();
        stream.push(records("bad", 1));
        assert!(stream.wait_for(WITHIN, |s| s.dead_letter_calls() >= 3).await, "retried");
        assert!(
            status_until(&s.engine, |st| st
                .degraded("step")
                .is_some_and(|r| r.contains("dead-letter") && r.contains("destination down")))
            .await,
            "the link shows why it is stuck: {:?}",
            s.engine.status()
        );

        // Other batches are still read and delivered while the write is retried; none is
        // acknowledged ahead of the record waiting for its dead-letter write.
        stream.push(records("good", 20));
        let ingest = s.ingest.clone();
        assert!(
            stream.wait_for(WITHIN, |_| ingest.accepted().len() == 20).await,
            "delivered {} of 20 while the dead-letter write fails",
            ingest.accepted().len()
        );
        assert!(
            stream.acked().is_empty(),
            "acked past a record not stored: {:?}",
            stream.acked()
        );
        // The held record keeps the unacknowledged bound (4 x 10) from being passed.
        stream.push(records("more", 60));
        assert!(stream.wait_for(WITHIN, |_| ingest.accepted().len() == 39).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stream.polled(), 40, "read up to the bound and no further");

        stream.fail_dead_letters(None);
        assert!(acked(&stream, 81).await, "acked {:?}", stream.acked());
        assert_eq!(stream.acked(), (0..81).collect::<Vec<u64>>(), "in read order");
        assert_eq!(stream.dead_letters().len(), 1);
        assert!(
            status_until(&s.engine, |st| st.links[0].degraded.is_none()
                && st.links[0].metrics.dead_lettered == 1)
            .await,
            "healthy again once the write succeeds: {:?}",
            s.engine.status()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_dead_letter_topic_refuses_the_link_by_key_and_name() {
        let s = Setup::new();
        let key = LinkKey::new("step-dl", "orders");
        let err = s
            .put_source(&key, &[("dead_letter_topic", "rejects")])
            .await
            .unwrap_err()
            .to_string();
        for needle in ["dead_letter_topic", "rejects", "step-dl", "orders"] {
            assert!(err.contains(needle), "`{needle}` missing from: {err}");
        }
        let status = s.engine.status();
        assert!(status.links.is_empty());
        assert_eq!(status.refusal("step-dl"), Some(err.as_str()));

        s.source.create_topic("rejects");
        s.put_source(&key, &[("dead_letter_topic", "rejects")]).await.unwrap();
        assert!(s.engine.status().refused.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_re_put_leaves_the_running_source_link_running() {
        let s = Setup::new();
        let key = LinkKey::new("step-re", "default");
        let stream = s.source.stream(&key);
        s.put_source(&key, &[("linger", "1ms")]).await.unwrap();
        stream.push(records("a", 5));
        assert!(acked(&stream, 5).await);

        // A bad value and a missing destination are both refused before the old link stops.
        assert!(s.put_source(&key, &[("max_in_flight", "none")]).await.is_err());
        let err = s
            .put_source(&key, &[("linger", "1ms"), ("dead_letter_topic", "nowhere")])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("dead_letter_topic"), "{err}");
        assert_eq!(stream.closed(), 0, "the running link was not stopped");
        let status = s.engine.status();
        assert_eq!(status.links.len(), 1, "{status:?}");
        assert_eq!(status.refusal("step-re"), Some(err.as_str()));
        stream.push(records("b", 5));
        assert!(acked(&stream, 10).await, "the old link still delivers");

        // A good config replaces it.
        s.put_source(&key, &[("linger", "1ms"), ("max_in_flight", "2")])
            .await
            .unwrap();
        assert_eq!(stream.closed(), 1, "the old link stopped");
        assert!(s.engine.status().refused.is_empty());
        stream.push(records("c", 5));
        assert!(acked(&stream, 15).await, "the new link delivers");
        assert_eq!(s.ingest.accepted().len(), 15);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_re_put_leaves_the_running_sink_link_writing() {
        let s = Setup::new();
        let key = LinkKey::new("writer", "default");
        s.put_sink(&key, &[("label", "old")]).await.unwrap();
        let err = s
            .put_sink(&key, &[("label", "new"), ("open_error", "NoSuchBucket")])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("NoSuchBucket"), "{err}");
        s.engine.write("writer", "default", records("w", 2)).await.unwrap();
        let labels: Vec<String> = s.sink.written().into_iter().map(|(label, _)| label).collect();
        assert_eq!(labels, vec!["old".to_string()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_waits_for_a_free_slot_and_is_answered_retry_only_after_slot_wait() {
        let s = Setup::new();
        let key = LinkKey::new("patient", "default");
        s.put_sink(
            &key,
            &[("label", "p"), ("write_delay", "300ms"), ("max_concurrent_writes", "1")],
        )
        .await
        .unwrap();
        // The second write finds the only slot taken: it waits for it instead of being refused.
        let (first, second) = tokio::join!(
            s.engine.write("patient", "default", records("a", 1)),
            s.engine.write("patient", "default", records("b", 1)),
        );
        first.unwrap();
        second.unwrap();
        assert_eq!(s.sink.written().len(), 2);

        let key = LinkKey::new("impatient", "default");
        let config = [
            ("label", "i"),
            ("write_delay", "500ms"),
            ("max_concurrent_writes", "1"),
            ("slot_wait", "50ms"),
        ];
        s.put_sink(&key, &config).await.unwrap();
        let (first, second) = tokio::join!(s.engine.write("impatient", "default", records("a", 1)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.engine.write("impatient", "default", records("b", 1)).await
        });
        first.unwrap();
        match second {
            Err(Failure::Retry(reason)) => {
                assert!(reason.contains("sink busy") && reason.contains("impatient"), "{reason}");
            }
            other => panic!("expected retry after slot_wait, got {other:?}"),
        }
    }

    /// A [`MemorySink`] whose writer holds something of its link's alone, counting the writers
    /// open at once.
    #[derive(Default)]
    struct ExclusiveSink {
        inner: MemorySink,
        open: Arc<std::sync::atomic::AtomicI32>,
        most_open: Arc<std::sync::atomic::AtomicI32>,
    }

    struct ExclusiveWriter {
        inner: crate::testing::MemoryWriter,
        open: Arc<std::sync::atomic::AtomicI32>,
    }

    impl SinkConnector for ExclusiveSink {
        type Config = crate::testing::MemorySinkConfig;
        type Writer = ExclusiveWriter;
        const EXCLUSIVE: bool = true;

        fn parse_config(&self, config: &ConfigReader<'_>) -> Result<Self::Config, crate::ConfigError> {
            self.inner.parse_config(config)
        }

        async fn check(&self, link: &LinkKey, config: &Self::Config) -> Result<(), ConnectorError> {
            self.inner.check(link, config).await
        }

        async fn open(&self, link: &LinkKey, config: Self::Config) -> Result<ExclusiveWriter, ConnectorError> {
            let inner = self.inner.open(link, config).await?;
            let now = self.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            self.most_open.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            Ok(ExclusiveWriter {
                inner,
                open: Arc::clone(&self.open),
            })
        }
    }

    impl SinkWriter for ExclusiveWriter {
        async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
            self.inner.write(batch).await
        }

        async fn close(&self) -> Result<(), ConnectorError> {
            self.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_schema_refuses_unknown_keys_naming_key_and_link_before_parsing() {
        use crate::schema::{Key, KeyType, Schema};
        const KEYS: &[Key] = &[
            Key::new("label", KeyType::String, "label").sink(),
            Key::new("password", KeyType::String, "password").sink().secret(),
            Key::new("ordered", KeyType::Bool, "ordered").source(),
        ];
        let engine = Engine::new(MemorySource::default(), MemorySink::default())
            .with_schema(Schema::new("memory", "test", true, true).keys(KEYS));
        let key = LinkKey::new("writer", "orders");
        let put = |config: &[(&str, &str)]| engine.put_sink_link(LinkSpec::new(key.clone(), map(config)));
        let err = put(&[("label", "a"), ("lable", "typo")]).await.unwrap_err().to_string();
        assert!(
            err.contains("unknown key `lable`") && err.contains("writer") && err.contains("orders"),
            "{err}"
        );
        assert!(engine.status().refused.iter().any(|r| r.error.contains("`lable`")));
        let err = put(&[("label", "a"), ("password", "hunter2")])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`password` is a secret") && !err.contains("hunter2"),
            "{err}"
        );
        // A key of the other role is ignored, not refused.
        put(&[("label", "a"), ("ordered", "true")]).await.unwrap();
        assert!(engine.status().refused.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exclusive_sink_is_checked_then_closed_before_its_new_writer_opens() {
        let sink = ExclusiveSink::default();
        let (written, most_open) = (sink.inner.clone(), Arc::clone(&sink.most_open));
        let engine = Engine::new(MemorySource::default(), sink);
        let key = LinkKey::new("writer", "default");
        let put = |config: &[(&str, &str)]| engine.put_sink_link(LinkSpec::new(key.clone(), map(config)));
        put(&[("label", "old")]).await.unwrap();

        let err = put(&[("label", "new"), ("check_error", "NoSuchBucket")])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("NoSuchBucket"), "{err}");
        engine.write("writer", "default", records("w", 1)).await.unwrap();

        put(&[("label", "new")]).await.unwrap();
        engine.write("writer", "default", records("w", 1)).await.unwrap();
        let labels: Vec<String> = written.written().into_iter().map(|(label, _)| label).collect();
        assert_eq!(labels, ["old", "new"], "the refused config left the old writer writing");
        assert_eq!(
            most_open.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "never two writers of the link at once"
        );
    }

    fn buffered(dir: &std::path::Path, extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
        let mut config = vec![
            ("label", "b".to_string()),
            ("buffer", "disk".to_string()),
            ("buffer_dir", dir.display().to_string()),
        ];
        config.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        config
    }

    async fn put_buffered(
        engine: &Engine<MemorySource, MemorySink>,
        key: &LinkKey,
        config: &[(&'static str, String)],
    ) -> Result<(), LinkError> {
        let config = config.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        engine.put_sink_link(LinkSpec::new(key.clone(), config)).await
    }

    /// The records the sink got, in order, with duplicates (at-least-once) removed.
    fn delivered(sink: &MemorySink) -> Vec<Message> {
        let mut seen = std::collections::HashSet::new();
        sink.written()
            .into_iter()
            .flat_map(|(_, batch)| batch)
            .filter(|m| seen.insert(m.payload.clone()))
            .collect()
    }

    async fn sink_until(sink: &MemorySink, done: impl Fn(&MemorySink) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while tokio::time::Instant::now() < deadline {
            if done(sink) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done(sink)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_buffered_sink_takes_writes_while_down_and_delivers_them_in_order_once_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup::new();
        s.sink.set_down(Some("503 from the sink"));
        let key = LinkKey::new("edge", "default");
        put_buffered(&s.engine, &key, &buffered(dir.path(), &[])).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..30 {
            let batch = records(&format!("b{i}"), 4);
            expected.extend(batch.clone());
            s.engine
                .write("edge", "default", batch)
                .await
                .expect("acknowledged while the sink is down");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(s.sink.written().is_empty());
        let metrics = s.engine.status().links[0].metrics;
        assert_eq!(metrics.buffered_records, 120, "{metrics:?}");
        assert!(metrics.buffered_bytes > 0 && metrics.fsyncs >= 30, "{metrics:?}");
        assert!(metrics.write_failures > 0, "the drainer tried: {metrics:?}");

        s.sink.set_down(None);
        assert!(
            sink_until(&s.sink, |sink| delivered(sink).len() == 120).await,
            "delivered {} of 120",
            delivered(&s.sink).len()
        );
        assert_eq!(delivered(&s.sink), expected, "in write order");
        assert!(
            status_until(&s.engine, |st| st.links[0].metrics.buffered_records == 0
                && st.links[0].metrics.buffer_drained == 120)
            .await,
            "{:?}",
            s.engine.status()
        );
        // Status serializes the buffer counters with the others.
        let json = serde_json::to_string(&s.engine.status()).unwrap();
        for field in [
            "buffered_bytes",
            "buffered_records",
            "buffer_oldest_age_ms",
            "buffer_drained",
            "buffer_dropped",
            "fsyncs",
        ] {
            assert!(json.contains(field), "{field} missing from {json}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_blocking_buffer_answers_retry_and_drop_oldest_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup::new();
        s.sink.set_down(Some("down"));
        let key = LinkKey::new("full", "default");
        let small = [("buffer_max_bytes", "2KiB"), ("slot_wait", "50ms")];
        put_buffered(&s.engine, &key, &buffered(dir.path(), &small))
            .await
            .unwrap();
        let mut answers = Vec::new();
        for i in 0..30 {
            answers.push(s.engine.write("full", "default", records(&format!("f{i}"), 2)).await);
        }
        let accepted = answers.iter().take_while(|a| a.is_ok()).count();
        assert!(accepted > 0 && accepted < 30, "{accepted} accepted");
        match &answers[accepted] {
            Err(Failure::Retry(reason)) => assert!(reason.starts_with("sink buffer full: "), "{reason}"),
            other => panic!("expected retry when full, got {other:?}"),
        }
        assert!(
            answers[accepted..].iter().all(Result::is_err),
            "nothing fits until the sink drains"
        );
        s.sink.set_down(None);
        assert!(sink_until(&s.sink, |sink| delivered(sink).len() == accepted * 2).await);
        s.engine
            .write("full", "default", records("after", 2))
            .await
            .expect("room again");
        assert!(sink_until(&s.sink, |sink| delivered(sink).len() == accepted * 2 + 2).await);

        let key = LinkKey::new("lossy", "default");
        s.sink.set_down(Some("down"));
        let lossy = [("buffer_max_bytes", "2KiB"), ("buffer_full", "drop_oldest")];
        put_buffered(&s.engine, &key, &buffered(dir.path(), &lossy))
            .await
            .unwrap();
        for i in 0..30 {
            s.engine
                .write("lossy", "default", records(&format!("l{i}"), 2))
                .await
                .expect("never refused");
        }
        let status = s.engine.status();
        let metrics = status.links.iter().find(|l| l.component == "lossy").unwrap().metrics;
        assert_eq!(metrics.buffer_dropped + metrics.buffered_records, 60, "{metrics:?}");
        assert!(metrics.buffer_dropped > 0, "{metrics:?}");
        let kept = metrics.buffered_records as usize;
        let before = delivered(&s.sink).len();
        s.sink.set_down(None);
        let newest: Vec<Message> = (30 - kept / 2..30).flat_map(|i| records(&format!("l{i}"), 2)).collect();
        assert!(sink_until(&s.sink, |sink| delivered(sink).ends_with(&newest)).await);
        // The run of oldest batches the drainer was already writing when they were dropped may
        // still arrive, ahead of the newest.
        let got = delivered(&s.sink)[before..].to_vec();
        let oldest: Vec<Message> = (0..30).flat_map(|i| records(&format!("l{i}"), 2)).collect();
        let in_hand = &got[..got.len() - newest.len()];
        assert_eq!(in_hand, &oldest[..in_hand.len()], "the oldest were dropped: {got:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disk_buffer_without_buffer_dir_is_refused_by_key_and_link() {
        let s = Setup::new();
        let key = LinkKey::new("edge-cfg", "orders");
        let err = s
            .put_sink(&key, &[("label", "x"), ("buffer", "disk")])
            .await
            .unwrap_err()
            .to_string();
        for needle in ["buffer_dir", "edge-cfg", "orders"] {
            assert!(err.contains(needle), "`{needle}` missing from: {err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_buffered_link_keeps_what_it_could_not_write_for_the_next_put() {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup::new();
        s.sink.set_down(Some("down"));
        let key = LinkKey::new("edge-del", "default");
        let config = buffered(dir.path(), &[]);
        put_buffered(&s.engine, &key, &config).await.unwrap();
        let expected = records("kept", 5);
        s.engine.write("edge-del", "default", expected.clone()).await.unwrap();
        let started = std::time::Instant::now();
        assert!(s.engine.delete_sink_link(&key).await);
        assert!(started.elapsed() < crate::buffer::FINAL_DRAIN + Duration::from_secs(2));
        assert!(s.sink.written().is_empty());

        s.sink.set_down(None);
        put_buffered(&s.engine, &key, &config).await.unwrap();
        assert!(
            sink_until(&s.sink, |sink| delivered(sink) == expected).await,
            "{:?}",
            s.sink.written()
        );
        // Re-put while running: the old link lets go of the buffer before the new one opens it.
        put_buffered(&s.engine, &key, &config).await.unwrap();
        s.engine.write("edge-del", "default", records("more", 1)).await.unwrap();
        assert!(sink_until(&s.sink, |sink| delivered(sink).len() == 6).await);
    }

    /// A kill -9: the engine's runtime is dropped with the sink down, so its drainers stop
    /// where they are and nothing is drained or closed; a new engine over the same
    /// `buffer_dir` delivers every acknowledged record.
    #[test]
    fn a_killed_engine_loses_no_acknowledged_write() {
        let runtime = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let key = LinkKey::new("edge-kill", "default");
        let config = buffered(dir.path(), &[("buffer_max_bytes", "64KiB")]);
        let sink = MemorySink::default();
        sink.set_down(Some("down"));
        let mut acknowledged = Vec::new();
        {
            let rt = runtime();
            let engine = Engine::new(MemorySource::default(), sink.clone());
            rt.block_on(async {
                put_buffered(&engine, &key, &config).await.unwrap();
                // Some batches reach the sink, then it goes down and the rest wait in the buffer.
                sink.set_down(None);
                for i in 0..40 {
                    if i == 10 {
                        sink.set_down(Some("down"));
                    }
                    let batch = records(&format!("k{i}"), 3);
                    if engine.write("edge-kill", "default", batch.clone()).await.is_ok() {
                        acknowledged.extend(batch);
                    }
                }
            });
            drop(rt);
        }
        assert!(acknowledged.len() >= 60, "{} acknowledged", acknowledged.len());
        // A torn write at the moment of the kill.
        let last = std::fs::read_dir(key.dir_in(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .max()
            .unwrap();
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .open(last)
            .unwrap()
            .write_all(&[9, 0, 0, 0, 1])
            .unwrap();

        sink.set_down(None);
        let rt = runtime();
        let engine = Engine::new(MemorySource::default(), sink.clone());
        rt.block_on(async {
            put_buffered(&engine, &key, &config).await.unwrap();
            assert!(
                sink_until(&sink, |sink| delivered(sink).len() == acknowledged.len()).await,
                "{} of {} delivered",
                delivered(&sink).len(),
                acknowledged.len()
            );
            assert_eq!(delivered(&sink), acknowledged, "every acknowledged record, in order");
            engine.shutdown().await;
        });
    }

    /// The records `ingest` accepted, with duplicates (at-least-once) removed.
    fn accepted_once(ingest: &MemoryIngest) -> Vec<Message> {
        let mut seen = std::collections::HashSet::new();
        ingest
            .accepted()
            .into_iter()
            .filter(|m| seen.insert(m.payload.clone()))
            .collect()
    }

    async fn ingest_until(ingest: &MemoryIngest, done: impl Fn(&[Message]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while tokio::time::Instant::now() < deadline {
            if done(&accepted_once(ingest)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done(&accepted_once(ingest))
    }

    fn buffered_source(dir: &std::path::Path, extra: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
        let mut config = vec![
            ("buffer".to_string(), "disk".to_string()),
            ("buffer_dir".to_string(), dir.display().to_string()),
            ("linger".to_string(), "1ms".to_string()),
        ];
        config.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        config
    }

    async fn put_buffered_source(
        engine: &Engine<MemorySource, MemorySink>,
        ingest: &MemoryIngest,
        key: &LinkKey,
        config: &[(String, String)],
    ) -> Result<(), LinkError> {
        let ingest = ingest.clone();
        engine
            .put_source_link(
                LinkSpec::new(key.clone(), config.iter().cloned().collect()),
                || async move { Ok(ingest) },
            )
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_buffered_source_acknowledges_once_buffered_and_delivers_once_the_step_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup::new();
        let key = LinkKey::new("edge-src", "default");
        let stream = s.source.stream(&key);
        s.ingest.set_down(Some("the sink behind the step is down"));
        put_buffered_source(&s.engine, &s.ingest, &key, &buffered_source(dir.path(), &[]))
            .await
            .unwrap();
        let pushed = records("r", 500);
        stream.push(pushed.clone());
        assert!(
            acked(&stream, 500).await,
            "acked {} of 500 with the step down",
            stream.acked_count()
        );
        assert!(s.ingest.accepted().is_empty());
        assert!(
            status_until(&s.engine, |st| st.links[0].metrics.buffered_records == 500
                && st.links[0].metrics.retried > 0)
            .await,
            "all buffered, and the drainer tried the step: {:?}",
            s.engine.status()
        );
        assert!(
            key.dir_in(dir.path()).join("source").join("lock").exists(),
            "the source side's own directory"
        );

        s.ingest.set_down(None);
        assert!(
            ingest_until(&s.ingest, |got| got.len() == 500).await,
            "{} of 500 delivered",
            accepted_once(&s.ingest).len()
        );
        assert_eq!(accepted_once(&s.ingest), pushed, "in read order");
        assert!(
            status_until(&s.engine, |st| st.links[0].metrics.buffered_records == 0
                && st.links[0].metrics.buffer_drained == 500
                && st.links[0].metrics.delivered == 500)
            .await,
            "{:?}",
            s.engine.status()
        );
        // A record the step rejects was already acknowledged: counted, not dead-lettered.
        stream.push(records("bad", 1));
        assert!(status_until(&s.engine, |st| st.links[0].metrics.buffer_rejected == 1).await);
        assert!(stream.dead_letters().is_empty());
        // The link's delete closes the buffer, so that it can be put again.
        assert!(s.engine.delete_source_link(&key).await);
        put_buffered_source(&s.engine, &s.ingest, &key, &buffered_source(dir.path(), &[]))
            .await
            .unwrap();
        stream.push(records("again", 3));
        assert!(ingest_until(&s.ingest, |got| got.len() == 503).await);
        s.engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_buffer_key_at_fault_refuses_the_link_by_name() {
        let s = Setup::new();
        let key = LinkKey::new("edge-src-cfg", "polls");
        let err = s.put_source(&key, &[("buffer", "disk")]).await.unwrap_err().to_string();
        for needle in ["buffer_dir", "edge-src-cfg", "polls"] {
            assert!(err.contains(needle), "`{needle}` missing from: {err}");
        }
        let err = s
            .put_source(
                &key,
                &[("buffer", "disk"), ("buffer_dir", "/x"), ("buffer_full", "spill")],
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("buffer_full"), "{err}");
    }

    /// A kill -9 with the source buffer full: the step is down, the source (one that cannot
    /// replay: what the runner read is gone from it) pushed more than the buffer holds, so the
    /// link stopped acknowledging; the runtime is dropped with nothing closed. A new engine over
    /// the same `buffer_dir` delivers every record that was acknowledged to the source.
    #[test]
    fn a_killed_engine_with_a_full_source_buffer_loses_no_acknowledged_record() {
        let runtime = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let key = LinkKey::new("edge-src-kill", "default");
        let config = buffered_source(
            dir.path(),
            &[
                ("buffer_max_bytes", "512KiB"),
                ("max_batch_records", "100"),
                ("deliver_timeout", "500ms"),
                ("retry_max", "200ms"),
            ],
        );
        let source = MemorySource::default();
        let stream = source.stream(&key);
        let ingest = MemoryIngest::default();
        ingest.set_down(Some("down"));
        let pushed = records("k", 20_000);
        {
            let rt = runtime();
            let engine = Engine::new(source.clone(), MemorySink::default());
            rt.block_on(async {
                put_buffered_source(&engine, &ingest, &key, &config).await.unwrap();
                stream.push(pushed.clone());
                // Full: acknowledgements stop short of what was pushed.
                let mut last = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let now = stream.acked_count();
                    if now == last && now > 0 {
                        break;
                    }
                    last = now;
                }
                let metrics = engine.status().links[0].metrics;
                // Every acknowledged record is in the buffer; a batch still waiting for room
                // holds back the acknowledgement of those buffered after it (read order).
                assert!(
                    metrics.buffered_records as usize >= stream.acked_count(),
                    "acknowledged {} with {metrics:?}",
                    stream.acked_count()
                );
                assert!(metrics.busy > 0, "the full buffer pushed back: {metrics:?}");
            });
            drop(rt);
        }
        let acknowledged: Vec<Message> = stream.acked().iter().map(|&o| pushed[o as usize].clone()).collect();
        assert!(
            acknowledged.len() >= 10_000 && acknowledged.len() < 20_000,
            "{} acknowledged",
            acknowledged.len()
        );

        ingest.set_down(None);
        let rt = runtime();
        let engine = Engine::new(source.clone(), MemorySink::default());
        rt.block_on(async {
            put_buffered_source(&engine, &ingest, &key, &config).await.unwrap();
            assert!(
                ingest_until(&ingest, |got| got.len() >= acknowledged.len()).await,
                "{} of {} delivered",
                accepted_once(&ingest).len(),
                acknowledged.len()
            );
            let got: std::collections::HashSet<Vec<u8>> =
                accepted_once(&ingest).into_iter().map(|m| m.payload.to_vec()).collect();
            let lost = acknowledged
                .iter()
                .filter(|m| !got.contains(&m.payload.to_vec()))
                .count();
            assert_eq!(lost, 0, "acknowledged records lost of {}", acknowledged.len());
            engine.shutdown().await;
        });
    }
}
