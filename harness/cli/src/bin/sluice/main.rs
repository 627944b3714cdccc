//! `sluice`: Sluice's command line. Each subcommand lives in its own module; this file only
//! parses and dispatches.

mod render;
mod run;

use clap::{Parser, Subcommand};

/// Sluice: ETL pipelines on wasmCloud.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render a pipeline spec as a wadm manifest.
    Render(render::Args),
    /// Run a pipeline on a local lattice (embedded wasmCloud host and wadm) until Ctrl-C.
    Run(run::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Render(args) => render::run(args),
        Command::Run(args) => run::run(args),
    }
}
