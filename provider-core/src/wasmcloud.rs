//! The wasmCloud 1.x face of a provider: host data, links over the lattice control subjects,
//! `sink.write` over wRPC, health, shutdown. A provider's `main.rs` is one call to [`run`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use tracing::{info, warn};
use wasmcloud_provider_sdk::core::secrets::SecretValue;
use wasmcloud_provider_sdk::provider::invocation_context;
use wasmcloud_provider_sdk::{
    get_connection, run_provider, HealthCheckRequest, HealthCheckResponse, LinkConfig, LinkDeleteInfo, Provider,
};

use crate::config::{ConfigReader, ProviderConfig, Secret};
use crate::engine::Engine;
use crate::link::{LinkKey, LinkSpec};
use crate::schema::Schema;
use crate::sink::SinkConnector;
use crate::source::SourceSide;
use crate::wire::{decode_batch, WireMessage};
use crate::wrpc::{nats, WrpcIngest};
use crate::Failure;

/// The NATS subject on which a running provider answers with its [`crate::Status`] as JSON:
/// live links with counters, refused links with their errors.
#[must_use]
pub fn status_subject(lattice: &str, provider_key: &str) -> String {
    format!("sluice.{lattice}.{provider_key}.status")
}

/// The NATS subject on which a running provider takes tap requests
/// ([`TapRequest`](crate::tap::TapRequest) as JSON, with a reply inbox) and sends
/// [`TapEvent`](crate::tap::TapEvent)s to that inbox. It lies under the lattice's `sluice.{lattice}.`
/// prefix, so on a lattice whose NATS accounts carry permissions only users allowed to publish it
/// (operators) can tap.
#[must_use]
pub fn tap_subject(lattice: &str, provider_key: &str) -> String {
    format!("sluice.{lattice}.{provider_key}.tap")
}

/// Runs a provider made of `source` and `sink` (either may be [`crate::Unsupported`]) until the
/// host shuts it down or it receives SIGTERM/SIGINT, then drains every link. Links are checked
/// against `schema` ([`Engine::with_schema`]); started with `--schema`, the provider prints it as
/// JSON Schema and exits.
pub async fn run<S: SourceSide, K: SinkConnector>(
    name: &'static str,
    schema: Schema,
    source: S,
    sink: K,
) -> anyhow::Result<()> {
    run_with_config(name, schema, |_| Ok((source, sink))).await
}

