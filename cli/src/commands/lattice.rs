//! The lattice a command works on: the NATS URL its hosts and wadm use.

use anyhow::Context as _;

/// Where a local nats-server is looked for (and `sluice run` starts one).
pub const LOCAL_NATS: &str = "nats://127.0.0.1:4222";

/// `--lattice-url` (and the NATS credentials to use there), shared by the commands that talk to a
/// running lattice.
#[derive(Debug, clap::Args)]
pub struct LatticeUrl {
    /// The NATS URL of the lattice's hosts and wadm; `nats://user:password@host:port` logs in as
    /// that NATS user.
    #[arg(long = "lattice-url", env = "SLUICE_LATTICE_URL", default_value = LOCAL_NATS)]
    pub url: String,
    /// A NATS credentials file (JWT and seed) to log in to the lattice with.
    #[arg(long = "lattice-creds", env = "SLUICE_LATTICE_CREDS")]
    pub creds: Option<std::path::PathBuf>,
}

impl LatticeUrl {
    /// Connects to the lattice's NATS server, as the user the URL or the credentials file names.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        Ok(self.connect_watching().await?.0)
    }

    /// Like [`LatticeUrl::connect`], also returning the errors the server sends this client (a
    /// permissions violation when the user may not publish or subscribe a subject).
    pub async fn connect_watching(
        &self,
    ) -> anyhow::Result<(async_nats::Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
        let (errors, watch) = tokio::sync::mpsc::unbounded_channel();
        let addr: async_nats::ServerAddr = self
            .url
            .parse()
            .with_context(|| format!("`--lattice-url`: not a NATS URL: {}", self.shown()))?;
        // async-nats does not log in with the user and password of a URL by itself.
        let options = match (&self.creds, addr.username()) {
            (Some(path), _) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .with_context(|| format!("`--lattice-creds`: cannot read {}", path.display()))?,
            (None, Some(user)) => async_nats::ConnectOptions::with_user_and_password(
                user.to_string(),
                addr.password().unwrap_or_default().to_string(),
            ),
            (None, None) => async_nats::ConnectOptions::new(),
        };
        let client = options
            .event_callback(move |event| {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors.send(error.to_string());
                }
                std::future::ready(())
            })
            .connect(addr)
            .await
            .with_context(|| format!("failed to connect to the lattice at {}", self.shown()))?;
        Ok((client, watch))
    }

    /// The URL without its password, for messages.
    fn shown(&self) -> String {
        match self.url.split_once('@') {
            Some((userinfo, host)) => match userinfo.rsplit_once(':') {
                Some((user, _)) if !user.ends_with('/') => format!("{user}:***@{host}"),
                _ => self.url.clone(),
            },
            None => self.url.clone(),
        }
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
