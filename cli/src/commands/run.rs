//! `sluice run pipeline.yaml`: start (or reuse) a local nats-server with JetStream, an embedded
//! wasmCloud host and wadm, deploy the pipeline through wadm, show its counters on one line until
//! Ctrl-C or SIGTERM, then undeploy and stop everything, ending any process the host left behind.
//! A multi-step spec shows every link's counters and every hop's backlog instead, and its hops
//! default to the local lattice's JetStream. `--lattice-url` deploys to an existing lattice
//! (its hosts and wadm) instead.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use sluice_deploy::children;
use sluice_deploy::dag::{AnySpec, DagDeployment, DagSpec};
use sluice_deploy::local::LocalLattice;
use sluice_deploy::pipeline::Deployment;
use sluice_deploy::secrets::SecretEntry;
use sluice_deploy::spec::PipelineSpec;

use super::lattice::LOCAL_NATS;

/// `sluice run` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline spec.
    pub(super) spec: PathBuf,
    /// Deploy to an existing lattice: the NATS URL its hosts and wadm use
    /// (`nats://user:password@host:port` logs in as that NATS user).
    #[arg(long)]
    lattice_url: Option<String>,
    /// A NATS credentials file (JWT and seed) to log in to `--lattice-url` with.
    #[arg(long, requires = "lattice_url")]
    lattice_creds: Option<PathBuf>,
    /// The provider archives (`cargo xtask par` writes them to `<target dir>/par`).
    #[arg(long)]
    par_dir: Option<PathBuf>,
    /// A secret the local secrets backend serves to this pipeline only: `NAME=VALUE` (repeatable).
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    secrets: Vec<String>,
    #[command(flatten)]
    keys: super::sign::KeysDir,
    /// Stop after this long instead of waiting for Ctrl-C (e.g. `30s`).
    #[arg(long, value_parser = sluice_provider_core::config::parse_duration)]
    pub(super) duration: Option<Duration>,
}

/// What a run deploys to: the lattice (started here, or an existing one), the spec and where its
/// archives and step are. Shared by `sluice run` and `sluice dev`.
pub(super) struct Session {
    /// The lattice this command started, if it did not use an existing one.
    lattice: Option<LocalLattice>,
    /// A connection to the lattice's NATS.
    pub nats: async_nats::Client,
    /// The spec (hops defaulted to the local JetStream).
    pub spec: AnySpec,
    /// The provider archives (the pipeline's own signed copies for a single-step spec).
    pub par_dir: PathBuf,
    /// The directory the spec's paths are relative to.
    pub spec_dir: PathBuf,
}

/// `<target dir>/par`, where `cargo xtask par` writes the provider archives.
pub fn default_par_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("par")
}

/// Runs the pipeline until Ctrl-C (or `--duration`).
pub fn run(args: Args) -> anyhow::Result<()> {
    super::lattice::runtime()?.block_on(run_async(args))
}

async fn local_nats_answers() -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), async_nats::connect(LOCAL_NATS)).await,
        Ok(Ok(_))
    )
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    let session = Session::open(&args).await?;
    let app = session.spec.name().to_string();
    eprintln!("deploying `{app}` through wadm");
    let result = match &session.spec {
        AnySpec::Single(spec) => watch(&session.nats, spec, &session.par_dir, &session.spec_dir, args.duration).await,
        AnySpec::Dag(spec) => watch_dag(&session.nats, spec, &session.par_dir, &session.spec_dir, args.duration).await,
    };
    session.close().await?;
    result
}

