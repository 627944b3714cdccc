//! wadm: the embedded wadm (the `wadm` 0.21.1 library, as `release-1.9.x` ships it) and a small
//! client for its NATS API (`wadm.api.{lattice}.model.*`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::task::JoinSet;
use wadm_types::api::{
    DeleteModelRequest, DeployModelRequest, DeployModelResponse, DeployResult, GetResult, ListModelsResponse,
    ModelSummary, PutModelResponse, PutResult, StatusResponse, StatusResult, StatusType, VersionInfo, VersionResponse,
};

/// wadm running in this process; stopped when dropped.
pub struct EmbeddedWadm {
    tasks: JoinSet<anyhow::Result<()>>,
}

impl std::fmt::Debug for EmbeddedWadm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedWadm").finish_non_exhaustive()
    }
}

impl EmbeddedWadm {
    /// Starts wadm against the NATS server at `nats_url` (JetStream required), keeping its
    /// state in memory. It serves every lattice on that server.
    pub async fn start(nats_url: &str) -> anyhow::Result<Self> {
        let server = nats_url.trim_start_matches("nats://").to_string();
        let config = wadm::config::WadmConfig {
            nats_server: server,
            stream_persistence: wadm::StreamPersistence::Memory,
            ..wadm::config::WadmConfig::default()
        };
        let tasks = wadm::start_wadm(config).await.context("failed to start wadm")?;
        Ok(Self { tasks })
    }

    /// Stops wadm.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// What [`WadmClient::store`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The application's first version: stored.
    First,
    /// A version wadm did not hold: stored next to the others.
    New,
    /// wadm held this version already, not deployed.
    Held,
    /// wadm held this version already, and it is the deployed one.
    Deployed,
}

/// A client for wadm's API on one lattice.
#[derive(Debug, Clone)]
pub struct WadmClient {
    nats: async_nats::Client,
    lattice: String,
}

fn subject(lattice: &str, operation: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("wadm.api.{lattice}.model.{operation}.{name}"),
        None => format!("wadm.api.{lattice}.model.{operation}"),
    }
}

impl WadmClient {
    /// A client for `lattice` over `nats`.
    #[must_use]
    pub fn new(nats: async_nats::Client, lattice: &str) -> Self {
        Self {
            nats,
            lattice: lattice.into(),
        }
    }

    async fn request<T: serde::de::DeserializeOwned>(&self, subject: String, body: Vec<u8>) -> anyhow::Result<T> {
        // wadm may still be starting: retry "no responders" for a few seconds.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.nats.request(subject.clone(), body.clone().into()).await {
                Ok(reply) => {
                    return serde_json::from_slice(&reply.payload).with_context(|| {
                        format!(
                            "unexpected wadm reply on {subject}: {}",
                            String::from_utf8_lossy(&reply.payload)
                        )
                    })
                }
                Err(err) if Instant::now() < deadline => {
                    tracing::debug!(%err, %subject, "wadm not answering yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(err).with_context(|| format!("wadm did not answer on {subject}")),
            }
        }
    }

    /// Stores `version` of application `name` (the manifest `yaml`) unless wadm holds it already.
    pub async fn store(&self, name: &str, version: &str, yaml: &str) -> anyhow::Result<Stored> {
        let versions = self.versions(name).await?;
        Ok(match versions.iter().find(|v| v.version == version) {
            Some(v) if v.deployed => Stored::Deployed,
            Some(_) => Stored::Held,
            None => {
                self.put(yaml).await?;
                if versions.is_empty() {
                    Stored::First
                } else {
                    Stored::New
                }
            }
        })
    }

    /// Stores a manifest (YAML) as a new version; returns the application name.
    pub async fn put(&self, manifest_yaml: &str) -> anyhow::Result<String> {
        let reply: PutModelResponse = self
            .request(subject(&self.lattice, "put", None), manifest_yaml.as_bytes().to_vec())
            .await?;
        if reply.result == PutResult::Error {
            bail!("wadm refused the manifest: {}", reply.message);
        }
        Ok(reply.name)
    }

