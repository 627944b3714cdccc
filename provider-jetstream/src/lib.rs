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

/// Every link config key of the provider: the engine's, the connection's, each role's.
#[must_use]
pub fn schema() -> sluice_provider_core::schema::Schema {
    sluice_provider_core::schema::Schema::new(
        "jetstream",
        "NATS JetStream source (durable pull consumer) and sink (PubAck per record), confined to a subject prefix",
        true,
        true,
    )
    .keys(config::CONNECTION_KEYS)
    .keys(config::SINK_KEYS)
    .keys(config::SOURCE_KEYS)
}

#[cfg(test)]
mod schema_tests {
    use sluice_provider_core::schema::{check_keys, parse_engine_keys, testing};
    use sluice_provider_core::Role;

    use super::*;

    type Pairs = Vec<(&'static str, Option<&'static str>)>;

    fn configs(extra: &[(&'static str, Option<&'static str>)]) -> [Pairs; 3] {
        let base = [
            ("url", None),
            ("subject_prefix", Some("acme.orders")),
            ("subject", Some("acme.orders.in")),
            ("stream", Some("acme_orders_x")),
            ("connect_timeout", None),
            ("max_bytes", None),
            ("max_age", None),
            ("storage", None),
            ("replicas", None),
            ("max_record_size", None),
            ("dedup_window", None),
        ];
        let with = |creds: &[(&'static str, Option<&'static str>)]| -> Pairs {
            base.iter().chain(extra).chain(creds).copied().collect()
        };
        [
            with(&[("user", Some("u")), ("password", Some("p"))]),
            with(&[(
                "nkey_seed",
                Some("SUAKYRHVIOREXV7EUZTBHUHL7NUMHPMAS7QMDU3GTIUWEI5LDNOXD43IZY"),
            )]),
            with(&[("creds", Some("creds"))]),
        ]
    }

    #[test]
    fn every_documented_source_key_parses() {
        let [a, b, c] = configs(&[
            ("durable", Some("d")),
            ("ack_wait", None),
            ("max_ack_pending", Some("10")),
            ("dead_letter_subject", Some("acme.orders.dlq")),
            ("ordered", None),
        ]);
        check_keys(&schema(), Role::Source, &[&a, &b, &c], |r| {
            parse_engine_keys(Role::Source, r)?;
            config::SourceConfig::parse(r)
        });
    }

    #[test]
    fn every_documented_sink_key_parses() {
        let [a, b, c] = configs(&[
            ("dedup", None),
            ("publish_timeout", None),
            ("buffer", Some("disk")),
            ("buffer_dir", Some("/tmp/b")),
            ("buffer_max_bytes", None),
            ("buffer_max_age", None),
            ("buffer_full", None),
        ]);
        check_keys(&schema(), Role::Sink, &[&a, &b, &c], |r| {
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
