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

async fn provider_status(nats: &async_nats::Client, lattice: &str, provider: &str) -> Option<Status> {
    let request = nats.request(status_subject(lattice, provider), "".into());
    let reply = tokio::time::timeout(Duration::from_secs(2), request).await.ok()?.ok()?;
    serde_json::from_slice(&reply.payload).ok()
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
        }
        if !self.refused.is_empty() {
            write!(f, " | refused: {}", self.refused.join("; "))?;
        }
        Ok(())
    }
}
