//! `sluice`: compose pipeline steps and scaffold customer logic. Each subcommand lives in its own
//! module; this file only parses and dispatches.

mod compose;
mod new;

use std::process::ExitCode;

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
    /// Compose trusted in + customer logic + trusted out into one step component.
    Compose(compose::Args),
    /// Create a project from a template.
    #[command(subcommand)]
    New(new::What),
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Compose(args) => compose::run(args),
        Command::New(what) => new::run(what),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