    /// The stored versions of application `name`, oldest first (none when wadm does not know it).
    pub async fn versions(&self, name: &str) -> anyhow::Result<Vec<VersionInfo>> {
        let reply: VersionResponse = self
            .request(subject(&self.lattice, "versions", Some(name)), Vec::new())
            .await?;
        match reply.result {
            GetResult::Success => Ok(reply.versions),
            GetResult::NotFound => Ok(Vec::new()),
            GetResult::Error => bail!("wadm could not list the versions of `{name}`: {}", reply.message),
        }
    }

    /// Every application wadm holds on this lattice, with its status.
    pub async fn list(&self) -> anyhow::Result<Vec<ModelSummary>> {
        let reply: ListModelsResponse = self.request(subject(&self.lattice, "get", None), Vec::new()).await?;
        match reply.result {
            GetResult::Success | GetResult::NotFound => Ok(reply.models),
            GetResult::Error => bail!("wadm could not list the applications: {}", reply.message),
        }
    }

    /// Deploys `version` of application `name` (the latest when `None`).
    pub async fn deploy(&self, name: &str, version: Option<&str>) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&DeployModelRequest {
            version: version.map(str::to_owned),
        })?;
        let reply: DeployModelResponse = self.request(subject(&self.lattice, "deploy", Some(name)), body).await?;
        if reply.result != DeployResult::Acknowledged {
            bail!("wadm did not deploy `{name}`: {:?} {}", reply.result, reply.message);
        }
        Ok(())
    }

    /// Undeploys application `name` (its links are deleted, its providers and components stopped).
    pub async fn undeploy(&self, name: &str) -> anyhow::Result<()> {
        let reply: DeployModelResponse = self
            .request(subject(&self.lattice, "undeploy", Some(name)), b"{}".to_vec())
            .await?;
        if reply.result != DeployResult::Acknowledged {
            bail!("wadm did not undeploy `{name}`: {:?} {}", reply.result, reply.message);
        }
        Ok(())
    }

    /// Deletes every version of application `name`.
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&DeleteModelRequest { version: None })?;
        let _: serde_json::Value = self.request(subject(&self.lattice, "del", Some(name)), body).await?;
        Ok(())
    }

    /// The application's status and its message, or `None` when wadm does not know it.
    pub async fn status(&self, name: &str) -> anyhow::Result<Option<(StatusType, String)>> {
        let reply: StatusResponse = self
            .request(subject(&self.lattice, "status", Some(name)), Vec::new())
            .await?;
        match (reply.result, reply.status) {
            (StatusResult::NotFound, _) => Ok(None),
            (StatusResult::Error, _) => bail!("wadm status of `{name}` failed: {}", reply.message),
            (StatusResult::Ok, Some(status)) => Ok(Some((status.info.status_type, status.info.message))),
            (StatusResult::Ok, None) => Ok(None),
        }
    }

    /// Deploys `version` of application `name` (the latest when `None`) and waits until wadm
    /// reports it deployed. A wadm that has not yet observed the lattice (its hosts' first
    /// events) does not act on a deploy, or reports it `Failed` with no eligible host until the
    /// host's next heartbeat: while the application stays `Undeployed` the deploy is sent again,
    /// and `Failed` is reported only at the deadline.
    pub async fn deploy_and_wait(&self, name: &str, version: Option<&str>, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            self.deploy(name, version).await?;
            let resend = Instant::now() + Duration::from_secs(10);
            while Instant::now() < resend.min(deadline) {
                let status = self.status(name).await?;
                if let Some((StatusType::Deployed, _)) = &status {
                    return Ok(());
                }
                last = status;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if !matches!(last, Some((StatusType::Undeployed, _)) | None) {
                // wadm is working on it: wait without deploying again.
                return self
                    .wait_for(
                        name,
                        StatusType::Deployed,
                        deadline.saturating_duration_since(Instant::now()),
                    )
                    .await;
            }
        }
        bail!("`{name}` was not deployed within {within:?}; last status {last:?}")
    }

    /// Waits until application `name` reaches `wanted` (or fails with wadm's message).
    pub async fn wait_for(&self, name: &str, wanted: StatusType, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            let status = self.status(name).await?;
            match &status {
                Some((status, _)) if *status == wanted => return Ok(()),
                None if wanted == StatusType::Undeployed => return Ok(()),
                _ => {}
            }
            last = status;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("`{name}` did not become {wanted:?} within {within:?}; last status {last:?}")
    }
}
