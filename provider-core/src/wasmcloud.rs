//! The wasmCloud 1.x face of a provider: host data, links over the lattice control subjects,
//! `sink.write` over wRPC, health, shutdown. A provider's `main.rs` is one call to [`run`].

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt as _;
use tracing::{info, warn};
use wasmcloud_provider_sdk::core::secrets::SecretValue;
use wasmcloud_provider_sdk::{
    get_connection, run_provider, serve_provider_exports, Context, HealthCheckRequest, HealthCheckResponse, LinkConfig,
    LinkDeleteInfo, Provider,
};

use crate::config::{ConfigReader, ProviderConfig, Secret};
use crate::engine::Engine;
use crate::link::{LinkKey, LinkSpec};
use crate::sink::SinkConnector;
use crate::source::SourceSide;
use crate::wrpc::WrpcIngest;
use crate::{Failure, Message};

/// The NATS subject on which a running provider answers with its [`crate::Status`] as JSON:
/// live links with counters, refused links with their errors.
#[must_use]
pub fn status_subject(lattice: &str, provider_key: &str) -> String {
    format!("sluice.{lattice}.{provider_key}.status")
}

/// Runs a provider made of `source` and `sink` (either may be [`crate::Unsupported`]) until the
/// host shuts it down or it receives SIGTERM/SIGINT, then drains every link.
pub async fn run<S: SourceSide, K: SinkConnector>(name: &'static str, source: S, sink: K) -> anyhow::Result<()> {
    run_with_config(name, |_| Ok((source, sink))).await
}

/// Like [`run`], for a provider whose connectors are built from the provider's own config
/// ([`ProviderConfig`]: HostData `config` and `secrets`), e.g. the address it listens on. `build`
/// runs once, inside the runtime, before any link arrives; its error (name the key) stops the
/// provider, and the host reports it. Keys `build` did not read are warned about (`OTEL_*` keys
/// belong to the SDK).
pub async fn run_with_config<S, K, F>(name: &'static str, build: F) -> anyhow::Result<()>
where
    S: SourceSide,
    K: SinkConnector,
    F: FnOnce(&ConfigReader<'_>) -> anyhow::Result<(S, K)>,
{
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
        engine: Arc::new(Engine::new(source, sink)),
    };
    let host_shutdown = run_provider(provider.clone(), name)
        .await
        .context("failed to start the provider")?;
    let connection = get_connection();
    let wrpc = connection
        .get_wrpc_client(connection.provider_key())
        .await
        .context("failed to create the wRPC client")?;

    let mut status = connection
        .nats
        .subscribe(status_subject(&connection.lattice, connection.provider_key()))
        .await
        .context("failed to subscribe to the status subject")?;
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

    let stop = {
        let provider = provider.clone();
        async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
            tokio::select! {
                () = host_shutdown => {}
                _ = term.recv() => info!("SIGTERM: draining links"),
                _ = tokio::signal::ctrl_c() => info!("SIGINT: draining links"),
            }
            provider.engine.shutdown().await;
        }
    };
    serve_provider_exports(&wrpc, provider.clone(), stop, crate::bindings::serve)
        .await
        .context("failed to serve sink.write")?;
    status_task.abort();
    if let Err(err) = connection.nats.flush().await {
        warn!(%err, "failed to flush the lattice connection");
    }
    Ok(())
}

/// Adapts an [`Engine`] to the wasmCloud provider SDK.
pub struct WasmcloudProvider<S: SourceSide, K: SinkConnector> {
    engine: Arc<Engine<S, K>>,
}

impl<S: SourceSide, K: SinkConnector> Clone for WasmcloudProvider<S, K> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
        }
    }
}

/// A wRPC client calling `target` with `deadline`.
async fn ingest_client(
    target: &str,
    deadline: std::time::Duration,
) -> anyhow::Result<wasmcloud_provider_sdk::provider::WrpcClient> {
    get_connection().get_wrpc_client_custom(target, Some(deadline)).await
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
        self.engine
            .put_source_link(spec, |settings| {
                let (deadline, clients) = (settings.deliver_timeout, settings.max_in_flight);
                async move {
                    // Up to one client per in-flight batch, made when needed (see `WrpcIngest`).
                    let first = ingest_client(&target, deadline).await?;
                    Ok(WrpcIngest::growing(first, clients, move || {
                        let target = target.clone();
                        Box::pin(async move { ingest_client(&target, deadline).await })
                    }))
                }
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
        // Refused links do not make the provider unhealthy (its other links keep running), but
        // the host's health check carries them so an operator sees them.
        let refused = self.engine.status().refused;
        let message =
            (!refused.is_empty()).then(|| refused.iter().map(|r| r.error.as_str()).collect::<Vec<_>>().join("; "));
        Ok(HealthCheckResponse { healthy: true, message })
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.engine.shutdown().await;
        Ok(())
    }
}

impl<S: SourceSide, K: SinkConnector> crate::bindings::exports::sluice::pipeline::sink::Handler<Option<Context>>
    for WasmcloudProvider<S, K>
{
    async fn write(&self, cx: Option<Context>, batch: Vec<Message>) -> anyhow::Result<Result<(), Failure>> {
        let Some(component) = cx.as_ref().and_then(|cx| cx.component.as_deref()) else {
            return Ok(Err(Failure::Retry(
                "sink.write without a source-id: caller unknown".into(),
            )));
        };
        let link_name = cx.as_ref().map_or("default", Context::link_name);
        Ok(self.engine.write(component, link_name, batch).await)
    }
}
