//! The one delivery engine behind every Sluice capability provider.
//!
//! A provider is a connector (how to read or write one system) on top of this crate, which owns
//! everything else: the pipeline bindings, the link table, batching, bounded in-flight delivery,
//! retries with backoff, acknowledgement in read order, dead letters, per-link sink routing and
//! concurrency limits, typed config, counters, and shutdown.
//!
//! Connectors implement [`SourceConnector`] + [`SourceReader`] (a source the engine polls), or
//! [`RequestSource`] (a source whose callers wait for the answer, such as HTTP), and/or
//! [`SinkConnector`] + [`SinkWriter`]; none of these mention wasmCloud. Only [`wasmcloud`] (used by a provider's
//! `main.rs`) does, so a connector can later sit behind a wasmCloud 2.x host plugin or a
//! standalone wRPC service unchanged.

pub mod backoff;
pub mod buffer;
pub mod codec;
pub mod config;
pub mod engine;
pub mod lease;
pub mod link;
pub mod metrics;
pub mod otel_metrics;
pub mod percent;
pub mod request;
pub mod schema;
pub mod sink;
pub mod source;
pub mod tap;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod trace;
pub mod wasmcloud;
pub mod wire;
pub mod wrpc;

/// Bindings for the `sluice:pipeline` WIT (`wit/` at the repository root), world `provider`:
/// calls `ingest.deliver` on components, serves `sink.write`. Both carry
/// [`WireMessage`](wire::WireMessage)s; [`wire`] converts at that boundary.
pub mod bindings {
    wit_bindgen_wrpc::generate!({
        path: "../wit",
        world: "provider",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::sluice::pipeline::types::{Failure, Message, Rejected};
pub use config::{ConfigError, ConfigReader, ProviderConfig, Secret};
pub use engine::{Engine, Status};
pub use link::{LinkError, LinkKey, LinkSpec, Role};
pub use request::{Delivery, Outcome, RequestSource, Requests, Slot};
pub use sink::{SinkConnector, SinkWriter};
pub use source::{Ingest, LinkStart, Record, RunnerSettings, SourceConnector, SourceReader, SourceSide};

/// The pipeline WIT this crate was built from, for tools that check or render it.
pub const PIPELINE_WIT: &str = include_str!("../../wit/pipeline.wit");

/// An error from a connector's system (connection refused, authentication failed, write failed).
///
/// A connector marks an error [`transient`](Self::transient) when trying again may succeed (a
/// server busy or briefly unreachable); the engine then retries opening the link a few times with
/// backoff before it refuses the link.
#[derive(Debug)]
pub struct ConnectorError {
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
    transient: bool,
}

impl ConnectorError {
    /// Wraps any error, to be reported as it is.
    pub fn new(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self {
            error: err.into(),
            transient: false,
        }
    }

    /// Wraps an error that may go away if the operation is tried again.
    pub fn transient(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self {
            error: err.into(),
            transient: true,
        }
    }

    /// An error from a message.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        Self::new(message.to_string())
    }

    /// Whether trying again may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl std::fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for ConnectorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// A message with just a payload and an origin, for connectors and tests.
impl Message {
    /// A record with `payload` from `origin`, no key, no headers, no timestamp.
    pub fn new(payload: impl Into<bytes::Bytes>, origin: impl Into<String>) -> Self {
        Self {
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            timestamp_ms: None,
            origin: origin.into(),
        }
    }
}

/// Stands in for the role a provider does not play: links in that role are refused with a clear
/// error (e.g. a source-only provider linked as a sink).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unsupported;

/// Never constructed: the reader and writer of [`Unsupported`].
#[derive(Debug)]
pub enum Never {}

impl SourceConnector for Unsupported {
    type Config = ();
    type Reader = Never;
    const ENABLED: bool = false;

    fn parse_config(&self, _: &ConfigReader<'_>) -> Result<(), ConfigError> {
        Ok(())
    }

    async fn open(&self, _: &LinkKey, (): ()) -> Result<Never, ConnectorError> {
        Err(ConnectorError::msg("unsupported"))
    }
}

impl SourceReader for Never {
    type Ack = ();

    async fn poll(&mut self, _: usize) -> Result<Vec<Record<()>>, ConnectorError> {
        match *self {}
    }

    #[allow(unreachable_code)] // `Never` has no values: this is never called.
    fn ack(&mut self, _: Vec<()>) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send + 'static {
        std::future::ready(match *self {})
    }
}

impl SinkConnector for Unsupported {
    type Config = ();
    type Writer = Never;
    const ENABLED: bool = false;

    fn parse_config(&self, _: &ConfigReader<'_>) -> Result<(), ConfigError> {
        Ok(())
    }

    async fn open(&self, _: &LinkKey, (): ()) -> Result<Never, ConnectorError> {
        Err(ConnectorError::msg("unsupported"))
    }
}

impl SinkWriter for Never {
    async fn write(&self, _: Vec<Message>) -> Result<(), Failure> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wit_parses_with_every_world() {
        let mut resolve = wit_parser::Resolve::default();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let (pkg, _) = resolve.push_dir(&dir).expect("wit/ parses");
        let package = &resolve.packages[pkg];
        assert_eq!(package.name.to_string(), "sluice:pipeline@0.1.0");
        for world in [
            "step",
            "logic",
            "in-harness",
            "out-harness",
            "source-provider",
            "sink-provider",
            "provider",
        ] {
            assert!(package.worlds.contains_key(world), "world {world} missing");
        }
        for iface in ["types", "ingest", "sink", "transform"] {
            assert!(package.interfaces.contains_key(iface), "interface {iface} missing");
        }
    }
}
