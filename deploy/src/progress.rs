//! Live progress of a deployed pipeline: each provider answers its counters as JSON on
//! `sluice.{lattice}.{provider}.status`; this reads them and prints one line.

use std::fmt;
use std::time::Duration;

use sluice_provider_core::engine::{LinkStatus, Status};
use sluice_provider_core::wasmcloud::status_subject;

use crate::manifest::Ids;

/// Counters of one pipeline's two links.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// The source link (source provider -> step), when the provider answered and has it.
    pub source: Option<LinkStatus>,
    /// The sink link (step -> sink provider).
    pub sink: Option<LinkStatus>,
    /// Links a provider refused, with the reason.
    pub refused: Vec<String>,
    /// Whether the source provider answered (it runs and serves its status subject).
    #[serde(skip)]
    pub source_answered: bool,
    /// Whether the sink provider answered.
    #[serde(skip)]
    pub sink_answered: bool,
}

/// How long to wait for a provider's first status answer.
const FIRST_ANSWER: Duration = Duration::from_secs(2);
/// How long after the first answer the other instances of the provider may answer too.
const OTHER_ANSWERS: Duration = Duration::from_millis(250);

/// The status of `provider` on `lattice`: every instance answers (each gets every link), and
/// their answers merge into one ([`Status::merge`]); `None` when none answered.
pub async fn provider_status(nats: &async_nats::Client, lattice: &str, provider: &str) -> Option<Status> {
    use futures::StreamExt as _;
    let inbox = nats.new_inbox();
    let mut answers = nats.subscribe(inbox.clone()).await.ok()?;
    nats.publish_with_reply(status_subject(lattice, provider), inbox, "".into())
        .await
        .ok()?;
    let parse = |m: async_nats::Message| serde_json::from_slice::<Status>(&m.payload).ok();
    let first = tokio::time::timeout(FIRST_ANSWER, answers.next()).await.ok()??;
    let mut statuses: Vec<Status> = parse(first).into_iter().collect();
    let others = tokio::time::sleep(OTHER_ANSWERS);
    tokio::pin!(others);
    loop {
        tokio::select! {
            () = &mut others => break,
            answer = answers.next() => match answer {
                Some(m) => statuses.extend(parse(m)),
                None => break,
            },
        }
    }
    (!statuses.is_empty()).then(|| Status::merge(statuses))
}

impl Progress {
    /// Asks both providers of the pipeline with `ids` on `lattice`.
    pub async fn fetch(nats: &async_nats::Client, lattice: &str, ids: &Ids) -> Self {
        let (source, sink) = tokio::join!(
            provider_status(nats, lattice, &ids.source),
            provider_status(nats, lattice, &ids.sink)
        );
        let mut progress = Self::default();
        for (status, role) in [(source, "source"), (sink, "sink")] {
            let Some(status) = status else { continue };
            if role == "source" {
                progress.source_answered = true;
            } else {
                progress.sink_answered = true;
            }
            let link = status
                .links
                .into_iter()
                .find(|l| l.role == role && l.component == ids.step);
            if role == "source" {
                progress.source = link;
            } else {
                progress.sink = link;
            }
            progress.refused.extend(
                status
                    .refused
                    .into_iter()
                    .filter(|r| r.component == ids.step)
                    .map(|r| r.error),
            );
        }
        progress
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(l) => write!(
                f,
                "source->step: in {} delivered {} rejected {} acked {}",
                l.metrics.polled, l.metrics.delivered, l.metrics.rejected, l.metrics.acked
            )?,
            None => write!(f, "source->step: (no link yet)")?,
        }
        match &self.sink {
            Some(l) => write!(
                f,
                " | step->sink: out {} failed {} busy {}",
                l.metrics.written, l.metrics.write_failures, l.metrics.busy
            )?,
            None => write!(f, " | step->sink: (no link yet)")?,
        }
        for (end, link) in [("source", &self.source), ("sink", &self.sink)] {
            if let Some(reason) = link.as_ref().and_then(|l| l.degraded.as_deref()) {
                write!(f, " | {end} degraded (retrying): {reason}")?;
            }
            if let Some(holder) = link.as_ref().and_then(|l| l.standby_for.as_deref()) {
                write!(f, " | {end} standing by: {holder} reads it, and did not answer")?;
            }
        }
        if !self.refused.is_empty() {
            write!(f, " | refused: {}", self.refused.join("; "))?;
        }
        Ok(())
    }
}

/// One link of a multi-step pipeline, with its counters as the provider at one end reports them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkProgress {
    /// The component or provider calling through the link.
    pub from: String,
    /// The one it calls.
    pub to: String,
    /// The link name.
    pub name: String,
    /// `source` (a provider delivering to a component) or `sink` (a component writing to a
    /// provider): which end reports it.
    pub role: String,
    /// Its counters, once the provider has the link.
    pub status: Option<LinkStatus>,
    /// Whether the provider reporting it answered.
    #[serde(skip)]
    pub answered: bool,
}

/// A hop's stream and each of its consumers' backlog, as JetStream reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HopProgress {
    /// The step writing it.
    pub step: String,
    /// Its stream.
    pub stream: String,
    /// Records the stream holds (`None`: JetStream did not answer, or no such stream yet).
    pub messages: Option<u64>,
    /// Each consumer: its name, records not yet delivered to it, and delivered but not yet acknowledged.
    pub consumers: Vec<ConsumerBacklog>,
}

/// One durable consumer's backlog.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerBacklog {
    /// The step or sink reading.
    pub name: String,
    /// Records of the stream not yet delivered to it (`None`: unknown).
    pub pending: Option<u64>,
    /// Records delivered to it and not yet acknowledged.
    pub unacked: Option<u64>,
}

