//! `sluice deploy pipeline.yaml`: render the spec, store it in wadm as a new version when it
//! changed, deploy that version on the spec's lattice, and wait until both links are live at
//! their providers. Deploying the same spec again changes nothing; a changed spec (another sink,
//! another bucket) becomes the next version, and links the host holds with the old config are
//! replaced.

use std::path::PathBuf;
use std::time::Duration;

use sluice_deploy::archive::pipeline_dir;
use sluice_deploy::manifest::Images;
use sluice_deploy::pipeline::Deployment;
use sluice_deploy::spec::PipelineSpec;
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
    let spec = PipelineSpec::from_file(&args.spec)?;
    let nats = args.lattice.connect().await?;
    let deployment = match &args.artifacts {
        Some(base) => Deployment::start_with(&nats, &spec, &Images::under(base, &spec)).await?,
        None => {
            let spec_dir = args.spec.parent().map_or_else(|| PathBuf::from("."), PathBuf::from);
            let par_dir = args.par_dir.clone().unwrap_or_else(super::run::default_par_dir);
            // The pipeline's own copies of the archives: its providers' own subjects.
            super::sign::sign(&spec, &par_dir, &args.keys.open()?, &mut std::io::stdout()).await?;
            Deployment::start(&nats, &spec, &pipeline_dir(&par_dir, &spec), &spec_dir).await?
        }
    };
    let what = match deployment.stored() {
        Stored::First => "first version",
        Stored::New => "new version",
        Stored::Held => "a version stored before",
        Stored::Deployed => "unchanged: this version was deployed already",
    };
    println!(
        "deployed `{}` version {} on lattice `{}` ({what})",
        spec.name,
        deployment.version(),
        spec.lattice
    );
    for link in deployment.replaced_links() {
        println!(
            "replaced link {} -> {} (held with an earlier version's config)",
            link.source_id, link.target
        );
    }
    if !args.wait.is_zero() {
        let progress = deployment.wait_linked(args.wait).await?;
        println!("links live: {progress}");
    }
    Ok(())
}
