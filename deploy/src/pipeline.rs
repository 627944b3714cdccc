//! A pipeline deployed through wadm: rendered, stored, deployed, watched, and undeployed.
//! Both `sluice run` and the lattice tests go through here.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use wadm_types::api::StatusType;

use crate::manifest::{render, ExpectedLink, Ids, Images, Manifest};
use crate::progress::Progress;
use crate::spec::PipelineSpec;
use crate::wadm::{Stored, WadmClient};

/// How long wadm may take to bring a pipeline up (providers start, links are put).
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`Deployment::wait_linked`] lets a running provider not know a link the host holds
/// before the link is put again (longer than a link's first connection attempts take).
pub const RELINK_AFTER: Duration = Duration::from_secs(20);

/// A pipeline wadm has deployed.
#[derive(Debug)]
pub struct Deployment {
    /// The spec it came from.
    pub spec: PipelineSpec,
    /// The manifest wadm holds.
    pub manifest: Manifest,
    /// The ids of its providers and step.
    pub ids: Ids,
    stored: Stored,
    replaced: Vec<ExpectedLink>,
    step_image: String,
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
        let (wadm, stored, replaced) = deploy_manifest(nats, &spec.lattice, &spec.name, &manifest).await?;
        Ok(Self {
            spec: spec.clone(),
            ids: Ids::of(spec),
            manifest,
            stored,
            replaced,
            step_image: images.step.clone(),
            wadm,
            nats: nats.clone(),
        })
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

    /// The links that the host held with another config (an earlier version's) and that were
    /// deleted for wadm to put them again with this version's.
    #[must_use]
    pub fn replaced_links(&self) -> &[ExpectedLink] {
        &self.replaced
    }

    /// The pipeline's live counters.
    pub async fn progress(&self) -> Progress {
        Progress::fetch(&self.nats, &self.spec.lattice, &self.ids).await
    }

