//! `cargo xtask <task>` (the alias lives in `.cargo/config.toml`).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Sluice's build tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Builds every provider (stripped release binaries) and packages each as a `.par.gz`.
    Par(xtask::par::ParArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Par(args) => xtask::par::run(args).await,
    }
}
