//! `sluice tap pipeline.yaml [--at source|sink] [-n 20]`: prints a sample of the records flowing
//! through a running pipeline (origin, key, headers, timestamp, payload preview), like
//! `vector tap`. A multi-step pipeline is tapped at a step (`--at clean`: records delivered to
//! it), a step's hop (`--at hop:clean`: records it wrote) or a sink (`--at archive`).
//!
//! It asks the pipeline's source provider (`--at source`: records as delivered to the step) or
//! sink provider (`--at sink`: records as the step wrote them) (for several steps: the provider
//! feeding the step, the JetStream hop provider, or the sink's provider) on the tap subject
//! `sluice.{lattice}.{provider}.tap`; publishing it takes operator rights on the lattice's NATS
//! (README: "Tapping a running pipeline"). A link marked `sensitive` refuses the tap.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use sluice_deploy::dag::{AnySpec, DagIds};
use sluice_deploy::manifest::Ids;
use sluice_provider_core::link::Role;
use sluice_provider_core::tap::{TapEvent, TapRecord, TapRequest};
use sluice_provider_core::wasmcloud::tap_subject;

use super::lattice::{runtime, LatticeUrl};

/// How long the provider has to answer the tap request.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// `sluice tap` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline spec (its name, lattice and providers).
    spec: PathBuf,
    /// Where to tap. One step: `source` (records going into the step) or `sink` (coming out of
    /// it). Several steps: a step's name (records delivered to it; `source` is the first step),
    /// `hop:<step>` (records the step wrote to its hop), or a sink's name (records its relay
    /// wrote to it).
    #[arg(long, default_value = "source")]
    at: String,
    /// Records to print before stopping.
    #[arg(short = 'n', long = "records", default_value_t = 20)]
    n: usize,
    /// Records a second at most (the provider also caps it).
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Stop after this long however many records came.
    #[arg(long, default_value = "60s", value_parser = sluice_provider_core::config::parse_duration)]
    timeout: Duration,
    /// Payload bytes to show per record.
    #[arg(long, default_value_t = 256)]
    preview_bytes: usize,
    #[command(flatten)]
    url: LatticeUrl,
    /// Print each record as one JSON line.
    #[arg(long)]
    json: bool,
}

/// Prints tapped records.
pub fn run(args: Args) -> anyhow::Result<()> {
    runtime()?.block_on(tap(args))
}

/// Where a tap goes: the provider to ask, which side of its links, and the component at the
/// other end (the step, relay or hop writer).
struct TapPoint {
    lattice: String,
    name: String,
    role: Role,
    provider: String,
    component: String,
}

impl TapPoint {
    /// The tap point `at` names in `spec`.
    fn of(spec: &AnySpec, at: &str) -> anyhow::Result<Self> {
        let (role, provider, component) = match spec {
            AnySpec::Single(spec) => {
                let ids = Ids::of(spec);
                match at {
                    "source" => (Role::Source, ids.source, ids.step),
                    "sink" => (Role::Sink, ids.sink, ids.step),
                    _ => anyhow::bail!("`--at`: expected `source` or `sink` for a one-step pipeline, found `{at}`"),
                }
            }
            AnySpec::Dag(spec) => {
                let ids = DagIds::of(spec);
                let at = if at == "source" { spec.first_step() } else { at };
                if let Some(step) = at.strip_prefix("hop:") {
                    let component = ids.steps.get(step).with_context(|| {
                        format!(
                            "`--at hop:{step}`: expected a step of `{}`, one of {}",
                            spec.name,
                            names(&ids.steps)
                        )
                    })?;
                    (Role::Sink, ids.hop_provider.clone(), component.clone())
                } else if let Some(component) = ids.steps.get(at) {
                    let provider = if at == spec.first_step() {
                        ids.source.clone()
                    } else {
                        ids.hop_provider.clone()
                    };
                    (Role::Source, provider, component.clone())
                } else if let Some(relay) = ids.relays.get(at) {
                    (Role::Sink, ids.sinks[at].clone(), relay.clone())
                } else {
                    anyhow::bail!(
                        "`--at`: expected a step ({}), `hop:<step>` or a sink ({}) of `{}`, found `{at}`",
                        names(&ids.steps),
                        names(&ids.relays),
                        spec.name
                    );
                }
            }
        };
        Ok(Self {
            lattice: spec.lattice().to_string(),
            name: spec.name().to_string(),
            role,
            provider,
            component,
        })
    }
}

