//! `sluice tap pipeline.yaml [--at source|sink] [-n 20]`: prints a sample of the records flowing
//! through a running pipeline (origin, key, headers, timestamp, payload preview), like
//! `vector tap`.
//!
//! It asks the pipeline's source provider (`--at source`: records as delivered to the step) or
//! sink provider (`--at sink`: records as the step wrote them) on the tap subject
//! `sluice.{lattice}.{provider}.tap`; publishing it takes operator rights on the lattice's NATS
//! (README: "Tapping a running pipeline"). A link marked `sensitive` refuses the tap.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use sluice_deploy::manifest::Ids;
use sluice_deploy::spec::PipelineSpec;
use sluice_provider_core::link::Role;
use sluice_provider_core::tap::{TapEvent, TapRecord, TapRequest};
use sluice_provider_core::wasmcloud::tap_subject;

use super::lattice::{runtime, LatticeUrl};

/// How long the provider has to answer the tap request.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Where to tap.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum At {
    /// Records as the source delivers them to the step.
    Source,
    /// Records as the step writes them to the sink.
    Sink,
}

/// `sluice tap` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline spec (its name, lattice and providers).
    spec: PathBuf,
    /// Tap the records going into the step (`source`) or coming out of it (`sink`).
    #[arg(long, value_enum, default_value = "source")]
    at: At,
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

async fn tap(args: Args) -> anyhow::Result<()> {
    let spec = PipelineSpec::from_file(&args.spec)?;
    let ids = Ids::of(&spec);
    let (role, provider) = match args.at {
        At::Source => (Role::Source, ids.source),
        At::Sink => (Role::Sink, ids.sink),
    };
    let request = TapRequest {
        rate: args.rate,
        timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
        preview_bytes: args.preview_bytes,
        ..TapRequest::new(role, Some(ids.step.clone()), args.n)
    };
    let (nats, mut server_errors) = args.url.connect_watching().await?;
    let inbox = nats.new_inbox();
    let mut events = nats.subscribe(inbox.clone()).await?;
    let subject = tap_subject(&spec.lattice, &provider);
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
                    spec.lattice
                );
                continue;
            }
        };
        let Ok(next) = next else {
            anyhow::ensure!(
                within != ANSWER_WITHIN,
                "no answer on {subject} within {ANSWER_WITHIN:?}: is `{}` running on lattice `{}`, and may this \
                 user publish that subject (tapping takes operator rights on the lattice)?",
                spec.name,
                spec.lattice
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
                eprintln!("tapping {} at {provider}: {}", role_name(role), links.join(", "));
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

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Source => "records delivered to the step",
        Role::Sink => "records the step wrote",
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
