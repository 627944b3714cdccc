//! `sluice status [pipeline.yaml]`: a pipeline's state in wadm (status, deployed version, stored
//! versions) and each link's counters and refusals as its providers report them; without a spec,
//! every application wadm holds on `--lattice`. `--json` for scripts.

use std::path::PathBuf;

use serde_json::json;
use sluice_deploy::manifest::Ids;
use sluice_deploy::progress::Progress;
use sluice_deploy::spec::PipelineSpec;
use sluice_deploy::wadm::WadmClient;

use super::lattice::{runtime, LatticeUrl};

/// `sluice status` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline spec; without it, every application on `--lattice` is listed.
    spec: Option<PathBuf>,
    /// The lattice to list (without a spec).
    #[arg(long, default_value = "default", conflicts_with = "spec")]
    lattice: String,
    #[command(flatten)]
    url: LatticeUrl,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Prints the status.
pub fn run(args: Args) -> anyhow::Result<()> {
    runtime()?.block_on(status(args))
}

async fn status(args: Args) -> anyhow::Result<()> {
    let nats = args.url.connect().await?;
    let Some(path) = &args.spec else {
        return list(&WadmClient::new(nats, &args.lattice), &args.lattice, args.json).await;
    };
    let spec = PipelineSpec::from_file(path)?;
    let wadm = WadmClient::new(nats.clone(), &spec.lattice);
    let (status, versions) = tokio::try_join!(wadm.status(&spec.name), wadm.versions(&spec.name))?;
    let deployed = versions.iter().find(|v| v.deployed).map(|v| v.version.clone());
    let progress = match &status {
        Some(_) => Progress::fetch(&nats, &spec.lattice, &Ids::of(&spec)).await,
        None => Progress::default(),
    };
    if args.json {
        let (state, message) = status.map_or((None, String::new()), |(t, m)| (Some(t), m));
        let report = json!({
            "name": spec.name,
            "lattice": spec.lattice,
            "status": state,
            "message": message,
            "deployed_version": deployed,
            "versions": versions.iter().map(|v| &v.version).collect::<Vec<_>>(),
            "links": progress,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let Some((state, message)) = status else {
        println!("`{}` is not known on lattice `{}`", spec.name, spec.lattice);
        return Ok(());
    };
    println!(
        "`{}` on lattice `{}`: {state:?}{}",
        spec.name,
        spec.lattice,
        if message.is_empty() {
            String::new()
        } else {
            format!(" ({message})")
        }
    );
    println!(
        "  version: {} ({} stored)",
        deployed.as_deref().unwrap_or("none deployed"),
        versions.len()
    );
    println!("  links: {progress}");
    Ok(())
}

async fn list(wadm: &WadmClient, lattice: &str, json: bool) -> anyhow::Result<()> {
    let models = wadm.list().await?;
    if json {
        let list: Vec<_> = models
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "status": m.detailed_status.info.status_type,
                    "message": m.detailed_status.info.message,
                    "deployed_version": m.deployed_version,
                    "latest_version": m.version,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if models.is_empty() {
        println!("no applications on lattice `{lattice}`");
    }
    for m in models {
        println!(
            "{}\t{:?}\t{}",
            m.name,
            m.detailed_status.info.status_type,
            m.deployed_version.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