impl Session {
    /// Reads the spec, signs the pipeline's copies of its archives, and starts the local lattice
    /// (a host on the spec's lattice, wadm, the secrets backend) or connects to `--lattice-url`.
    pub(super) async fn open(args: &Args) -> anyhow::Result<Self> {
        let mut spec = AnySpec::from_file(&args.spec)?;
        let (app, lattice_name, backend) = (
            spec.name().to_string(),
            spec.lattice().to_string(),
            spec.secret_backend().to_string(),
        );
        let spec_dir = args.spec.parent().map_or_else(|| PathBuf::from("."), PathBuf::from);
        let par_dir = args.par_dir.clone().unwrap_or_else(default_par_dir);
        // The pipeline's own copies of the archives (a multi-step pipeline's hop provider's too),
        // signed before anything starts.
        let mut signed = Vec::new();
        super::sign::sign(&spec, &par_dir, &args.keys.open()?, &mut signed).await?;
        eprint!("{}", String::from_utf8_lossy(&signed));
        let par_dir = sluice_deploy::archive::pipeline_dir(&par_dir, &spec);
        let secrets: HashMap<String, SecretEntry> = args
            .secrets
            .iter()
            .map(|s| {
                let (name, value) = s.split_once('=').context("--secret expects NAME=VALUE")?;
                Ok((
                    name.to_string(),
                    SecretEntry {
                        value: value.to_string(),
                        application: Some(app.clone()),
                    },
                ))
            })
            .collect::<anyhow::Result<_>>()?;

        let (lattice, nats) = match &args.lattice_url {
            Some(url) => {
                let nats = super::lattice::LatticeUrl {
                    url: url.clone(),
                    creds: args.lattice_creds.clone(),
                }
                .connect()
                .await?;
                (None, nats)
            }
            None => {
                let reuse = local_nats_answers().await.then_some(LOCAL_NATS);
                eprintln!(
                    "starting wadm and a wasmCloud host on lattice `{}` ({})",
                    lattice_name,
                    reuse.map_or("new nats-server", |_| "reusing nats-server at 127.0.0.1:4222")
                );
                let mut lattice = LocalLattice::start(reuse).await?;
                lattice.add_host(&lattice_name).await?;
                lattice.serve_secrets(&backend, secrets).await?;
                // Hops without a server of their own go through this lattice's JetStream.
                if let AnySpec::Dag(dag) = &mut spec {
                    dag.default_hops_url(lattice.nats_url());
                }
                let nats = lattice.nats().clone();
                (Some(lattice), nats)
            }
        };
        Ok(Self {
            lattice,
            nats,
            spec,
            par_dir,
            spec_dir,
        })
    }

    /// Stops what [`Session::open`] started (nothing for an existing lattice), ending any process
    /// the host left behind.
    pub(super) async fn close(self) -> anyhow::Result<()> {
        if let Some(lattice) = self.lattice {
            eprintln!("stopping the host, wadm and nats-server");
            let stopped = lattice.stop().await;
            // Whatever the host did not stop (a provider it restarted) ends with this command.
            let stray = tokio::task::spawn_blocking(|| children::end_all_but(&[], Duration::from_secs(5))).await?;
            if !stray.is_empty() {
                eprintln!("ended {} process(es) the host left running: {stray:?}", stray.len());
            }
            stopped?;
        }
        Ok(())
    }
}

/// Resolves at Ctrl-C (SIGINT) or SIGTERM.
pub(super) async fn interrupted() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Resolves after `duration`, or at Ctrl-C or SIGTERM without one.
pub(super) async fn stopped(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => interrupted().await,
    }
}

async fn watch(
    nats: &async_nats::Client,
    spec: &PipelineSpec,
    par_dir: &std::path::Path,
    spec_dir: &std::path::Path,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let deployment = Deployment::start(nats, spec, par_dir, spec_dir).await?;
    eprintln!("deployed; Ctrl-C to undeploy and stop");
    let stop = stopped(duration);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {
                let progress = deployment.progress().await;
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\r\x1b[2K{}: {progress}", spec.name);
                let _ = out.flush();
            }
        }
    }
    println!();
    let last = deployment.progress().await;
    eprintln!("undeploying `{}` (last: {last})", spec.name);
    deployment.undeploy().await
}

/// Runs a multi-step pipeline: every link's counters and every hop's backlog, redrawn each second.
async fn watch_dag(
    nats: &async_nats::Client,
    spec: &DagSpec,
    par_dir: &std::path::Path,
    spec_dir: &std::path::Path,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let deployment = DagDeployment::start(nats, spec, par_dir, spec_dir).await?;
    eprintln!("deployed; Ctrl-C to undeploy and stop");
    // Every link live at its provider (a link a provider missed is put again); the counts show
    // what is still missing otherwise.
    match deployment.wait_linked(sluice_deploy::pipeline::DEPLOY_TIMEOUT).await {
        Ok(_) => eprintln!("every link is live"),
        Err(err) => eprintln!("{err:#}"),
    }
    let stop = stopped(duration);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut drawn = 0;
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {
                let block = deployment.progress().await.to_string();
                let mut out = std::io::stdout().lock();
                // Back to the start of the previous block, then each line cleared and drawn again.
                if drawn > 0 {
                    let _ = write!(out, "\x1b[{drawn}F");
                }
                for line in block.lines() {
                    let _ = writeln!(out, "\x1b[2K{line}");
                }
                drawn = block.lines().count();
                let _ = out.flush();
            }
        }
    }
    let last = deployment.progress().await;
    eprintln!("undeploying `{}`; last counts:\n{last}", spec.name);
    deployment.undeploy().await
}
