//! Provider archives (`.par.gz`): read back the way the host does (`provider-archive`'s reader),
//! and each pipeline's own copies. They are written by `cargo xtask par`.
//!
//! **A pipeline's own provider identity.** wasmCloud's `nats-kv` secrets backend grants a secret to
//! the subject of the requesting provider's claims (its service public key), not to an
//! application: if one archive served customers A and B, a mapping that lets A's S3 sink read A's
//! credentials would let B's read them too. So every pipeline runs its own copy of each provider
//! archive ([`sign_for_pipeline`]), the same binary re-signed by the same issuer with a service key
//! of that pipeline (kept in the keys directory, so the subject survives rebuilds and redeploys),
//! in `<par dir>/pipelines/<lattice>/<pipeline>/` ([`pipeline_dir`]). The host hands that claims
//! JWT to the secrets backend with every secret request for the provider's links, and the
//! operator maps each pipeline's secrets to its providers' subjects only
//! ([`PipelineArchive::add_mapping`]).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use provider_archive::ProviderArchive;
/// The keys directory every archive is signed with (`cargo xtask par`'s).
pub use xtask::keys::Keys;

use crate::dag::spec::{AnySpec, DagSpec, HOP_PROVIDER};
use crate::spec::{Endpoint, PipelineSpec};

/// A pipeline whose providers run with identities of its own: its name and lattice, and the
/// providers it starts itself with the secrets their links read. Both spec forms are one.
pub trait OwnProviders {
    /// The pipeline's lattice.
    fn lattice(&self) -> &str;
    /// The pipeline's name.
    fn name(&self) -> &str;
    /// Each provider package the pipeline starts itself (not a `shared:` one), once, with the
    /// secret names of every link it serves, in the order they appear in the spec.
    fn own_providers(&self) -> anyhow::Result<Vec<(String, Vec<String>)>>;
}

/// Adds `endpoint`'s provider (unless shared) and secrets to `wanted`.
fn want(wanted: &mut Vec<(String, Vec<String>)>, endpoint: &Endpoint) -> anyhow::Result<()> {
    if endpoint.shared.is_some() {
        return Ok(());
    }
    want_package(wanted, package(endpoint)?, endpoint.secrets.values().cloned());
    Ok(())
}

fn want_package(wanted: &mut Vec<(String, Vec<String>)>, provider: String, secrets: impl Iterator<Item = String>) {
    match wanted.iter_mut().find(|(p, _)| *p == provider) {
        Some((_, held)) => held.extend(secrets),
        None => wanted.push((provider, secrets.collect())),
    }
}

impl OwnProviders for PipelineSpec {
    fn lattice(&self) -> &str {
        &self.lattice
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn own_providers(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let mut wanted = Vec::new();
        for endpoint in [&self.source, &self.sink] {
            want(&mut wanted, endpoint)?;
        }
        Ok(wanted)
    }
}

impl OwnProviders for DagSpec {
    fn lattice(&self) -> &str {
        &self.lattice
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// The source provider, the sinks' providers, then the JetStream hop provider (with the
    /// hops' secrets), each once.
    fn own_providers(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let mut wanted = Vec::new();
        for endpoint in self.source_endpoint().into_iter().chain(self.sinks.values()) {
            want(&mut wanted, endpoint)?;
        }
        if self.hops.shared.is_none() {
            let kind = crate::spec::provider_kind(HOP_PROVIDER).context("no JetStream provider")?;
            want_package(&mut wanted, kind.package(), self.hops.secrets.values().cloned());
        }
        Ok(wanted)
    }
}

impl OwnProviders for AnySpec {
    fn lattice(&self) -> &str {
        AnySpec::lattice(self)
    }

    fn name(&self) -> &str {
        AnySpec::name(self)
    }

    fn own_providers(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        match self {
            Self::Single(spec) => spec.own_providers(),
            Self::Dag(spec) => spec.own_providers(),
        }
    }
}

/// The archive of provider `package` in `dir`: `<dir>/<package>.par.gz`.
#[must_use]
pub fn path(dir: &Path, package: &str) -> PathBuf {
    dir.join(format!("{package}.par.gz"))
}

/// What an archive holds, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// The provider's name in the claims.
    pub name: String,
    /// The vendor in the claims.
    pub vendor: String,
    /// The version in the claims.
    pub version: Option<String>,
    /// The provider's public key (the claims' subject).
    pub subject: String,
    /// The targets it has binaries for, e.g. `x86_64-linux`.
    pub targets: Vec<String>,
    /// The size of the binary for this machine.
    pub binary_bytes: usize,
}

/// Loads `path` for this machine's target with `provider-archive` (verifying the claims' hashes,
/// as the host does) and describes it.
pub async fn inspect(path: &Path) -> anyhow::Result<ArchiveInfo> {
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    let archive = ProviderArchive::try_load_target_from_file(path, &target)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))
        .with_context(|| format!("failed to load provider archive {}", path.display()))?;
    let claims = archive.claims().context("the archive has no claims")?;
    let metadata = claims
        .metadata
        .clone()
        .context("the claims have no provider metadata")?;
    let binary_bytes = archive.target_bytes(&target).map_or(0, |b| b.len());
    Ok(ArchiveInfo {
        name: metadata.name.unwrap_or_default(),
        vendor: metadata.vendor,
        version: metadata.ver,
        subject: claims.subject,
        targets: archive.targets(),
        binary_bytes,
    })
}

/// Where a pipeline's own copies of its provider archives live, under the archives' directory
/// `par_dir`: `<par_dir>/pipelines/<lattice>/<pipeline>` (relative: [`pipeline_path`]).
#[must_use]
pub fn pipeline_dir(par_dir: &Path, spec: &(impl OwnProviders + ?Sized)) -> PathBuf {
    par_dir.join(pipeline_path(spec))
}

