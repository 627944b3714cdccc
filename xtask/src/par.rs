//! Provider archives: every `sluice-provider-*` binary of the workspace, stripped, packaged as a
//! wasmCloud provider archive (`<package>.par.gz`: a gzip tar with signed CapabilityProvider claims
//! naming the provider and the binary for this platform), as `wash par create --compress` writes it.
//!
//! `cargo xtask par` builds release binaries into `<target dir>/par/`; tests package debug binaries
//! (smaller builds, same shape) with [`package_all`].
//!
//! Every archive is signed with keys from a [`Keys`] directory, so a provider keeps its subject
//! (its service public key, what `nats-kv` secrets mappings name) from one build to the next.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use nkeys::KeyPair;
use provider_archive::ProviderArchive;
use serde::Deserialize;

pub use crate::keys::Keys;

/// The vendor written into every archive's claims.
pub const VENDOR: &str = "Sluice";

/// The packages whose binaries are providers: every workspace member named `sluice-provider-*`
/// that has a binary (so `provider-core`, a library, is not one).
pub const PROVIDER_PREFIX: &str = "sluice-provider-";

/// `cargo xtask par` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ParArgs {
    /// Package debug binaries instead of release ones (quicker to build, larger).
    #[arg(long)]
    pub debug: bool,
    /// Where the archives go (default: `<cargo target dir>/par`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The signing keys (default: `$SLUICE_KEYS_DIR`, else `$HOME/.sluice/keys`); missing keys are
    /// created there once and reused by every later build.
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
}

/// Which cargo profile the provider binaries come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `cargo build` (target/debug).
    Debug,
    /// `cargo build --release` (target/release).
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// A provider package of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPackage {
    /// The cargo package, also the provider's name in its claims and the archive's file stem.
    pub name: String,
    /// The package version, written into the claims.
    pub version: String,
}

/// The workspace as `cargo metadata` describes it.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Where cargo puts build output (honours `CARGO_TARGET_DIR`).
    pub target_dir: PathBuf,
    /// Every provider package, sorted by name.
    pub providers: Vec<ProviderPackage>,
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    workspace_members: Vec<String>,
    target_directory: PathBuf,
}

#[derive(Deserialize)]
struct MetaPackage {
    id: String,
    name: String,
    version: String,
    targets: Vec<MetaTarget>,
}

#[derive(Deserialize)]
struct MetaTarget {
    kind: Vec<String>,
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

impl Workspace {
    /// Reads the workspace around the current directory with `cargo metadata`.
    pub fn discover() -> anyhow::Result<Self> {
        let output = cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .context("failed to run `cargo metadata`")?;
        if !output.status.success() {
            bail!("`cargo metadata` failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let metadata: Metadata =
            serde_json::from_slice(&output.stdout).context("unexpected `cargo metadata` output")?;
        let mut providers: Vec<_> = metadata
            .packages
            .into_iter()
            .filter(|p| metadata.workspace_members.contains(&p.id))
            .filter(|p| p.name.starts_with(PROVIDER_PREFIX))
            .filter(|p| p.targets.iter().any(|t| t.kind.iter().any(|k| k == "bin")))
            .map(|p| ProviderPackage {
                name: p.name,
                version: p.version,
            })
            .collect();
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            target_dir: metadata.target_directory,
            providers,
        })
    }

    /// Where a provider's binary lands for `profile`.
    #[must_use]
    pub fn binary(&self, provider: &ProviderPackage, profile: Profile) -> PathBuf {
        self.target_dir.join(profile.dir()).join(&provider.name)
    }

    /// The default directory for archives: `<target dir>/par`.
    #[must_use]
    pub fn par_dir(&self) -> PathBuf {
        self.target_dir.join("par")
    }

