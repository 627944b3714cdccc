//! Kafka source and sink for Sluice, on librdkafka.
//!
//! - [`KafkaSource`] joins a consumer group with auto-commit off and commits, per partition, only
//!   the offset after the last record that the pipeline accepted together with every record read
//!   before it; a gap (a batch still in flight or retrying) holds the commit back. Records keep
//!   their per-partition order. Rejected records go to `dead_letter_topic`.
//! - [`KafkaSink`] keeps one idempotent producer (acks=all) per link; `write` succeeds only when
//!   every record's delivery report did. The link decides the topic ([`routing`]): a record's
//!   `kafka.topic` header chooses only on links that opt in, among the topics they allow.
//!
//! Every config key is documented in this crate's README. Nothing here depends on wasmCloud.

pub mod config;
mod metadata;
pub mod passthrough;
mod producer;
pub mod routing;
mod sink;
mod source;

pub use sink::{KafkaSink, KafkaWriter};
pub use source::{KafkaAck, KafkaReader, KafkaSource, SourceContext};