/// `pipelines/<lattice>/<pipeline>`: where a pipeline's copies are, below a directory of archives
/// (or an OCI repository prefix, see [`crate::manifest::Images::under`]).
#[must_use]
pub fn pipeline_path(spec: &(impl OwnProviders + ?Sized)) -> String {
    format!("pipelines/{}/{}", spec.lattice(), spec.name())
}

/// A pipeline's own copy of a provider archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineArchive {
    /// The provider package, e.g. `sluice-provider-s3`.
    pub provider: String,
    /// The copy, `<pipeline dir>/<provider>.par.gz`.
    pub path: PathBuf,
    /// Its subject: the pipeline's service public key for this provider (`V...`).
    pub subject: String,
    /// Its issuer (`A...`), the same for every archive signed with one keys directory.
    pub issuer: String,
    /// The secrets (names in the backend) this provider's links of the pipeline read.
    pub secrets: Vec<String>,
}

impl PipelineArchive {
    /// The command that grants this provider the pipeline's secrets in wasmCloud's `nats-kv`
    /// backend (`secrets-nats-kv add-mapping <subject> --secret <name>...`); `None` when its links
    /// read no secret.
    #[must_use]
    pub fn add_mapping(&self) -> Option<String> {
        if self.secrets.is_empty() {
            return None;
        }
        let mut command = format!("secrets-nats-kv add-mapping {}", self.subject);
        for secret in &self.secrets {
            command.push_str(" --secret ");
            command.push_str(secret);
        }
        Some(command)
    }
}

/// Writes the pipeline's own copies of its providers' archives: for each provider the pipeline
/// starts itself (not a `shared:` one), `<par_dir>/<provider>.par.gz` re-signed with the issuer
/// and the pipeline's service key for that provider from `keys`, into [`pipeline_dir`]. A copy
/// that is already there, signed so and with the same binary, is kept. A multi-step pipeline's
/// copies are its source's, its sinks' and its JetStream hop provider's (holding the hops'
/// secrets). One provider serving both
/// ends has one copy (and one identity) holding both ends' secrets.
pub async fn sign_for_pipeline(
    spec: &(impl OwnProviders + ?Sized),
    par_dir: &Path,
    keys: &Keys,
) -> anyhow::Result<Vec<PipelineArchive>> {
    let issuer = std::sync::Arc::new(keys.issuer()?);
    let dir = pipeline_dir(par_dir, spec);
    // One copy per provider package, with the secrets of every end it serves.
    let wanted = spec.own_providers()?;
    // Signed side by side: each is a decompression and a recompression of a whole archive.
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (provider, _)) in wanted.iter().enumerate() {
        let service = keys.pipeline_service(spec.lattice(), spec.name(), provider)?;
        let from = path(par_dir, provider);
        anyhow::ensure!(
            from.is_file(),
            "{} is missing (provider archives: `cargo xtask par`)",
            from.display()
        );
        let (to, issuer) = (path(&dir, provider), issuer.clone());
        tasks.spawn(async move { (index, xtask::par::resign(&from, &to, &issuer, &service).await) });
    }
    let mut signed = Vec::with_capacity(wanted.len());
    while let Some(done) = tasks.join_next().await {
        let (index, packaged) = done?;
        let packaged = packaged?;
        let (provider, mut secrets) = wanted[index].clone();
        secrets.sort();
        secrets.dedup();
        signed.push((
            index,
            PipelineArchive {
                provider,
                path: packaged.path,
                subject: packaged.subject,
                issuer: packaged.issuer,
                secrets,
            },
        ));
    }
    signed.sort_by_key(|(index, _)| *index);
    Ok(signed.into_iter().map(|(_, copy)| copy).collect())
}

fn package(endpoint: &Endpoint) -> anyhow::Result<String> {
    crate::spec::provider_kind(&endpoint.provider)
        .map(|kind| kind.package())
        .with_context(|| format!("unknown provider `{}`", endpoint.provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_step_pipeline_signs_its_source_sinks_and_hop_provider_once_each() {
        let spec = AnySpec::parse(
            "
name: fanout
lattice: customer-a
source: { provider: mqtt, config: { topics: 'sensors/#' }, secrets: { password: mqtt-password } }
steps:
  clean: { component: c.wasm, to: [archive, cold, warehouse] }
sinks:
  archive: { provider: s3, config: { bucket: a }, secrets: { secret_access_key: s3-a } }
  cold: { provider: s3, config: { bucket: c }, secrets: { secret_access_key: s3-c } }
  warehouse: { provider: kafka, config: { topic: t }, shared: kafka-apps }
hops: { secrets: { password: hop-password } }
",
        )
        .unwrap();
        assert_eq!(
            spec.own_providers().unwrap(),
            [
                ("sluice-provider-mqtt".to_string(), vec!["mqtt-password".to_string()]),
                (
                    "sluice-provider-s3".to_string(),
                    vec!["s3-a".to_string(), "s3-c".to_string()]
                ),
                (
                    "sluice-provider-jetstream".to_string(),
                    vec!["hop-password".to_string()]
                ),
            ]
        );
        assert_eq!(
            pipeline_dir(Path::new("/par"), &spec),
            Path::new("/par/pipelines/customer-a/fanout")
        );
        // A shared hop provider is not the pipeline's to sign.
        let AnySpec::Dag(mut dag) = spec else {
            panic!("a multi-step spec")
        };
        dag.hops.shared = Some("hops".into());
        assert!(!dag
            .own_providers()
            .unwrap()
            .iter()
            .any(|(p, _)| p.contains("jetstream")));
    }
}