/// Like [`run`], for a provider whose connectors are built from the provider's own config
/// ([`ProviderConfig`]: HostData `config` and `secrets`), e.g. the address it listens on. `build`
/// runs once, inside the runtime, before any link arrives; its error (name the key) stops the
/// provider, and the host reports it. Keys `build` did not read are warned about (`OTEL_*` keys
/// belong to the SDK).
pub async fn run_with_config<S, K, F>(name: &'static str, schema: Schema, build: F) -> anyhow::Result<()>
where
    S: SourceSide,
    K: SinkConnector,
    F: FnOnce(&ConfigReader<'_>) -> anyhow::Result<(S, K)>,
{
    if schema.print_if_asked() {
        return Ok(());
    }
    return_large_buffers_to_the_os();
    // Watch the host from the first instant: a provider whose host dies while it is still
    // connecting must end too, not only one that got as far as serving.
    let watchdog = Watchdog::start();
    wasmcloud_provider_sdk::initialize_observability!(name, None::<std::ffi::OsString>);
    let host_data = wasmcloud_provider_sdk::load_host_data().context("failed to load host data")?;
    let config = ProviderConfig {
        values: host_data.config.clone(),
        secrets: secrets(&host_data.secrets),
    };
    let reader = config.reader();
    let (source, sink) = build(&reader).context("provider config refused")?;
    let unread: Vec<String> = reader
        .unread_keys()
        .into_iter()
        .filter(|k| !k.to_ascii_uppercase().starts_with("OTEL_"))
        .collect();
    if !unread.is_empty() {
        warn!(keys = ?unread, "ignoring unknown provider config keys");
    }
    let provider = WasmcloudProvider {
        engine: Arc::new(Engine::new(source, sink).with_schema(schema)),
        wrpc: Arc::default(),
    };
    // The SDK installed the global meter provider above when the host's `otel` settings enable
    // metrics; otherwise these instruments are never read.
    let _instruments = {
        let engine = Arc::downgrade(&provider.engine);
        crate::otel_metrics::register(
            &opentelemetry::global::meter(crate::otel_metrics::SCOPE),
            Arc::new(move || engine.upgrade().map(|e| e.status()).unwrap_or_default()),
        )
    };
    // Boxed: inlined, its state would deepen every provider's main future past the compiler's
    // layout recursion limit.
    let started = Box::pin(async {
        let host_shutdown = run_provider(provider.clone(), name)
            .await
            .context("failed to start the provider")?;
        let connection = get_connection();
        let wrpc = provider.wrpc().await.context("failed to create the wRPC client")?;
        let status = connection
            .nats
            .subscribe(status_subject(&connection.lattice, connection.provider_key()))
            .await
            .context("failed to subscribe to the status subject")?;
        let taps = connection
            .nats
            .subscribe(tap_subject(&connection.lattice, connection.provider_key()))
            .await
            .context("failed to subscribe to the tap subject")?;
        anyhow::Ok((host_shutdown, connection, wrpc, (status, taps)))
    });
    let (host_shutdown, connection, wrpc, (mut status, taps)) = tokio::select! {
        started = started => started?,
        () = watchdog.parent_gone() => anyhow::bail!("the host process exited while the provider was starting"),
    };
    let status_task = tokio::spawn({
        let engine = Arc::clone(&provider.engine);
        let nats = Arc::clone(&connection.nats);
        async move {
            while let Some(msg) = status.next().await {
                if let Some(reply) = msg.reply {
                    let body = serde_json::to_vec(&engine.status()).unwrap_or_default();
                    if let Err(err) = nats.publish(reply, body.into()).await {
                        warn!(%err, "failed to answer a status request");
                    }
                }
            }
        }
    });

    let tap_task = tokio::spawn(serve_taps(
        Arc::clone(&provider.engine),
        Arc::clone(&connection.nats),
        taps,
    ));

    let stop = {
        let provider = provider.clone();
        async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
            tokio::select! {
                () = host_shutdown => {}
                _ = term.recv() => info!("SIGTERM: draining links"),
                _ = tokio::signal::ctrl_c() => info!("SIGINT: draining links"),
                () = watchdog.parent_gone() => warn!("the host process is gone: draining links"),
            }
            // A drain that cannot finish (the lattice is gone, a system hangs), or anything after
            // it (the runtime waiting for a stuck blocking task), must not keep the process
            // alive: the watchdog ends it once the longest drain is over, whatever is left.
            watchdog.stop_within(provider.engine.longest_drain() + CLOSE_LIMIT);
            provider.engine.shutdown().await;
        }
    };
    // Boxed for the same reason as `started`.
    serve(&wrpc, provider.clone(), Box::pin(stop))
        .await
        .context("failed to serve sink.write")?;
    status_task.abort();
    tap_task.abort();
    // With the lattice gone a flush would wait for a reconnection that never comes.
    match tokio::time::timeout(Duration::from_secs(2), connection.nats.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(%err, "failed to flush the lattice connection"),
        Err(_) => warn!("the lattice connection did not flush in time"),
    }
    Ok(())
}

/// Answers tap requests: each opens a tap on the engine and streams its records to the request's
/// reply inbox until it ends (after `n` records or its timeout; taps are bounded by the engine).
async fn serve_taps<S: SourceSide, K: SinkConnector>(
    engine: Arc<Engine<S, K>>,
    nats: Arc<async_nats::Client>,
    mut requests: async_nats::Subscriber,
) {
    use crate::tap::{TapEvent, TapRequest};
    let send = |nats: Arc<async_nats::Client>, inbox: async_nats::Subject, event: TapEvent| async move {
        let body = serde_json::to_vec(&event).unwrap_or_default();
        nats.publish(inbox, body.into()).await
    };
    while let Some(msg) = requests.next().await {
        let Some(inbox) = msg.reply else { continue };
        let opened = serde_json::from_slice::<TapRequest>(&msg.payload)
            .map_err(|e| crate::tap::TapError::BadRequest(e.to_string()))
            .and_then(|request| engine.tap(&request).map(|stream| (request, stream)));
        let (request, mut stream) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                warn!(%error, "tap refused");
                if let Err(err) = send(
                    Arc::clone(&nats),
                    inbox,
                    TapEvent::Refused {
                        error: error.to_string(),
                    },
                )
                .await
                {
                    warn!(%err, "failed to answer a tap request");
                }
                continue;
            }
        };
        info!(at = %request.at, links = ?stream.links(), n = request.n, "tap opened");
        let nats = Arc::clone(&nats);
        tokio::spawn(async move {
            let links = stream.links().to_vec();
            if send(Arc::clone(&nats), inbox.clone(), TapEvent::Started { links })
                .await
                .is_err()
            {
                return;
            }
            while let Some(record) = stream.next().await {
                if send(Arc::clone(&nats), inbox.clone(), TapEvent::Record(record))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let ended = TapEvent::Ended {
                records: stream.received(),
                reason: stream.end_reason(),
            };
            info!(records = stream.received(), reason = %stream.end_reason(), "tap ended");
            let _ = send(nats, inbox, ended).await;
        });
    }
}