fn names(by_name: &std::collections::BTreeMap<String, String>) -> String {
    by_name.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

async fn tap(args: Args) -> anyhow::Result<()> {
    let point = TapPoint::of(&AnySpec::from_file(&args.spec)?, &args.at)?;
    let (role, provider) = (point.role, point.provider.clone());
    let request = TapRequest {
        rate: args.rate,
        timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
        preview_bytes: args.preview_bytes,
        ..TapRequest::new(role, Some(point.component.clone()), args.n)
    };
    let (nats, mut server_errors) = args.url.connect_watching().await?;
    let inbox = nats.new_inbox();
    let mut events = nats.subscribe(inbox.clone()).await?;
    let subject = tap_subject(&point.lattice, &provider);
    nats.publish_with_reply(subject.clone(), inbox, serde_json::to_vec(&request)?.into())
        .await
        .with_context(|| format!("failed to publish the tap request on {subject}"))?;
    nats.flush().await?;

    let mut within = ANSWER_WITHIN;
    let mut printed = 0;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(within, events.next()) => next,
            Some(error) = server_errors.recv() => {
                anyhow::ensure!(
                    !error.to_ascii_lowercase().contains("permissions violation"),
                    "tap refused by the lattice's NATS server ({error}): tapping takes operator rights on \
                     lattice `{}`, the right to publish {subject}",
                    point.lattice
                );
                continue;
            }
        };
        let Ok(next) = next else {
            anyhow::ensure!(
                within != ANSWER_WITHIN,
                "no answer on {subject} within {ANSWER_WITHIN:?}: is `{}` running on lattice `{}`, and may this \
                 user publish that subject (tapping takes operator rights on the lattice)?",
                point.name,
                point.lattice
            );
            anyhow::bail!("the tap went quiet for {within:?} after {printed} records");
        };
        let Some(message) = next else {
            anyhow::bail!("the lattice connection closed");
        };
        let event: TapEvent = serde_json::from_slice(&message.payload)
            .with_context(|| format!("unreadable answer on the tap inbox from {provider}"))?;
        match event {
            TapEvent::Refused { error } => anyhow::bail!("tap refused by {provider}: {error}"),
            TapEvent::Started { links } => {
                // Records come within the tap's timeout; its end within a moment after.
                within = args.timeout + ANSWER_WITHIN;
                eprintln!(
                    "tapping {} at {provider}: {}",
                    role_name(role, &point.component),
                    links.join(", ")
                );
            }
            TapEvent::Record(record) => {
                printed += 1;
                if args.json {
                    println!("{}", serde_json::to_string(&record)?);
                } else {
                    println!("{}", line(&record));
                }
            }
            TapEvent::Ended { records, reason } => {
                eprintln!("tap ended: {records} records ({reason})");
                return Ok(());
            }
        }
    }
}

fn role_name(role: Role, component: &str) -> String {
    match role {
        Role::Source => format!("records delivered to {component}"),
        Role::Sink => format!("records {component} wrote"),
    }
}

/// One record on one line: `origin key=.. ts=.. headers={..} payload`.
fn line(record: &TapRecord) -> String {
    let mut out = record.origin.clone();
    if let Some(key) = &record.key {
        out.push_str(&format!(" key={key}"));
    }
    if let Some(ts) = record.timestamp_ms {
        out.push_str(&format!(" ts={ts}"));
    }
    if !record.headers.is_empty() {
        let headers: Vec<String> = record.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(" headers={{{}}}", headers.join(", ")));
    }
    out.push_str(&format!(
        " [{} B{}] {}",
        record.payload_bytes,
        if record.truncated { ", cut" } else { "" },
        record.payload
    ));
    out
}
