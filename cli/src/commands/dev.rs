//! `sluice dev pipeline.yaml`: `sluice run` that watches the logic's sources. On every change
//! (after a quiet debounce interval) it runs the logic's build command, composes the result into a
//! step, and replaces the running step in place: a new manifest version through wadm whose step
//! is a new file (named by its digest), the host updating the component without stopping it. The
//! source acknowledges a batch only once the step has delivered it, so no record is lost across a
//! swap (a batch in flight in the old step may come again). A failed build or compose is printed
//! and the running step stays.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_cli::project::Project;
use sluice_cli::watch::Watcher;
use sluice_compose::compose::{compose, ComposeOptions};
use sluice_deploy::dag::AnySpec;
use sluice_deploy::pipeline::{Deployment, DEPLOY_TIMEOUT};
use sluice_deploy::spec::PipelineSpec;

use super::run::Session;

/// Where `sluice dev` writes each composed step version, below the spec's directory.
const DEV_DIR: &str = ".sluice-dev";

/// How often the sources are looked at.
const POLL: Duration = Duration::from_millis(250);

/// `sluice dev` options: those of `sluice run`, the logic project, and `sluice compose`'s flags.
#[derive(Debug, clap::Args)]
#[group(id = "dev_args")]
pub struct Args {
    #[command(flatten)]
    run: super::run::Args,
    /// The logic project (default: the spec's directory).
    #[arg(long)]
    logic: Option<PathBuf>,
    /// The build command, run with `sh -c` in the logic directory (default: the template's
    /// standard route: `cargo build --release --target wasm32-wasip2`, `componentize-py ...`,
    /// `componentize-js ...`).
    #[arg(long)]
    build: Option<String>,
    /// The built logic, relative to the logic directory (default: `logic.wasm`; for Rust the newest
    /// `target/<target>/release/<crate>.wasm`).
    #[arg(long)]
    artifact: Option<PathBuf>,
    /// A file or directory to watch, relative to the logic directory (repeatable; default: the
    /// logic directory, without `target/`, `node_modules/`, `.git/` and `.wasm` files).
    #[arg(long = "watch", value_name = "PATH")]
    watch: Vec<PathBuf>,
    /// Rebuild once the sources have been quiet this long.
    #[arg(long, default_value = "500ms", value_parser = sluice_provider_core::config::parse_duration)]
    debounce: Duration,
    #[command(flatten)]
    compose: super::compose::Options,
}

/// Runs the pipeline, rebuilding and replacing its step on every change, until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::lattice::runtime()?.block_on(dev(args))
}

async fn dev(args: Args) -> anyhow::Result<()> {
    let spec_path = args.run.spec.clone();
    let spec_dir = spec_path.parent().map_or_else(|| PathBuf::from("."), PathBuf::from);
    let logic_dir = args.logic.clone().unwrap_or_else(|| spec_dir.clone());
    let project = Project::open(&logic_dir, args.build.clone(), args.artifact.clone())?;
    let options = args.compose.compose_options();
    let watched: Vec<PathBuf> = if args.watch.is_empty() {
        project.default_watch()
    } else {
        args.watch.iter().map(|p| logic_dir.join(p)).collect()
    };
    anyhow::ensure!(
        matches!(AnySpec::from_file(&spec_path)?, AnySpec::Single(_)),
        "sluice dev runs single-step specs (`step:`); a multi-step spec runs with `sluice run`"
    );

    // The first step, before anything starts: a logic that does not build stops here.
    let mut watcher = Watcher::new(watched);
    eprintln!("building {} with `{}`", logic_dir.display(), project.build);
    let first = rebuild(&project, &options)?;
    let session = Session::open(&args.run).await?;
    let result = match &session.spec {
        AnySpec::Single(spec) => {
            let mut dev = Dev {
                session: &session,
                spec: spec.clone(),
                project,
                options,
                step_dir: spec_dir.join(DEV_DIR),
                version: 0,
            };
            dev.serve(first, &mut watcher, args.debounce, args.run.duration).await
        }
        AnySpec::Dag(_) => unreachable!("checked above"),
    };
    let _ = std::fs::remove_dir_all(spec_dir.join(DEV_DIR));
    session.close().await?;
    result
}

/// A composed step ready to deploy.
struct Step {
    bytes: Vec<u8>,
    digest: String,
    built_in: Duration,
}

/// Builds the logic and composes it into a step.
fn rebuild(project: &Project, options: &ComposeOptions) -> anyhow::Result<Step> {
    let built = project.build()?;
    let composed = compose(&built.logic, options).with_context(|| format!("composing {}", built.path.display()))?;
    for import in &composed.stubbed {
        eprintln!("stubbed (traps when called): {import}");
    }
    Ok(Step {
        digest: sluice_deploy::digest::short(&composed.bytes),
        bytes: composed.bytes,
        built_in: built.took,
    })
}