/// How long closing the connectors may take once the links have drained: a provider told to stop
/// exits within its longest `drain_timeout` plus this.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// How long a provider whose host is gone may take to stop before it has heard of its links'
/// drain timeouts: the default `drain_timeout` plus [`CLOSE_LIMIT`].
const ORPHAN_LIMIT: Duration = Duration::from_secs(40);

/// Ends the process when stopping takes too long, and notices when the host that started it is
/// gone (the process was handed to another parent). It runs on a thread of its own from the
/// provider's first instant, so neither a stuck runtime nor a host lost during start-up keeps a
/// provider alive: a provider outlives neither its host nor whatever started it.
struct Watchdog {
    gone: tokio::sync::watch::Receiver<bool>,
    deadline: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Watchdog {
    fn start() -> Self {
        let (tell, gone) = tokio::sync::watch::channel(false);
        let deadline = Arc::new(std::sync::Mutex::new(None::<Instant>));
        let parent = std::os::unix::process::parent_id();
        let thread_deadline = Arc::clone(&deadline);
        std::thread::Builder::new()
            .name("sluice-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                let mut deadline = thread_deadline.lock().unwrap_or_else(|e| e.into_inner());
                if std::os::unix::process::parent_id() != parent && !*tell.borrow() {
                    tell.send_replace(true);
                    deadline.get_or_insert(Instant::now() + ORPHAN_LIMIT);
                }
                if deadline.is_some_and(|at| Instant::now() >= at) {
                    tracing::error!("the provider did not stop in time; exiting");
                    std::process::exit(1);
                }
            })
            .expect("the watchdog thread starts");
        Self { gone, deadline }
    }

    /// Resolves once the host process that started this provider has exited.
    async fn parent_gone(&self) {
        let mut gone = self.gone.clone();
        // The sender lives as long as the process: an error cannot happen.
        let _ = gone.wait_for(|gone| *gone).await;
    }

    /// Stopping has begun: end the process if it is still running after `limit`.
    fn stop_within(&self, limit: Duration) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + limit);
    }
}

/// Serves the provider's exports on `wrpc` until `stop` completes, each invocation in its own task.
async fn serve<S: SourceSide, K: SinkConnector>(
    wrpc: &nats::Client,
    provider: WasmcloudProvider<S, K>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let invocations = crate::bindings::serve(wrpc, provider).await?;
    let mut invocations = futures::stream::select_all(
        invocations
            .into_iter()
            .map(|(instance, name, stream)| stream.map(move |res| (instance, name, res))),
    );
    let mut stop = std::pin::pin!(stop);
    let mut calls = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some((instance, name, invocation)) = invocations.next() => match invocation {
                Ok(call) => {
                    calls.spawn(async move {
                        if let Err(err) = call.await {
                            warn!(?err, instance, name, "failed to serve an invocation");
                        }
                    });
                }
                Err(err) => warn!(?err, instance, name, "failed to accept an invocation"),
            },
            Some(_) = calls.join_next() => {}
            () = &mut stop => return Ok(()),
        }
    }
}

/// Makes glibc's allocator map every buffer of 256 KiB or more on its own and unmap it when freed.
///
/// By default glibc raises that threshold each time such a buffer is freed, after which batch-
/// and part-sized buffers come from the heap, fragment it and keep the process's RSS at its
/// high-water mark (seen with the S3 sink: 70 MiB for a working set that fits in 64). With a
/// fixed threshold RSS follows what the bounded engine actually holds.
fn return_large_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the provider allocates
    // batch-sized buffers, from one thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Adapts an [`Engine`] to the wasmCloud provider SDK.
pub struct WasmcloudProvider<S: SourceSide, K: SinkConnector> {
    engine: Arc<Engine<S, K>>,
    /// The provider's wRPC client on the lattice connection, made on first use.
    wrpc: Arc<tokio::sync::OnceCell<nats::Client>>,
}

impl<S: SourceSide, K: SinkConnector> Clone for WasmcloudProvider<S, K> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
            wrpc: Arc::clone(&self.wrpc),
        }
    }
}

impl<S: SourceSide, K: SinkConnector> WasmcloudProvider<S, K> {
    /// The wRPC client serving `{lattice}.{provider}` (in the provider's queue group), whose
    /// inbox every call to a component shares.
    async fn wrpc(&self) -> anyhow::Result<nats::Client> {
        self.wrpc
            .get_or_try_init(|| async {
                let connection = get_connection();
                let prefix: Arc<str> = format!("{}.{}", connection.lattice, connection.provider_key()).into();
                nats::Client::new((*connection.nats).clone(), Arc::clone(&prefix), Some(prefix)).await
            })
            .await
            .cloned()
    }
}

