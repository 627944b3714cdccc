//! `sluice deploy pipeline.yaml`: render the spec (one step, or several joined by JetStream
//! hops), store it in wadm as a new version when it changed, deploy that version on the spec's
//! lattice, and wait until every link is live at its provider. Deploying the same spec again changes nothing; a changed spec (another sink,
//! another bucket) becomes the next version, and links the host holds with the old config are
//! replaced.

use std::path::PathBuf;
use std::time::Duration;

use sluice_deploy::archive::pipeline_dir;
use sluice_deploy::dag::{AnySpec, DagDeployment, DagImages};
use sluice_deploy::manifest::{ExpectedLink, Images};
use sluice_deploy::pipeline::Deployment;
use sluice_deploy::wadm::Stored;

use super::lattice::{runtime, LatticeUrl};

/// `sluice deploy` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline spec.
    spec: PathBuf,
    #[command(flatten)]
    lattice: LatticeUrl,
    /// The provider archives on this machine, for a lattice whose hosts run here
    /// (`cargo xtask par` writes them to `<target dir>/par`).
    #[arg(long, conflicts_with = "artifacts")]
    par_dir: Option<PathBuf>,
    /// Where the lattice's hosts fetch providers and the step instead: a directory or `file://`
    /// URL on the hosts, or an OCI repository prefix (as `sluice render --artifacts`).
    #[arg(long)]
    artifacts: Option<String>,
    #[command(flatten)]
    keys: super::sign::KeysDir,
    /// How long to wait for the links to be live at their providers (`0s`: do not wait).
    #[arg(long, default_value = "120s", value_parser = sluice_provider_core::config::parse_duration)]
    wait: Duration,
}

/// Deploys the spec.
pub fn run(args: Args) -> anyhow::Result<()> {
    runtime()?.block_on(deploy(args))
}

async fn deploy(args: Args) -> anyhow::Result<()> {
    let spec = AnySpec::from_file(&args.spec)?;
    let nats = args.lattice.connect().await?;
    let par_dir = match &args.artifacts {
        Some(_) => None,
        None => {
            let par_dir = args.par_dir.clone().unwrap_or_else(super::run::default_par_dir);
            // The pipeline's own copies of the archives: its providers' own subjects.
            super::sign::sign(&spec, &par_dir, &args.keys.open()?, &mut std::io::stdout()).await?;
            Some(pipeline_dir(&par_dir, &spec))
        }
    };
    let spec_dir = args.spec.parent().map_or_else(|| PathBuf::from("."), PathBuf::from);
    match &spec {
        AnySpec::Single(spec) => {
            let deployment = match (&args.artifacts, &par_dir) {
                (Some(base), _) => Deployment::start_with(&nats, spec, &Images::under(base, spec)).await?,
                (None, Some(dir)) => Deployment::start(&nats, spec, dir, &spec_dir).await?,
                (None, None) => unreachable!("signed above"),
            };
            deployed(
                spec.name.as_str(),
                &spec.lattice,
                deployment.version(),
                deployment.stored(),
                deployment.replaced_links(),
            );
            if !args.wait.is_zero() {
                let progress = deployment.wait_linked(args.wait).await?;
                println!("links live: {progress}");
            }
        }
        AnySpec::Dag(spec) => {
            let deployment = match (&args.artifacts, &par_dir) {
                (Some(base), _) => DagDeployment::start_with(&nats, spec, &DagImages::under(base, spec)).await?,
                (None, Some(dir)) => DagDeployment::start(&nats, spec, dir, &spec_dir).await?,
                (None, None) => unreachable!("signed above"),
            };
            deployed(
                spec.name.as_str(),
                &spec.lattice,
                deployment.version(),
                deployment.stored(),
                deployment.replaced_links(),
            );
            if !args.wait.is_zero() {
                let progress = deployment.wait_linked(args.wait).await?;
                print!("links live:\n{progress}");
            }
        }
    }
    Ok(())
}

/// Prints what a deploy did: the version, whether wadm held it already, and the links replaced.
fn deployed(name: &str, lattice: &str, version: &str, stored: Stored, replaced: &[ExpectedLink]) {
    let what = match stored {
        Stored::First => "first version",
        Stored::New => "new version",
        Stored::Held => "a version stored before",
        Stored::Deployed => "unchanged: this version was deployed already",
    };
    println!("deployed `{name}` version {version} on lattice `{lattice}` ({what})");
    for link in replaced {
        println!(
            "replaced link {} -> {} (held with an earlier version's config)",
            link.source_id, link.target
        );
    }
}
