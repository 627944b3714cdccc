//! `sluice undeploy pipeline.yaml`: undeploy the pipeline (one step or several) through wadm on
//! its lattice (its links are deleted, so sources drain and acknowledge, and its providers and
//! steps stop; a multi-step pipeline's hop streams stay, with what is not consumed yet), and wait
//! until wadm reports it undeployed. Its stored versions stay for a later deploy unless
//! `--delete`.

use std::path::PathBuf;

use anyhow::Context as _;
use sluice_deploy::dag::AnySpec;
use sluice_deploy::pipeline::DEPLOY_TIMEOUT;
use sluice_deploy::wadm::WadmClient;
use wadm_types::api::StatusType;

use super::lattice::{runtime, LatticeUrl};

/// `sluice undeploy` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline spec (its name and lattice are used).
    spec: PathBuf,
    #[command(flatten)]
    lattice: LatticeUrl,
    /// Also delete every stored version.
    #[arg(long)]
    delete: bool,
}

/// Undeploys the pipeline.
pub fn run(args: Args) -> anyhow::Result<()> {
    runtime()?.block_on(undeploy(args))
}

async fn undeploy(args: Args) -> anyhow::Result<()> {
    let spec = AnySpec::from_file(&args.spec)?;
    let (name, lattice) = (spec.name(), spec.lattice());
    let wadm = WadmClient::new(args.lattice.connect().await?, lattice);
    anyhow::ensure!(
        wadm.status(name).await?.is_some(),
        "`{name}` is not deployed on lattice `{lattice}`"
    );
    wadm.undeploy(name).await?;
    wadm.wait_for(name, StatusType::Undeployed, DEPLOY_TIMEOUT)
        .await
        .with_context(|| format!("`{name}` did not undeploy"))?;
    println!("undeployed `{name}` on lattice `{lattice}`");
    if args.delete {
        wadm.delete(name).await?;
        println!("deleted every stored version of `{name}`");
    }
    Ok(())
}
