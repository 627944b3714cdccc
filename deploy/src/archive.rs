//! Reading provider archives (`.par.gz`) back the way the host does (`provider-archive`'s reader).
//! They are written by `cargo xtask par`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use provider_archive::ProviderArchive;

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
