//! `sluice status [pipeline.yaml]`: a pipeline's state in wadm (status, deployed version, stored
//! versions) and each link's counters and refusals as its providers report them (a multi-step
//! pipeline's every link, and each hop's stream and per-consumer backlog from JetStream); without a spec,
//! every application wadm holds on `--lattice`. `--json` for scripts.

use std::path::PathBuf;

use serde_json::json;
use sluice_deploy::dag::{progress_of, AnySpec};
use sluice_deploy::manifest::Ids;
use sluice_deploy::progress::{DagProgress, Progress};
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
    let spec = AnySpec::from_file(path)?;
    let (name, lattice) = (spec.name(), spec.lattice());
    let wadm = WadmClient::new(nats.clone(), lattice);
    let (status, versions) = tokio::try_join!(wadm.status(name), wadm.versions(name))?;
    let deployed = versions.iter().find(|v| v.deployed).map(|v| v.version.clone());
    // Each link's counters (and a multi-step pipeline's hop backlogs), once wadm knows it.
    let progress = match (&status, &spec) {
        (None, _) => None,
        (Some(_), AnySpec::Single(single)) => Some(Counters::Single(Box::new(
            Progress::fetch(&nats, lattice, &Ids::of(single)).await,
        ))),
        (Some(_), AnySpec::Dag(dag)) => Some(Counters::Dag(progress_of(&nats, dag).await)),
    };
    if args.json {
        let (state, message) = status.map_or((None, String::new()), |(t, m)| (Some(t), m));
        let mut report = json!({
            "name": name,
            "lattice": lattice,
            "status": state,
            "message": message,
            "deployed_version": deployed,
            "versions": versions.iter().map(|v| &v.version).collect::<Vec<_>>(),
        });
        match progress {
            Some(Counters::Single(p)) => report["links"] = serde_json::to_value(p)?,
            Some(Counters::Dag(p)) => {
                report["links"] = serde_json::to_value(&p.links)?;
                report["hops"] = serde_json::to_value(&p.hops)?;
                report["refused"] = serde_json::to_value(&p.refused)?;
            }
            None if matches!(spec, AnySpec::Single(_)) => report["links"] = serde_json::to_value(Progress::default())?,
            None => {
                report["links"] = json!([]);
                report["hops"] = json!([]);
                report["refused"] = json!([]);
            }
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let Some((state, message)) = status else {
        println!("`{name}` is not known on lattice `{lattice}`");
        return Ok(());
    };
    println!(
        "`{name}` on lattice `{lattice}`: {state:?}{}",
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
    match progress {
        Some(Counters::Single(p)) => println!("  links: {p}"),
        Some(Counters::Dag(p)) => {
            println!("  links and hops:");
            for line in p.to_string().lines() {
                println!("    {line}");
            }
        }
        None => {}
    }
    Ok(())
}

/// A pipeline's counters: one source and one sink link, or every link and hop of a multi-step one.
enum Counters {
    Single(Box<Progress>),
    Dag(DagProgress),
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
