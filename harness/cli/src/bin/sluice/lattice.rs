//! The lattice a command works on: the NATS URL its hosts and wadm use.

use anyhow::Context as _;

/// Where a local nats-server is looked for (and `sluice run` starts one).
pub const LOCAL_NATS: &str = "nats://127.0.0.1:4222";

/// `--lattice-url`, shared by the commands that talk to a running lattice.
#[derive(Debug, clap::Args)]
pub struct LatticeUrl {
    /// The NATS URL of the lattice's hosts and wadm.
    #[arg(long = "lattice-url", env = "SLUICE_LATTICE_URL", default_value = LOCAL_NATS)]
    pub url: String,
}

impl LatticeUrl {
    /// Connects to the lattice's NATS server.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::connect(self.url.as_str())
            .await
            .with_context(|| format!("failed to connect to the lattice at {}", self.url))
    }
}

/// A tokio runtime for one command, with `RUST_LOG` (default: errors only) on stderr.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    Ok(tokio::runtime::Runtime::new()?)
}