struct Dev<'a> {
    session: &'a Session,
    spec: PipelineSpec,
    project: Project,
    options: ComposeOptions,
    step_dir: PathBuf,
    version: usize,
}

impl Dev<'_> {
    /// Deploys `first`, then replaces the step on every change until stopped.
    async fn serve(
        &mut self,
        first: Step,
        watcher: &mut Watcher,
        debounce: Duration,
        duration: Option<Duration>,
    ) -> anyhow::Result<()> {
        eprintln!("deploying `{}` through wadm", self.spec.name);
        let mut deployment = self.deploy(&first).await?;
        let mut current = first.digest;
        eprintln!(
            "deployed; watching {} file(s) under {}; Ctrl-C to undeploy and stop",
            watcher.files(),
            watcher
                .paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let stop = super::run::stopped(duration);
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(POLL);
        let mut shown = Instant::now();
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = tick.tick() => {}
            }
            if shown.elapsed() >= Duration::from_secs(1) {
                shown = Instant::now();
                let progress = deployment.progress().await;
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\r\x1b[2K{}: {progress}", self.spec.name);
                let _ = out.flush();
            }
            if !watcher.poll() {
                continue;
            }
            watcher.settled(debounce).await;
            println!();
            eprintln!("change seen: rebuilding with `{}`", self.project.build);
            let project = self.project.clone();
            let options = self.options.clone();
            let step = match tokio::task::spawn_blocking(move || rebuild(&project, &options)).await? {
                Ok(step) => step,
                Err(error) => {
                    eprintln!("build failed; the running step stays:\n{error:#}");
                    continue;
                }
            };
            if step.digest == current {
                eprintln!(
                    "rebuilt in {:.1} s: the same step, nothing to replace",
                    step.built_in.as_secs_f64()
                );
                continue;
            }
            eprintln!("rebuilt in {:.1} s", step.built_in.as_secs_f64());
            let swap = Instant::now();
            match self.deploy(&step).await {
                Ok(next) => {
                    deployment = next;
                    current = step.digest;
                    eprintln!(
                        "step replaced in {:.1} s: version {} ({}, step {})",
                        swap.elapsed().as_secs_f64(),
                        self.version,
                        deployment.version(),
                        self.spec.step.component.display()
                    );
                    self.remove_older_steps();
                }
                Err(error) => eprintln!("replacing the step failed; the running step stays:\n{error:#}"),
            }
        }
        println!();
        let last = deployment.progress().await;
        eprintln!("undeploying `{}` (last: {last})", self.spec.name);
        deployment.undeploy().await
    }

    /// Writes `step` as `.sluice-dev/<stem>-<digest>.wasm`, deploys the spec pointing at it as a
    /// new version through wadm, and waits until the host runs it and the links are live.
    async fn deploy(&mut self, step: &Step) -> anyhow::Result<Deployment> {
        let original = self.original_component();
        let stem = original.file_stem().and_then(|s| s.to_str()).unwrap_or("step");
        let file = Path::new(DEV_DIR).join(format!("{stem}-{}.wasm", step.digest));
        let spec_dir = &self.session.spec_dir;
        std::fs::create_dir_all(spec_dir.join(DEV_DIR))?;
        std::fs::write(spec_dir.join(&file), &step.bytes)?;
        // The spec's own step file follows, so `sluice run` afterwards runs the same step.
        let own = spec_dir.join(&original);
        if let Some(parent) = own.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&own, &step.bytes).with_context(|| format!("writing {}", own.display()))?;
        let mut spec = self.spec.clone();
        spec.step.component = file;
        let deployment = Deployment::start(&self.session.nats, &spec, &self.session.par_dir, spec_dir).await?;
        let updated = deployment.update_step(DEPLOY_TIMEOUT).await?;
        if updated > 0 {
            eprintln!("host(s) told to update the step in place: {updated}");
        }
        deployment.wait_linked(DEPLOY_TIMEOUT).await?;
        self.version += 1;
        self.spec = spec;
        Ok(deployment)
    }

    /// The spec's own step file (what the spec given on the command line names).
    fn original_component(&self) -> PathBuf {
        match &self.session.spec {
            AnySpec::Single(spec) => spec.step.component.clone(),
            AnySpec::Dag(_) => unreachable!("single-step only"),
        }
    }

    /// Removes the step files of earlier versions (the host has the running one loaded).
    fn remove_older_steps(&self) {
        let current = self.session.spec_dir.join(&self.spec.step.component);
        if let Ok(entries) = std::fs::read_dir(&self.step_dir) {
            for entry in entries.flatten() {
                if entry.path() != current {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}