impl ConsumerBacklog {
    /// Records the consumer has still to acknowledge: pending and unacknowledged.
    #[must_use]
    pub fn backlog(&self) -> Option<u64> {
        Some(self.pending? + self.unacked?)
    }
}

/// Counters of a multi-step pipeline: every link, every hop's backlog.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DagProgress {
    /// Every link of the manifest.
    pub links: Vec<LinkProgress>,
    /// Every hop read.
    pub hops: Vec<HopProgress>,
    /// Links a provider refused, with the reason.
    pub refused: Vec<String>,
}

impl DagProgress {
    /// Asks every provider of the pipeline for its links' counters and JetStream (through
    /// `jetstream`, when given) for each hop's backlog.
    pub async fn fetch(
        nats: &async_nats::Client,
        lattice: &str,
        manifest: &crate::manifest::Manifest,
        ids: &crate::dag::DagIds,
        jetstream: Option<&async_nats::jetstream::Context>,
    ) -> Self {
        let links = manifest.links();
        let providers: std::collections::BTreeSet<&String> =
            ids.sinks.values().chain([&ids.source, &ids.hop_provider]).collect();
        let statuses: std::collections::BTreeMap<&String, Option<Status>> = futures::future::join_all(
            providers
                .iter()
                .map(|p| async move { (*p, provider_status(nats, lattice, p).await) }),
        )
        .await
        .into_iter()
        .collect();
        let components: std::collections::BTreeSet<&String> = ids.steps.values().chain(ids.relays.values()).collect();
        let mut progress = Self::default();
        for link in links {
            let (provider, role, component) = if providers.contains(&link.source_id) {
                (&link.source_id, "source", &link.target)
            } else {
                (&link.target, "sink", &link.source_id)
            };
            let status = statuses.get(provider).and_then(Option::as_ref);
            let found = status.and_then(|s| {
                s.links
                    .iter()
                    .find(|l| l.role == role && l.component == *component && (role == "sink" || l.name == link.name))
                    .cloned()
            });
            progress.links.push(LinkProgress {
                from: link.source_id.clone(),
                to: link.target.clone(),
                name: link.name.clone(),
                role: role.into(),
                status: found,
                answered: status.is_some(),
            });
        }
        for status in statuses.values().flatten() {
            progress.refused.extend(
                status
                    .refused
                    .iter()
                    .filter(|r| components.contains(&r.component))
                    .map(|r| format!("{}: {}", r.component, r.error)),
            );
        }
        for hop in &ids.hops {
            progress.hops.push(hop_progress(jetstream, hop).await);
        }
        progress
    }

    /// Whether every link is live at its provider.
    #[must_use]
    pub fn all_linked(&self) -> bool {
        self.links.iter().all(|l| l.status.is_some())
    }

    /// The counters of the link from `from` to `to`.
    #[must_use]
    pub fn link(&self, from: &str, to: &str) -> Option<&LinkStatus> {
        self.links
            .iter()
            .find(|l| l.from == from && l.to == to)
            .and_then(|l| l.status.as_ref())
    }
}

async fn hop_progress(jetstream: Option<&async_nats::jetstream::Context>, hop: &crate::dag::Hop) -> HopProgress {
    let mut progress = HopProgress {
        step: hop.step.clone(),
        stream: hop.stream.clone(),
        messages: None,
        consumers: hop
            .consumers
            .iter()
            .map(|c| ConsumerBacklog {
                name: c.name.clone(),
                ..ConsumerBacklog::default()
            })
            .collect(),
    };
    let Some(js) = jetstream else { return progress };
    let ask = async {
        let mut stream = js.get_stream(&hop.stream).await.ok()?;
        progress.messages = stream.info().await.ok().map(|i| i.state.messages);
        for (consumer, backlog) in hop.consumers.iter().zip(&mut progress.consumers) {
            if let Ok(info) = stream.consumer_info(&consumer.durable).await {
                backlog.pending = Some(info.num_pending);
                backlog.unacked = Some(info.num_ack_pending as u64);
            }
        }
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ask).await;
    progress
}

impl fmt::Display for DagProgress {
    /// One line per link (`from -> to: counters`), then one per hop with each consumer's backlog.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for link in &self.links {
            write!(f, "{} -> {}: ", link.from, link.to)?;
            match (&link.status, link.role.as_str()) {
                (None, _) => write!(f, "(no link yet)")?,
                (Some(l), "source") => write!(
                    f,
                    "in {} delivered {} rejected {} acked {}",
                    l.metrics.polled, l.metrics.delivered, l.metrics.rejected, l.metrics.acked
                )?,
                (Some(l), _) => write!(
                    f,
                    "out {} failed {} busy {}",
                    l.metrics.written, l.metrics.write_failures, l.metrics.busy
                )?,
            }
            if let Some(reason) = link.status.as_ref().and_then(|l| l.degraded.as_deref()) {
                write!(f, " (degraded, retrying: {reason})")?;
            }
            if let Some(holder) = link.status.as_ref().and_then(|l| l.standby_for.as_deref()) {
                write!(f, " (standing by: {holder} reads it, and did not answer)")?;
            }
            writeln!(f)?;
        }
        let unknown = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        for hop in &self.hops {
            write!(f, "hop {} ({}): {} stored", hop.step, hop.stream, unknown(hop.messages))?;
            for c in &hop.consumers {
                write!(
                    f,
                    " | {}: backlog {} ({} unacked)",
                    c.name,
                    unknown(c.backlog()),
                    unknown(c.unacked)
                )?;
            }
            writeln!(f)?;
        }
        if !self.refused.is_empty() {
            writeln!(f, "refused: {}", self.refused.join("; "))?;
        }
        Ok(())
    }
}