    /// Builds every provider binary with cargo (one invocation, so cargo shares the work).
    pub fn build(&self, profile: Profile) -> anyhow::Result<()> {
        let mut command = cargo();
        command.args(["build", "--locked", "--bins"]);
        if profile == Profile::Release {
            command.arg("--release");
        }
        for provider in &self.providers {
            command.args(["-p", &provider.name]);
        }
        let status = command.status().context("failed to run `cargo build`")?;
        if !status.success() {
            bail!("`cargo build` of the providers failed ({status})");
        }
        Ok(())
    }
}

/// The archive path of `provider` in `out_dir`.
#[must_use]
pub fn archive_path(out_dir: &Path, provider: &str) -> PathBuf {
    out_dir.join(format!("{provider}.par.gz"))
}

/// The target name the host looks up in an archive for this machine, e.g. `x86_64-linux`.
#[must_use]
pub fn host_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Strips `binary` (symbols and debug information) into `dir` and returns the stripped copy.
fn stripped(binary: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join(format!(
        "{}.stripped",
        binary
            .file_name()
            .context("binary path has no file name")?
            .to_string_lossy()
    ));
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .status()
        .context("failed to run `strip` (binutils)")?;
    if !status.success() {
        bail!("`strip {}` failed ({status})", binary.display());
    }
    Ok(out)
}

/// A packaged provider: its archive and the identity it is signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packaged {
    /// The provider's name.
    pub provider: String,
    /// The archive, `<out_dir>/<provider>.par.gz`.
    pub path: PathBuf,
    /// The provider's service public key: the claims' subject.
    pub subject: String,
    /// The issuer's (account) public key: the claims' issuer.
    pub issuer: String,
}

/// Packages one provider binary (stripped first) as `<out_dir>/<name>.par.gz`, signed by the
/// issuer key and the provider's service key from `keys`.
pub async fn package(
    binary: &Path,
    provider: &ProviderPackage,
    out_dir: &Path,
    keys: &Keys,
) -> anyhow::Result<Packaged> {
    sign_and_package(
        binary,
        provider,
        out_dir,
        &keys.issuer()?,
        &keys.service(&provider.name)?,
    )
    .await
}

async fn sign_and_package(
    binary: &Path,
    provider: &ProviderPackage,
    out_dir: &Path,
    issuer: &KeyPair,
    service: &KeyPair,
) -> anyhow::Result<Packaged> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("failed to create {}", out_dir.display()))?;
    let stripped = stripped(binary, out_dir)?;
    let bytes = std::fs::read(&stripped).with_context(|| format!("failed to read {}", stripped.display()));
    std::fs::remove_file(&stripped).ok();
    let bytes = bytes?;
    let mut archive = ProviderArchive::new(&provider.name, VENDOR, Some(0), Some(provider.version.clone()));
    archive
        .add_library(&host_target(), &bytes)
        .map_err(|err| anyhow::anyhow!("failed to add {} to its archive: {err}", binary.display()))?;
    let path = archive_path(out_dir, &provider.name);
    archive
        .write(&path, issuer, service, true)
        .await
        .map_err(|err| anyhow::anyhow!("failed to write {}: {err}", path.display()))?;
    Ok(Packaged {
        provider: provider.name.clone(),
        path,
        subject: service.public_key(),
        issuer: issuer.public_key(),
    })
}

