//! NATS JetStream source and sink for Sluice: the durable hop from one pipeline step to the next.
//!
//! - [`JetStreamSink`] publishes each record to a stream subject and answers success only once the
//!   stream acknowledged (PubAck) every record of the batch; a record the stream refuses for good
//!   is rejected by index. With `dedup = true` each record carries a `Nats-Msg-Id`, so a batch
//!   written again after a `retry` is stored once.
//! - [`JetStreamSource`] reads a durable pull consumer with explicit acknowledgements: a record is
//!   acknowledged only after the step accepted it, so whatever was not accepted is delivered
//!   again after a crash. Rejected records are terminated (`+TERM`) and published to
//!   `dead_letter_subject` with the reason.
//!
//! A link only ever touches subjects and a stream under its `subject_prefix`; streams are created
//! when missing. Every config key is documented in this crate's README. Nothing here depends on
//! wasmCloud: the provider binary (`main.rs`) plugs these connectors into `sluice-provider-core`.

pub mod config;
mod connection;
pub mod error;
pub mod record;
mod sink;
mod source;

pub use error::JetStreamError;
pub use sink::{JetStreamSink, JetStreamWriter};
pub use source::{JetStreamAck, JetStreamReader, JetStreamSource};
