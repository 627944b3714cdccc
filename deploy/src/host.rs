//! An embedded wasmCloud 1.x host: the `wasmcloud-host` library of `release-1.9.x` (0.27.1) run in
//! this process, on one lattice, loading providers and components from `file://` references.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nkeys::KeyPair;
use wasmcloud_host::url::Url;
use wasmcloud_host::{WasmbusHost, WasmbusHostConfig};

/// The subject prefix on which hosts ask the secrets backend for secrets.
pub const SECRETS_TOPIC_PREFIX: &str = "wasmcloud.secrets";

/// The embedded host's deadline for one component invocation (`--max-execution-time-ms`).
pub const MAX_EXECUTION_TIME: Duration = Duration::from_secs(60);

/// How long the embedded host waits for a provider to shut down before it kills it
/// (`WASMCLOUD_PROV_SHUTDOWN_DELAY_MS`): long enough for every link to drain.
pub const PROVIDER_SHUTDOWN_DELAY: Duration = Duration::from_secs(30);

/// What a stock `wasmcloud` / `wash up` host gives a provider to shut down before it kills it.
pub const STOCK_PROVIDER_SHUTDOWN_DELAY: Duration = Duration::from_millis(300);

/// How an embedded host differs from the defaults.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// How long a provider may take to shut down before it is killed
    /// ([`PROVIDER_SHUTDOWN_DELAY`]; [`STOCK_PROVIDER_SHUTDOWN_DELAY`] to behave as a stock host).
    pub provider_shutdown_delay: Duration,
    /// OpenTelemetry settings the host hands to its providers (none exported by default). The
    /// host's own spans are exported by whatever `tracing` subscriber this process installed.
    pub otel: wasmcloud_core::OtelConfig,
    /// The level providers log at (warnings by default). It bounds their exported spans too:
    /// the provider SDK filters spans and log lines alike, and Sluice's spans are at `info`.
    pub provider_log_level: wasmcloud_core::logging::Level,
    /// Labels the host advertises (besides `hostcore.*`): what a spreadscaler's `spread`
    /// requirements match, e.g. `zone=a`.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            provider_shutdown_delay: PROVIDER_SHUTDOWN_DELAY,
            otel: wasmcloud_core::OtelConfig::default(),
            provider_log_level: wasmcloud_core::logging::Level::Warn,
            labels: std::collections::BTreeMap::new(),
        }
    }
}

type Shutdown = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A running host. Stop it with [`EmbeddedHost::stop`], which stops its providers and components.
pub struct EmbeddedHost {
    host: Arc<WasmbusHost>,
    shutdown: Option<Shutdown>,
    id: String,
    lattice: String,
}

impl std::fmt::Debug for EmbeddedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedHost")
            .field("id", &self.id)
            .field("lattice", &self.lattice)
            .finish_non_exhaustive()
    }
}

impl EmbeddedHost {
    /// Starts a host on `lattice` through the NATS server at `nats_url`, allowing `file://`
    /// providers and components, asking the secrets backend under [`SECRETS_TOPIC_PREFIX`].
    /// Providers get [`PROVIDER_SHUTDOWN_DELAY`] to shut down.
    pub async fn start(nats_url: &str, lattice: &str) -> anyhow::Result<Self> {
        Self::start_with(nats_url, lattice, &HostOptions::default()).await
    }

    /// Like [`EmbeddedHost::start`], with `options`.
    pub async fn start_with(nats_url: &str, lattice: &str, options: &HostOptions) -> anyhow::Result<Self> {
        let url = Url::parse(nats_url).with_context(|| format!("invalid NATS URL `{nats_url}`"))?;
        let key = Arc::new(KeyPair::new_server());
        let id = key.public_key();
        let config = WasmbusHostConfig {
            ctl_nats_url: url.clone(),
            rpc_nats_url: url,
            lattice: lattice.into(),
            host_key: Some(key),
            allow_file_load: true,
            secrets_topic_prefix: Some(SECRETS_TOPIC_PREFIX.into()),
            rpc_timeout: Duration::from_secs(10),
            // An invocation that never ends holds one of the step's instances until this
            // deadline (a stock host's is 10 minutes): a minute is far beyond any batch's work.
            max_execution_time: MAX_EXECUTION_TIME,
            provider_shutdown_delay: Some(options.provider_shutdown_delay),
            // Handed to every provider it starts (HostData): where they export their spans.
            otel_config: options.otel.clone(),
            heartbeat_interval: Some(Duration::from_secs(5)),
            version: "1.9.2".into(),
            // Providers log at this level (their output goes to this process's stderr).
            log_level: options.provider_log_level.clone(),
            labels: options.labels.clone().into_iter().collect(),
            ..WasmbusHostConfig::default()
        };
        let (host, shutdown) = WasmbusHost::new(config)
            .await
            .with_context(|| format!("failed to start a wasmCloud host on lattice `{lattice}`"))?;
        Ok(Self {
            host,
            shutdown: Some(Box::pin(shutdown)),
            id,
            lattice: lattice.into(),
        })
    }

    /// The host's id (its public server key).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lattice it serves.
    #[must_use]
    pub fn lattice(&self) -> &str {
        &self.lattice
    }

    /// Resolves when the host is stopped through the lattice (`wash stop host`).
    pub async fn stopped(&self) -> anyhow::Result<()> {
        self.host.stopped().await.map(|_| ())
    }

    /// Where the host unpacks the providers it starts: one directory per host id, which no
    /// later host reuses (a host gets a new id each time it starts).
    #[must_use]
    pub fn provider_cache(&self) -> std::path::PathBuf {
        std::env::temp_dir().join("wasmcloudcache").join(&self.id)
    }

    /// Stops the host: every provider is asked to shut down (and drains), every component stops,
    /// and the providers it unpacked are removed (each `sluice run` would otherwise leave its
    /// providers' binaries, ~30 MB each, behind for good).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            shutdown.await.context("failed to stop the host")?;
        }
        let cache = self.provider_cache();
        if let Err(err) = std::fs::remove_dir_all(&cache) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %cache.display(), %err, "could not remove the host's provider cache");
            }
        }
        Ok(())
    }
}
