//! `sluice`: compose pipeline steps, scaffold and test customer logic, render pipeline specs as wadm
//! manifests, run them locally, and deploy, watch and undeploy them on a lattice. Each subcommand
//! lives in its own module under `commands/`; this file only parses and dispatches.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{compose, deploy, dev, new, render, run, schema, sign, status, tap, test, undeploy};

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
    /// Run a cases file (input records, expected outputs and rejects) against logic or a step.
    Test(test::Args),
    /// Render a pipeline spec as a wadm manifest.
    Render(render::Args),
    /// Sign the pipeline's own copies of its provider archives; print the subjects to map its secrets to.
    Sign(sign::Args),
    /// Run a pipeline on a local lattice (embedded wasmCloud host and wadm) until Ctrl-C.
    Run(run::Args),
    /// Run a pipeline locally like `run`, rebuilding the logic and replacing the step in place when its sources change.
    Dev(dev::Args),
    /// Deploy a pipeline through wadm on its lattice (a new version when the spec changed).
    Deploy(deploy::Args),
    /// Undeploy a pipeline through wadm.
    Undeploy(undeploy::Args),
    /// Show a pipeline's status and link counters, or list a lattice's applications.
    Status(status::Args),
    /// Print a sample of the records flowing through a running pipeline (operator rights needed).
    Tap(tap::Args),
    /// Print the JSON Schema of a provider's link config.
    Schema(schema::Args),
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Compose(args) => compose::run(args),
        Command::New(what) => new::run(what),
        Command::Test(args) => test::run(args),
        Command::Render(args) => render::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Run(args) => run::run(args),
        Command::Dev(args) => dev::run(args),
        Command::Deploy(args) => deploy::run(args),
        Command::Undeploy(args) => undeploy::run(args),
        Command::Status(args) => status::run(args),
        Command::Tap(args) => tap::run(args),
        Command::Schema(args) => schema::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
