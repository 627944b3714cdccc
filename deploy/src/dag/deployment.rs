//! A multi-step pipeline deployed through wadm: rendered, stored, deployed, watched (counts per
//! link, backlog per hop), and undeployed. `sluice run` and the lattice tests go through here.

use std::path::Path;
use std::time::Duration;

use super::render::{render_dag, DagIds, DagImages};
use super::spec::{DagSpec, HOP_PROVIDER};
use crate::manifest::{ExpectedLink, Manifest};
use crate::pipeline::{deploy_manifest, undeploy_and_delete, RELINK_AFTER};
use crate::progress::DagProgress;
use crate::wadm::{Stored, WadmClient};

/// A multi-step pipeline wadm has deployed.
#[derive(Debug)]
pub struct DagDeployment {
    /// The spec it came from.
    pub spec: DagSpec,
    /// The manifest wadm holds.
    pub manifest: Manifest,
    /// The ids of its providers, steps, relays and hops.
    pub ids: DagIds,
    stored: Stored,
    replaced: Vec<ExpectedLink>,
    wadm: WadmClient,
    nats: async_nats::Client,
    jetstream: Option<async_nats::jetstream::Context>,
}

impl DagDeployment {
    /// Renders `spec` with local images (archives in `par_dir`, components relative to
    /// `spec_dir`), stores and deploys it through wadm on the spec's lattice, and waits until wadm
    /// reports it deployed.
    pub async fn start(
        nats: &async_nats::Client,
        spec: &DagSpec,
        par_dir: &Path,
        spec_dir: &Path,
    ) -> anyhow::Result<Self> {
        let images = DagImages::local(spec, par_dir, spec_dir);
        for image in images.all() {
            let path = image.trim_start_matches("file://");
            anyhow::ensure!(
                Path::new(path).is_file(),
                "{path} is missing (provider archives: `cargo xtask par`; steps: `sluice compose`; the relay: `sluice compose --relay`)"
            );
        }
        Self::start_with(nats, spec, &images).await
    }

    /// Like [`DagDeployment::start`] with explicit images.
    pub async fn start_with(nats: &async_nats::Client, spec: &DagSpec, images: &DagImages) -> anyhow::Result<Self> {
        let manifest = render_dag(spec, images);
        let (wadm, stored, replaced) = deploy_manifest(nats, &spec.lattice, &spec.name, &manifest).await?;
        Ok(Self {
            spec: spec.clone(),
            ids: DagIds::of(spec),
            manifest,
            stored,
            replaced,
            wadm,
            nats: nats.clone(),
            jetstream: hop_client(spec).await,
        })
    }

    /// Reads hop backlogs through `client` (a connection to the hops' JetStream server) instead
    /// of the one made from the spec's `hops.config.url` (none is made when the hops need
    /// credentials, which live only in the secrets backend).
    #[must_use]
    pub fn with_hop_client(mut self, client: async_nats::Client) -> Self {
        self.jetstream = Some(async_nats::jetstream::new(client));
        self
    }

    /// The version wadm deployed (`<spec version>-<digest>`).
    #[must_use]
    pub fn version(&self) -> &str {
        self.manifest.version()
    }

    /// Whether this version was new to wadm, or held (and maybe deployed) already.
    #[must_use]
    pub fn stored(&self) -> Stored {
        self.stored
    }

    /// The links the host held with an earlier version's config, deleted for wadm to put again.
    #[must_use]
    pub fn replaced_links(&self) -> &[ExpectedLink] {
        &self.replaced
    }

    /// Every link's counters and every hop's backlog.
    pub async fn progress(&self) -> DagProgress {
        DagProgress::fetch(
            &self.nats,
            &self.spec.lattice,
            &self.manifest,
            &self.ids,
            self.jetstream.as_ref(),
        )
        .await
    }

    /// Waits until the providers report every link live. A link the host holds but a running
    /// provider does not know for [`RELINK_AFTER`] is deleted at the host for wadm to put again
    /// (see [`crate::pipeline::Deployment::wait_linked`]).
    pub async fn wait_linked(&self, within: Duration) -> anyhow::Result<DagProgress> {
        let start = tokio::time::Instant::now();
        let deadline = start + within;
        let mut relinked = start;
        loop {
            let progress = self.progress().await;
            if progress.all_linked() {
                return Ok(progress);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                anyhow::bail!("`{}` links not live within {within:?}:\n{progress}", self.spec.name);
            }
            if progress.refused.is_empty() && now.duration_since(relinked) >= RELINK_AFTER {
                relinked = now;
                self.relink_missing(&progress).await?;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn relink_missing(&self, progress: &DagProgress) -> anyhow::Result<()> {
        let ctl = wasmcloud_control_interface::ClientBuilder::new(self.nats.clone())
            .lattice(&self.spec.lattice)
            .build();
        for link in progress.links.iter().filter(|l| l.answered && l.status.is_none()) {
            tracing::warn!(source = %link.from, target = %link.to, name = %link.name, "the host holds a link its provider does not know: putting it again");
            ctl.delete_link(
                &link.from,
                &link.name,
                crate::manifest::WIT_NAMESPACE,
                crate::manifest::WIT_PACKAGE,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot delete link {} -> {}: {e}", link.from, link.to))?;
        }
        Ok(())
    }

    /// Undeploys the pipeline (wadm deletes its links, so sources drain, and stops its providers
    /// and components), waits for it, and deletes the manifest. The hop streams stay (with
    /// whatever is not consumed yet) for the next deploy.
    pub async fn undeploy(self) -> anyhow::Result<()> {
        undeploy_and_delete(&self.wadm, &self.spec.name).await
    }
}

/// The counters of `spec`'s links and hops as its providers and JetStream report them now,
/// without deploying anything (`sluice status`): the links are those `spec` renders to (the same
/// whatever the images).
pub async fn progress_of(nats: &async_nats::Client, spec: &DagSpec) -> DagProgress {
    let manifest = render_dag(spec, &DagImages::under(crate::manifest::DEFAULT_ARTIFACTS, spec));
    let jetstream = hop_client(spec).await;
    DagProgress::fetch(nats, &spec.lattice, &manifest, &DagIds::of(spec), jetstream.as_ref()).await
}

/// A JetStream client for reading hop backlogs: to the hops' `url` (provider-jetstream's default
/// when not set), unless the hops need credentials.
async fn hop_client(spec: &DagSpec) -> Option<async_nats::jetstream::Context> {
    if !spec.hops.secrets.is_empty() {
        return None;
    }
    let url = spec
        .hops
        .config
        .get("url")
        .map_or_else(|| "nats://127.0.0.1:4222".to_string(), ToString::to_string);
    let url = url.split(',').next().unwrap_or_default().trim().to_string();
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url.as_str());
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(client)) => Some(async_nats::jetstream::new(client)),
        _ => {
            tracing::warn!(%url, provider = HOP_PROVIDER, "cannot reach the hops' JetStream server: no backlog figures");
            None
        }
    }
}
