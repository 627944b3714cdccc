//! A local lattice in this process: nats-server with JetStream (started, or an existing one
//! reused), wadm, a local secrets backend, and one embedded wasmCloud host per lattice (a host
//! serves one lattice; one NATS server and one wadm serve them all).

use std::collections::HashMap;

use anyhow::Context as _;
use sluice_integration::servers::NatsServer;

use crate::host::{EmbeddedHost, HostOptions, SECRETS_TOPIC_PREFIX};
use crate::secrets::{LocalSecrets, SecretEntry};
use crate::wadm::{EmbeddedWadm, WadmClient};

/// What runs locally; [`LocalLattice::stop`] stops it in order (hosts, wadm, NATS).
#[derive(Debug)]
pub struct LocalLattice {
    nats_server: Option<NatsServer>,
    nats_url: String,
    nats: async_nats::Client,
    wadm: Option<EmbeddedWadm>,
    secrets: Vec<LocalSecrets>,
    hosts: Vec<EmbeddedHost>,
}

impl LocalLattice {
    /// Uses the NATS server at `nats_url` (it must have JetStream), or starts one when `None`,
    /// then starts wadm.
    pub async fn start(nats_url: Option<&str>) -> anyhow::Result<Self> {
        let (nats_server, nats_url) = match nats_url {
            Some(url) => (None, url.to_string()),
            None => {
                // Ends with the thread that started it (the command's main thread, a test's
                // thread), even when this process is killed.
                let server = NatsServer::start_tied_to_this_thread().context("failed to start nats-server")?;
                let url = server.url();
                (Some(server), url)
            }
        };
        let nats = async_nats::connect(&nats_url)
            .await
            .with_context(|| format!("failed to connect to NATS at {nats_url}"))?;
        let wadm = EmbeddedWadm::start(&nats_url).await?;
        Ok(Self {
            nats_server,
            nats_url,
            nats,
            wadm: Some(wadm),
            secrets: Vec::new(),
            hosts: Vec::new(),
        })
    }

    /// The NATS URL of the lattice.
    #[must_use]
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// A client connection to the lattice's NATS server.
    #[must_use]
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Starts an embedded host on `lattice` and returns its id.
    pub async fn add_host(&mut self, lattice: &str) -> anyhow::Result<String> {
        self.add_host_with(lattice, &HostOptions::default()).await
    }

    /// Like [`LocalLattice::add_host`], with `options` (a stock host's shutdown delay,
    /// OpenTelemetry settings for its providers).
    pub async fn add_host_with(&mut self, lattice: &str, options: &HostOptions) -> anyhow::Result<String> {
        let host = EmbeddedHost::start_with(&self.nats_url, lattice, options).await?;
        let id = host.id().to_string();
        self.hosts.push(host);
        Ok(id)
    }

    /// Serves `secrets` as secrets backend `backend` to every host.
    pub async fn serve_secrets(&mut self, backend: &str, secrets: HashMap<String, SecretEntry>) -> anyhow::Result<()> {
        self.secrets
            .push(LocalSecrets::serve(self.nats.clone(), SECRETS_TOPIC_PREFIX, backend, secrets).await?);
        Ok(())
    }

    /// A wadm client for `lattice`.
    #[must_use]
    pub fn wadm(&self, lattice: &str) -> WadmClient {
        WadmClient::new(self.nats.clone(), lattice)
    }

    /// Stops every host (providers drain), then wadm, the secrets backend and the NATS server
    /// when it was started here.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for host in self.hosts.drain(..) {
            if let Err(err) = host.stop().await {
                result = Err(err);
            }
        }
        if let Some(wadm) = self.wadm.take() {
            wadm.stop().await;
        }
        self.secrets.clear();
        drop(self.nats_server.take());
        result
    }
}
