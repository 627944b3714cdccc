//! `sluice test`: run a cases file against customer logic (composed here with `sluice compose`'s
//! flags) or a composed step, under the bounds a host operator sets.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use sluice_cli::cases::{self, Cases, RunLimits};
use sluice_compose::compose::compose;
use sluice_provider_core::config::{parse_duration, parse_size};

/// Arguments of `sluice test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cases file (YAML): input records and the records, rejects or retry expected of each.
    cases: PathBuf,
    /// The customer's logic, composed into a step as `sluice compose` would with the same flags.
    #[arg(long, required_unless_present = "step", conflicts_with = "step")]
    logic: Option<PathBuf>,
    #[command(flatten)]
    compose: super::compose::Options,
    /// A composed step (`sluice compose` output).
    #[arg(long)]
    step: Option<PathBuf>,
    /// Rewrite the cases file with what the step actually did.
    #[arg(long)]
    update: bool,
    /// How long one batch may run (the host's `--max-execution-time-ms`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    max_execution_time: Duration,
    /// The most one linear memory may grow to (the host's `--max-linear-memory-bytes`).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    max_memory: u64,
    /// Fuel per batch (roughly, Wasm instructions); not metered by default, like a host.
    #[arg(long)]
    fuel: Option<u64>,
}

/// Runs `sluice test`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let step = match (&args.logic, &args.step) {
        (Some(logic), _) => compose(&read(logic)?, &args.compose.compose_options())?.bytes,
        (None, Some(step)) => read(step)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let text = std::fs::read_to_string(&args.cases).with_context(|| format!("reading {}", args.cases.display()))?;
    let cases = Cases::parse(&text).with_context(|| format!("in {}", args.cases.display()))?;
    let limits = RunLimits {
        deadline: args.max_execution_time,
        max_memory: usize::try_from(args.max_memory).context("--max-memory is too large")?,
        fuel: args.fuel,
    };
    let results = cases::run(&step, &cases, limits)?;
    for result in &results {
        println!("{result}");
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    if args.update {
        std::fs::write(&args.cases, cases::updated(&results).to_yaml())
            .with_context(|| format!("writing {}", args.cases.display()))?;
        println!("updated {} with what the step did", args.cases.display());
        return Ok(());
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    if failed > 0 {
        anyhow::bail!("{failed} of {} cases failed", results.len());
    }
    Ok(())
}