fn secrets(secrets: &HashMap<String, SecretValue>) -> HashMap<String, Secret> {
    secrets
        .iter()
        .map(|(k, v)| {
            let value = match v {
                SecretValue::String(s) => Secret::new(s.as_bytes()),
                SecretValue::Bytes(b) => Secret::new(b.clone()),
            };
            (k.clone(), value)
        })
        .collect()
}

fn link_spec(
    component: &str,
    name: &str,
    config: &HashMap<String, String>,
    secrets_map: &HashMap<String, SecretValue>,
) -> LinkSpec {
    LinkSpec {
        key: LinkKey::new(component, name),
        config: config.clone(),
        secrets: secrets(secrets_map),
    }
}

impl<S: SourceSide, K: SinkConnector> Provider for WasmcloudProvider<S, K> {
    async fn receive_link_config_as_source(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        let spec = link_spec(link.target_id, link.link_name, link.config, link.secrets);
        let target = link.target_id.to_string();
        // Several instances of this provider get every link: single-reader links take a lease
        // in the lattice's KV, held under the host's id (one instance of a provider per host).
        self.engine.use_leases(|| {
            let connection = get_connection();
            crate::lease::Leases::new(
                async_nats::jetstream::new((*connection.nats).clone()),
                crate::lease::bucket_for_lattice(&connection.lattice),
                connection.host_id.clone(),
                connection.provider_key(),
            )
        });
        self.engine
            .put_source_link(spec, || async move {
                // Calls carry the caller and the callee, as the SDK's own client sends them.
                let client = self
                    .wrpc()
                    .await?
                    .with_prefix(format!("{}.{target}", get_connection().lattice))
                    .with_header("source-id", get_connection().provider_key())
                    .with_header("target-id", &target);
                let max_batch_bytes = client.max_call_bytes();
                Ok(WrpcIngest::new(client).with_max_batch_bytes(max_batch_bytes))
            })
            .await?;
        Ok(())
    }

    async fn receive_link_config_as_target(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        let spec = link_spec(link.source_id, link.link_name, link.config, link.secrets);
        self.engine.put_sink_link(spec).await?;
        Ok(())
    }

    async fn delete_link_as_source(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = LinkKey::new(info.get_target_id(), info.get_link_name());
        self.engine.delete_source_link(&key).await;
        Ok(())
    }

    async fn delete_link_as_target(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = LinkKey::new(info.get_source_id(), info.get_link_name());
        self.engine.delete_sink_link(&key).await;
        Ok(())
    }

    async fn health_request(&self, _: &HealthCheckRequest) -> anyhow::Result<HealthCheckResponse> {
        // Refused and degraded links do not make the provider unhealthy (its other links keep
        // running), but the host's health check carries them so an operator sees them.
        let status = self.engine.status();
        let problems: Vec<String> = status
            .refused
            .iter()
            .map(|r| r.error.clone())
            .chain(status.links.iter().filter_map(|l| {
                l.degraded.as_ref().map(|reason| {
                    format!(
                        "degraded {} link `{}` of component `{}`: {reason}",
                        l.role, l.name, l.component
                    )
                })
            }))
            .collect();
        let message = (!problems.is_empty()).then(|| problems.join("; "));
        Ok(HealthCheckResponse { healthy: true, message })
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.engine.shutdown().await;
        Ok(())
    }
}

impl<S: SourceSide, K: SinkConnector>
    crate::bindings::exports::sluice::pipeline::sink::Handler<Option<async_nats::HeaderMap>>
    for WasmcloudProvider<S, K>
{
    async fn write(
        &self,
        headers: Option<async_nats::HeaderMap>,
        batch: Vec<WireMessage>,
    ) -> anyhow::Result<Result<(), Failure>> {
        // The SDK's reading of the headers: the caller (`source-id`), the link name, trace context.
        let cx = headers.as_ref().map(invocation_context);
        let Some(component) = cx
            .as_ref()
            .and_then(|cx| cx.component.as_deref())
            .filter(|c| *c != "<unknown>")
        else {
            return Ok(Err(Failure::Retry(
                "sink.write without a source-id: caller unknown".into(),
            )));
        };
        let link_name = cx.as_ref().map_or("default", |cx| cx.link_name());
        // A record whose payload is not in the wire form is rejected by index; the rest is written.
        let (messages, refusals) = decode_batch(batch);
        // The write continues the trace of the step's invocation (the host sends its context).
        let span = tracing::info_span!("sink.write", component, link = link_name);
        if let Some(headers) = &headers {
            crate::trace::continue_from(&span, headers);
        }
        let outcome = if messages.is_empty() && !refusals.is_empty() {
            Ok(())
        } else {
            tracing::Instrument::instrument(self.engine.write(component, link_name, messages), span).await
        };
        Ok(refusals.answer(outcome))
    }
}