    /// Waits until the providers report both links live.
    ///
    /// A link the host holds but a running provider does not know for [`RELINK_AFTER`] (a put
    /// the provider missed: the 1.x provider SDK reads a provider's links from the host once,
    /// then subscribes to puts, and neither the host nor wadm sends a put again) is deleted at
    /// the host, for wadm to put it again.
    pub async fn wait_linked(&self, within: Duration) -> anyhow::Result<Progress> {
        let start = tokio::time::Instant::now();
        let deadline = start + within;
        let mut relinked = start;
        loop {
            let progress = self.progress().await;
            if progress.source.is_some() && progress.sink.is_some() {
                return Ok(progress);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                anyhow::bail!("`{}` links not live within {within:?}: {progress}", self.spec.name);
            }
            if progress.refused.is_empty() && now.duration_since(relinked) >= RELINK_AFTER {
                relinked = now;
                self.relink_missing(&progress).await?;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes at the host the links that a running provider of this pipeline does not know, so
    /// that wadm puts them again; returns how many.
    async fn relink_missing(&self, progress: &Progress) -> anyhow::Result<usize> {
        let missing = |link: &ExpectedLink| {
            (link.source_id == self.ids.source && progress.source_answered && progress.source.is_none())
                || (link.source_id == self.ids.step && progress.sink_answered && progress.sink.is_none())
        };
        let ctl = wasmcloud_control_interface::ClientBuilder::new(self.nats.clone())
            .lattice(&self.spec.lattice)
            .build();
        let mut relinked = 0;
        for link in self.manifest.links().iter().filter(|l| missing(l)) {
            tracing::warn!(source = %link.source_id, target = %link.target, name = %link.name, "the host holds a link its provider does not know: putting it again");
            ctl.delete_link(&link.source_id, &link.name, &link.namespace, &link.package)
                .await
                .map_err(|e| anyhow::anyhow!("cannot delete link {} -> {}: {e}", link.source_id, link.target))?;
            relinked += 1;
        }
        Ok(relinked)
    }

    /// Waits until every host running the step runs it from this version's image, and returns
    /// how many hosts were told to. wadm 0.21 starts a component whose image changed only where
    /// none runs: a host still running the step from an earlier version's image is told to update
    /// it in place (the host starts the new component, moves its links to it, then stops the old
    /// one), so the step is replaced without being stopped.
    pub async fn update_step(&self, within: Duration) -> anyhow::Result<usize> {
        let ctl = wasmcloud_control_interface::ClientBuilder::new(self.nats.clone())
            .lattice(&self.spec.lattice)
            .build();
        let deadline = tokio::time::Instant::now() + within;
        let mut told: Vec<String> = Vec::new();
        loop {
            let hosts = ctl
                .get_hosts()
                .await
                .map_err(|e| anyhow::anyhow!("cannot list the hosts of lattice `{}`: {e}", self.spec.lattice))?;
            let mut running = 0;
            let mut stale = Vec::new();
            for host in hosts.into_iter().filter_map(|h| h.into_data()) {
                let Ok(inventory) = ctl.get_host_inventory(host.id()).await else {
                    continue;
                };
                let Some(inventory) = inventory.into_data() else {
                    continue;
                };
                for component in inventory.components().iter().filter(|c| c.id() == self.ids.step) {
                    running += 1;
                    if component.image_ref() != self.step_image {
                        stale.push((host.id().to_string(), component.annotations().cloned()));
                    }
                }
            }
            if running > 0 && stale.is_empty() {
                return Ok(told.len());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "step `{}` not running from {} within {within:?} ({running} running, {} from another image)",
                self.ids.step,
                self.step_image,
                stale.len()
            );
            // wadm's annotations (which application manages the step) carry over.
            for (host, annotations) in stale {
                if !told.contains(&host) {
                    tracing::info!(%host, step = %self.ids.step, image = %self.step_image, "updating the step in place");
                    ctl.update_component(&host, &self.ids.step, &self.step_image, annotations)
                        .await
                        .map_err(|e| anyhow::anyhow!("host {host} cannot update step `{}`: {e}", self.ids.step))?;
                    told.push(host);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Undeploys the pipeline (wadm deletes its links, so sources drain, and stops its providers
    /// and step), waits for it, and deletes the manifest.
    pub async fn undeploy(self) -> anyhow::Result<()> {
        undeploy_and_delete(&self.wadm, &self.spec.name).await
    }
}

/// Stores `manifest` in wadm on `lattice` as application `name` (a version wadm holds already
/// is not stored again), deploys that version, waits until wadm reports it deployed, and
/// replaces the links the host holds with an earlier version's config (see [`converge_links`]).
/// One-step and multi-step pipelines deploy through here.
pub async fn deploy_manifest(
    nats: &async_nats::Client,
    lattice: &str,
    name: &str,
    manifest: &Manifest,
) -> anyhow::Result<(WadmClient, Stored, Vec<ExpectedLink>)> {
    let wadm = WadmClient::new(nats.clone(), lattice);
    let stored = wadm.store(name, manifest.version(), &manifest.to_yaml()).await?;
    wadm.deploy_and_wait(name, Some(manifest.version()), DEPLOY_TIMEOUT)
        .await
        .with_context(|| format!("pipeline `{name}` did not deploy"))?;
    let replaced = converge_links(nats, lattice, manifest, DEPLOY_TIMEOUT)
        .await
        .with_context(|| format!("pipeline `{name}`: the host's links do not match its manifest"))?;
    Ok((wadm, stored, replaced))
}

/// Undeploys application `name`, waits until wadm reports it undeployed, and deletes its
/// stored versions.
pub async fn undeploy_and_delete(wadm: &WadmClient, name: &str) -> anyhow::Result<()> {
    wadm.undeploy(name).await?;
    wadm.wait_for(name, StatusType::Undeployed, DEPLOY_TIMEOUT)
        .await
        .with_context(|| format!("pipeline `{name}` did not undeploy"))?;
    wadm.delete(name).await
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
        wadm.store(name, manifest.version(), &manifest.to_yaml()).await?;
        wadm.deploy_and_wait(name, Some(manifest.version()), DEPLOY_TIMEOUT)
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

/// Waits until the host on `lattice` holds every link of `manifest` as it asks: the right target
/// and this version's config. wadm 0.21 puts a link only when the host has none (its link scaler
/// leaves a link with other config alone), so a link the host holds with an earlier version's
/// config is deleted here once, and wadm puts it again with this version's. Returns the links
/// so replaced.
pub async fn converge_links(
    nats: &async_nats::Client,
    lattice: &str,
    manifest: &Manifest,
    within: Duration,
) -> anyhow::Result<Vec<ExpectedLink>> {
    let ctl = wasmcloud_control_interface::ClientBuilder::new(nats.clone())
        .lattice(lattice)
        .build();
    let wanted = manifest.links();
    let deadline = tokio::time::Instant::now() + within;
    let mut replaced: Vec<ExpectedLink> = Vec::new();
    loop {
        let held = ctl
            .get_links()
            .await
            .map_err(|e| anyhow::anyhow!("cannot list the links of lattice `{lattice}`: {e}"))?
            .into_data()
            .unwrap_or_default();
        let mut waiting = Vec::new();
        for link in &wanted {
            let Some(host) = held.iter().find(|h| {
                h.source_id() == link.source_id
                    && h.name() == link.name
                    && h.wit_namespace() == link.namespace
                    && h.wit_package() == link.package
            }) else {
                waiting.push(format!("{} -> {} (not put yet)", link.source_id, link.target));
                continue;
            };
            let configs: Vec<&String> = host.source_config().iter().chain(host.target_config()).collect();
            if held_as_wanted(host.target(), &configs, link) {
                continue;
            }
            waiting.push(format!(
                "{} -> {} (held with other config)",
                link.source_id, link.target
            ));
            if !replaced.contains(link) {
                tracing::info!(source = %link.source_id, target = %link.target, name = %link.name, "replacing a link held with an earlier version's config");
                ctl.delete_link(&link.source_id, &link.name, &link.namespace, &link.package)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot delete link {} -> {}: {e}", link.source_id, link.target))?;
                replaced.push(link.clone());
            }
        }
        if waiting.is_empty() {
            return Ok(replaced);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("after {within:?}: {}", waiting.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether a link the host holds (its target and config names) is the one `link` asks for.
fn held_as_wanted(target: &str, configs: &[&String], link: &ExpectedLink) -> bool {
    target == link.target && link.config.iter().all(|c| configs.contains(&c))
}
