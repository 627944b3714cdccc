//! MQTT source and sink for Sluice, MQTT 5 and 3.1.1 over TCP or TLS.
//!
//! - [`MqttSource`] subscribes with a persistent session and manual acknowledgements: a message is
//!   acknowledged (PUBACK / PUBREC) only after the pipeline step accepted it, so whatever was not
//!   accepted comes back after a crash or reconnect. Rejected messages go to `dead_letter_topic`.
//! - [`MqttSink`] publishes batches and reports success only once the broker acknowledged every
//!   record at the link's QoS.
//!
//! Every config key is documented in this crate's README. Nothing here depends on wasmCloud: the
//! provider binary (`main.rs`) plugs these connectors into `sluice-provider-core`.

pub mod config;
mod publisher;
mod session;
mod sink;
mod source;
pub mod topic_template;

pub use sink::{MqttSink, MqttWriter};
pub use source::{MqttAck, MqttReader, MqttSource};
