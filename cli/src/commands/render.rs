//! `sluice render pipeline.yaml`: the spec (one step, or several joined by JetStream hops) as a
//! wadm manifest, on stdout or in a file.

use std::path::PathBuf;

use anyhow::Context as _;
use sluice_deploy::dag::{render_dag, AnySpec, DagImages};
use sluice_deploy::manifest::{render, Images, DEFAULT_ARTIFACTS};

/// `sluice render` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline spec.
    spec: PathBuf,
    /// Where the host fetches providers and the step: a directory or `file://` URL holding the
    /// `.par.gz` archives and the step file, or an OCI repository prefix.
    #[arg(long, default_value = DEFAULT_ARTIFACTS)]
    artifacts: String,
    /// Write the manifest here instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Renders the spec.
pub fn run(args: Args) -> anyhow::Result<()> {
    let yaml = match AnySpec::from_file(&args.spec)? {
        AnySpec::Single(spec) => render(&spec, &Images::under(&args.artifacts, &spec)).to_yaml(),
        AnySpec::Dag(spec) => render_dag(&spec, &DagImages::under(&args.artifacts, &spec)).to_yaml(),
    };
    match args.output {
        Some(path) => std::fs::write(&path, yaml).with_context(|| format!("failed to write {}", path.display())),
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}
