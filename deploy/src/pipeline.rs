//! A pipeline deployed through wadm: rendered, stored, deployed, watched, and undeployed.
//! Both `sluice run` and the lattice tests go through here.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use wadm_types::api::StatusType;

use crate::manifest::{render, Ids, Images, Manifest};
use crate::progress::Progress;
use crate::spec::PipelineSpec;
use crate::wadm::WadmClient;

/// How long wadm may take to bring a pipeline up (providers start, links are put).
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// A pipeline wadm has deployed.
#[derive(Debug)]
pub struct Deployment {
    /// The spec it came from.
    pub spec: PipelineSpec,
    /// The manifest wadm holds.
    pub manifest: Manifest,
    /// The ids of its providers and step.
    pub ids: Ids,
    wadm: WadmClient,
    nats: async_nats::Client,
}

impl Deployment {
    /// Renders `spec` with local images (archives in `par_dir`, the step relative to `spec_dir`),
    /// stores and deploys it through wadm on the spec's lattice, and waits until wadm reports it
    /// deployed.
    pub async fn start(
        nats: &async_nats::Client,
        spec: &PipelineSpec,
        par_dir: &Path,
        spec_dir: &Path,
    ) -> anyhow::Result<Self> {
        let images = Images::local(spec, par_dir, spec_dir);
        let mut needed = vec![&images.step];
        if spec.source.shared.is_none() {
            needed.push(&images.source);
        }
        if spec.sink.shared.is_none() {
            needed.push(&images.sink);
        }
        for image in needed {
            let path = image.trim_start_matches("file://");
            anyhow::ensure!(
                Path::new(path).is_file(),
                "{path} is missing (provider archives: `cargo xtask par`; the step: `sluice compose`)"
            );
        }
        Self::start_with(nats, spec, &images).await
    }

    /// Like [`Deployment::start`] with explicit images.
    pub async fn start_with(nats: &async_nats::Client, spec: &PipelineSpec, images: &Images) -> anyhow::Result<Self> {
        let manifest = render(spec, images);
        let wadm = WadmClient::new(nats.clone(), &spec.lattice);
        wadm.put(&manifest.to_yaml()).await?;
        let deployment = Self {
            spec: spec.clone(),
            ids: Ids::of(spec),
            manifest,
            wadm,
            nats: nats.clone(),
        };
        deployment
            .wadm
            .deploy_and_wait(&deployment.spec.name, DEPLOY_TIMEOUT)
            .await
            .with_context(|| format!("pipeline `{}` did not deploy", deployment.spec.name))?;
        Ok(deployment)
    }

    /// The pipeline's live counters.
    pub async fn progress(&self) -> Progress {
        Progress::fetch(&self.nats, &self.spec.lattice, &self.ids).await
    }

    /// Waits until the providers report both links live.
    pub async fn wait_linked(&self, within: Duration) -> anyhow::Result<Progress> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let progress = self.progress().await;
            if progress.source.is_some() && progress.sink.is_some() {
                return Ok(progress);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("`{}` links not live within {within:?}: {progress}", self.spec.name);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Undeploys the pipeline (wadm deletes its links, so sources drain, and stops its providers
    /// and step), waits for it, and deletes the manifest.
    pub async fn undeploy(self) -> anyhow::Result<()> {
        let name = &self.spec.name;
        self.wadm.undeploy(name).await?;
        self.wadm
            .wait_for(name, StatusType::Undeployed, DEPLOY_TIMEOUT)
            .await
            .with_context(|| format!("pipeline `{name}` did not undeploy"))?;
        self.wadm.delete(name).await
    }
}

/// A shared providers application (see [`crate::manifest::render_shared_providers`]) deployed
/// through wadm.
#[derive(Debug)]
pub struct SharedProviders {
    name: String,
    wadm: WadmClient,
}

impl SharedProviders {
    /// Deploys application `name` on `lattice` with one instance of each of `providers` (short
    /// names) from their archives in `par_dir`, and waits until wadm reports it deployed.
    pub async fn start(
        nats: &async_nats::Client,
        name: &str,
        lattice: &str,
        providers: &[&str],
        par_dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut kinds = Vec::new();
        for provider in providers {
            let kind =
                crate::spec::provider_kind(provider).with_context(|| format!("unknown provider `{provider}`"))?;
            let path = std::path::absolute(crate::archive::path(par_dir, &kind.package()))?;
            anyhow::ensure!(path.is_file(), "{} is missing (`cargo xtask par`)", path.display());
            kinds.push((kind, format!("file://{}", path.display())));
        }
        let manifest = crate::manifest::render_shared_providers(name, lattice, &kinds);
        let wadm = WadmClient::new(nats.clone(), lattice);
        wadm.put(&manifest.to_yaml()).await?;
        wadm.deploy_and_wait(name, DEPLOY_TIMEOUT)
            .await
            .with_context(|| format!("shared providers `{name}` did not deploy"))?;
        Ok(Self {
            name: name.into(),
            wadm,
        })
    }

    /// Undeploys and deletes the application.
    pub async fn undeploy(self) -> anyhow::Result<()> {
        self.wadm.undeploy(&self.name).await?;
        self.wadm
            .wait_for(&self.name, StatusType::Undeployed, DEPLOY_TIMEOUT)
            .await?;
        self.wadm.delete(&self.name).await
    }
}
