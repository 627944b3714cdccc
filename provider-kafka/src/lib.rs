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

/// Every link config key of the provider: the engine's, the connection's, each role's.
#[must_use]
pub fn schema() -> sluice_provider_core::schema::Schema {
    sluice_provider_core::schema::Schema::new(
        "kafka",
        "Kafka source (consumer group, commits what the pipeline accepted) and sink (idempotent producer)",
        true,
        true,
    )
    .keys(config::CONNECTION_KEYS)
    .keys(passthrough::KEYS)
    .keys(config::SOURCE_KEYS)
    .keys(routing::KEYS)
    .keys(config::SINK_KEYS)
}

#[cfg(test)]
mod schema_tests {
    use sluice_provider_core::schema::{check_keys, parse_engine_keys, testing};
    use sluice_provider_core::Role;

    use super::*;

    const CONNECTION: [(&str, Option<&str>); 7] = [
        ("bootstrap_servers", Some("127.0.0.1:9092")),
        ("security_protocol", None),
        ("sasl_mechanism", None),
        ("sasl_username", Some("u")),
        ("sasl_password", Some("p")),
        ("tls_ca", Some("pem")),
        ("connect_timeout", None),
    ];

    fn with(extra: &[(&'static str, Option<&'static str>)]) -> Vec<(&'static str, Option<&'static str>)> {
        CONNECTION.iter().chain(extra).copied().collect()
    }

    #[test]
    fn every_documented_source_key_parses() {
        let config = with(&[
            ("kafka.client.id", Some("x")),
            ("topics", Some("a,b")),
            ("group_id", Some("g")),
            ("start", None),
            ("dead_letter_topic", Some("dlq")),
            ("group_instance_id", Some("i")),
            ("session_timeout", None),
        ]);
        check_keys(&schema(), Role::Source, &[&config], |r| {
            parse_engine_keys(Role::Source, r)?;
            config::SourceConfig::parse(r)
        });
    }

    #[test]
    fn every_documented_sink_key_parses() {
        let fixed = with(&[("topic", Some("t")), ("compression", None), ("delivery_timeout", None)]);
        let by_header = with(&[
            ("topic_from_header", Some("true")),
            ("allowed_topics", Some("a,b")),
            ("topic_prefix", Some("p.")),
            ("producer_linger", None),
            ("buffer", Some("disk")),
            ("buffer_dir", Some("/tmp/b")),
            ("buffer_max_bytes", None),
            ("buffer_max_age", None),
            ("buffer_full", None),
        ]);
        check_keys(&schema(), Role::Sink, &[&fixed, &by_header], |r| {
            parse_engine_keys(Role::Sink, r)?;
            config::SinkConfig::parse(r)
        });
    }

    #[test]
    fn schema_json_readme_and_refusals() {
        let schema = schema();
        testing::check_committed(&schema, env!("CARGO_MANIFEST_DIR"));
        testing::check_readme(&schema, include_str!("../README.md"));
        testing::check_refusals(&schema);
    }
}