/// Writes a copy of the provider archive `from` to `to`, signed with `issuer` and `service`: the
/// same binaries, name, vendor and version, another subject (a pipeline's own identity for the
/// provider, see [`Keys::pipeline_service`]). A copy already at `to` with the same signers and the
/// same binaries is kept as it is; a new one replaces it whole (written beside it, then renamed),
/// so a host reading `to` never sees half an archive.
pub async fn resign(from: &Path, to: &Path, issuer: &KeyPair, service: &KeyPair) -> anyhow::Result<Packaged> {
    let load = |path: &Path| {
        let path = path.to_path_buf();
        async move {
            ProviderArchive::try_load_file(&path)
                .await
                .map_err(|err| anyhow::anyhow!("failed to load provider archive {}: {err}", path.display()))
        }
    };
    let mut archive = load(from).await?;
    let claims = archive
        .claims()
        .with_context(|| format!("{} has no claims", from.display()))?;
    let packaged = Packaged {
        provider: claims.name(),
        path: to.to_path_buf(),
        subject: service.public_key(),
        issuer: issuer.public_key(),
    };
    let hashes = claims.metadata.as_ref().map(|m| &m.target_hashes);
    if let Ok(existing) = load(to).await {
        if let Some(held) = existing.claims() {
            if held.subject == packaged.subject
                && held.issuer == packaged.issuer
                && held.metadata.as_ref().map(|m| &m.target_hashes) == hashes
            {
                return Ok(packaged);
            }
        }
    }
    let dir = to.parent().context("an archive path has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    // `provider-archive` writes the archive (claims, then binaries) as a plain tar, compressed
    // here at a fast level: at its own (best) level a copy of a debug build takes ten times as
    // long for a 12% smaller file. The host reads either.
    let tar = to.with_extension(format!("{}.tmp", std::process::id()));
    let gz = to.with_extension(format!("{}.tmp.gz", std::process::id()));
    let written = async {
        archive
            .write(&tar, issuer, service, false)
            .await
            .map_err(|err| anyhow::anyhow!("failed to write {}: {err}", tar.display()))?;
        let (from_tar, to_gz) = (tar.clone(), gz.clone());
        tokio::task::spawn_blocking(move || gzip(&from_tar, &to_gz)).await??;
        std::fs::rename(&gz, to).with_context(|| format!("failed to write {}", to.display()))
    }
    .await;
    std::fs::remove_file(&tar).ok();
    if written.is_err() {
        std::fs::remove_file(&gz).ok();
    }
    written.map(|()| packaged)
}

/// Compresses the file `from` into `to` with gzip at a fast level.
fn gzip(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut input = std::fs::File::open(from).with_context(|| format!("failed to read {}", from.display()))?;
    let output = std::fs::File::create(to).with_context(|| format!("failed to create {}", to.display()))?;
    let mut encoder = flate2::write::GzEncoder::new(std::io::BufWriter::new(output), flate2::Compression::fast());
    std::io::copy(&mut input, &mut encoder).with_context(|| format!("failed to write {}", to.display()))?;
    let file = encoder
        .finish()?
        .into_inner()
        .map_err(|err| anyhow::anyhow!("failed to write {}: {}", to.display(), err.error()))?;
    file.sync_all()?;
    Ok(())
}

/// Packages every provider's already-built `profile` binary into `out_dir`, in parallel, signed
/// with `keys` (read, or created once, before any archive is written); sorted by provider.
pub async fn package_all(
    workspace: &Workspace,
    profile: Profile,
    out_dir: &Path,
    keys: &Keys,
) -> anyhow::Result<Vec<Packaged>> {
    let issuer = std::sync::Arc::new(keys.issuer()?);
    let mut tasks = tokio::task::JoinSet::new();
    for provider in workspace.providers.clone() {
        let binary = workspace.binary(&provider, profile);
        let out_dir = out_dir.to_path_buf();
        let issuer = issuer.clone();
        let service = keys.service(&provider.name)?;
        tasks.spawn(async move { sign_and_package(&binary, &provider, &out_dir, &issuer, &service).await });
    }
    let mut packaged = Vec::new();
    while let Some(result) = tasks.join_next().await {
        packaged.push(result??);
    }
    packaged.sort_by(|a, b| a.provider.cmp(&b.provider));
    Ok(packaged)
}

/// `cargo xtask par`: builds and packages every provider, then lists the archives.
pub async fn run(args: ParArgs) -> anyhow::Result<()> {
    let workspace = Workspace::discover()?;
    if workspace.providers.is_empty() {
        bail!("no `{PROVIDER_PREFIX}*` package with a binary in this workspace");
    }
    let profile = if args.debug { Profile::Debug } else { Profile::Release };
    // The keys first (read, or created), so a bad keys directory is said before a long build.
    let keys = Keys::open(args.keys_dir.map_or_else(Keys::default_dir, Ok)?)?;
    keys.issuer()?;
    for provider in &workspace.providers {
        keys.service(&provider.name)?;
    }
    workspace.build(profile)?;
    let out = args.out.unwrap_or_else(|| workspace.par_dir());
    let packaged = package_all(&workspace, profile, &out, &keys).await?;
    println!("signing keys: {}", keys.dir().display());
    for archive in &packaged {
        let size = std::fs::metadata(&archive.path)?.len();
        println!(
            "{}  {:.1} MiB\n  provider {}  subject {}  issuer {}",
            archive.path.display(),
            size as f64 / (1024.0 * 1024.0),
            archive.provider,
            archive.subject,
            archive.issuer
        );
    }
    Ok(())
}
