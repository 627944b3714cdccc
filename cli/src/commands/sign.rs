//! `sluice sign pipeline.yaml`: the pipeline's own copies of its provider archives, each signed
//! with a service key of that pipeline (see `sluice_deploy::archive`), and the subjects an
//! operator maps the pipeline's secrets to. `sluice deploy` and `sluice run` sign the same way
//! before deploying local archives.

use std::path::{Path, PathBuf};

use sluice_deploy::archive::{sign_for_pipeline, Keys, OwnProviders, PipelineArchive};
use sluice_deploy::dag::AnySpec;

/// Where the signing keys are: the same directory `cargo xtask par` signs with.
#[derive(Debug, Clone, clap::Args)]
pub struct KeysDir {
    /// The signing keys (default: `$SLUICE_KEYS_DIR`, else `$HOME/.sluice/keys`); each
    /// pipeline's provider keys are kept in `pipelines/<lattice>/<pipeline>/` there.
    #[arg(long, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
}

impl KeysDir {
    /// Opens the keys directory.
    pub fn open(&self) -> anyhow::Result<Keys> {
        let dir = match &self.keys_dir {
            Some(dir) => dir.clone(),
            None => Keys::default_dir()?,
        };
        Ok(Keys::open(dir)?)
    }
}

/// `sluice sign` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline spec.
    spec: PathBuf,
    /// The provider archives (`cargo xtask par` writes them to `<target dir>/par`); the copies go
    /// to `pipelines/<lattice>/<pipeline>/` below it (copy that tree next to the archives on the
    /// hosts, or push its files, see `sluice render --artifacts`).
    #[arg(long)]
    par_dir: Option<PathBuf>,
    #[command(flatten)]
    keys: KeysDir,
}

/// Signs the spec's copies and prints their subjects.
pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = AnySpec::from_file(&args.spec)?;
    let par_dir = args.par_dir.clone().unwrap_or_else(super::run::default_par_dir);
    let keys = args.keys.open()?;
    super::lattice::runtime()?.block_on(sign(&spec, &par_dir, &keys, &mut std::io::stdout()))?;
    Ok(())
}

/// Writes the pipeline's copies (see `sluice_deploy::archive::sign_for_pipeline`) and prints, for
/// each, its path, subject and issuer and the `nats-kv` mapping that grants it the pipeline's
/// secrets, to `out`.
pub async fn sign(
    spec: &(impl OwnProviders + ?Sized),
    par_dir: &Path,
    keys: &Keys,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<Vec<PipelineArchive>> {
    let signed = sign_for_pipeline(spec, par_dir, keys).await?;
    writeln!(
        out,
        "pipeline `{}` on lattice `{}`: its own provider identities (keys in {})",
        spec.name(),
        spec.lattice(),
        keys.dir().display()
    )?;
    for copy in &signed {
        writeln!(out, "  {}", copy.path.display())?;
        writeln!(
            out,
            "    provider {}  subject {}  issuer {}",
            copy.provider, copy.subject, copy.issuer
        )?;
        match copy.add_mapping() {
            Some(command) => writeln!(out, "    grant its secrets: {command}")?,
            None => writeln!(out, "    reads no secrets")?,
        }
    }
    Ok(signed)
}
