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

/// Every link config key of the provider: the engine's, the connection's, each role's.
#[must_use]
pub fn schema() -> sluice_provider_core::schema::Schema {
    sluice_provider_core::schema::Schema::new(
        "mqtt",
        "MQTT 5 / 3.1.1 source (persistent session, acknowledged after delivery) and sink",
        true,
        true,
    )
    .keys(config::CONNECTION_KEYS)
    .keys(config::SOURCE_KEYS)
    .keys(config::SINK_KEYS)
}

#[cfg(test)]
mod schema_tests {
    use sluice_provider_core::schema::{check_keys, parse_engine_keys, testing};
    use sluice_provider_core::Role;

    use super::*;

    const PLAIN: [(&str, Option<&str>); 8] = [
        ("url", Some("mqtt://127.0.0.1:1883")),
        ("protocol", None),
        ("client_id", Some("c")),
        ("keep_alive", None),
        ("connect_timeout", None),
        ("username", Some("u")),
        ("password", Some("p")),
        ("qos", None),
    ];
    const TLS: [(&str, Option<&str>); 4] = [
        ("url", Some("mqtts://127.0.0.1:8883")),
        ("tls_ca", Some("pem")),
        ("tls_client_cert", Some("pem")),
        ("tls_client_key", Some("pem")),
    ];

    fn with(
        base: &[(&'static str, Option<&'static str>)],
        extra: &[(&'static str, Option<&'static str>)],
    ) -> Vec<(&'static str, Option<&'static str>)> {
        base.iter().chain(extra).copied().collect()
    }

    #[test]
    fn every_documented_source_key_parses() {
        let extra = [
            ("topics", Some("a/#")),
            ("dead_letter_topic", Some("dlq")),
            ("session_expiry", None),
            ("receive_maximum", Some("100")),
            ("max_buffered", None),
            ("ordered", None),
        ];
        check_keys(
            &schema(),
            Role::Source,
            &[&with(&PLAIN, &extra), &with(&TLS, &extra)],
            |r| {
                parse_engine_keys(Role::Source, r)?;
                config::SourceConfig::parse(r)
            },
        );
    }

    #[test]
    fn every_documented_sink_key_parses() {
        let extra = [
            ("topic", Some("out/{key}")),
            ("retain", None),
            ("publish_timeout", None),
            ("buffer", Some("disk")),
            ("buffer_dir", Some("/tmp/b")),
            ("buffer_max_bytes", None),
            ("buffer_max_age", None),
            ("buffer_full", None),
        ];
        check_keys(
            &schema(),
            Role::Sink,
            &[&with(&PLAIN, &extra), &with(&TLS, &extra)],
            |r| {
                parse_engine_keys(Role::Sink, r)?;
                config::SinkConfig::parse(r)
            },
        );
    }

    #[test]
    fn schema_json_readme_and_refusals() {
        let schema = schema();
        testing::check_committed(&schema, env!("CARGO_MANIFEST_DIR"));
        testing::check_readme(&schema, include_str!("../README.md"));
        testing::check_refusals(&schema);
    }
}
