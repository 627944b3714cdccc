//! S3 connectors for Sluice: a streaming multipart sink and a checkpointed source.
//!
//! - [`S3Sink`] writes each link's records into big, partitioned objects (key templates, `jsonl`
//!   or `raw`, optional gzip/zstd), uploading parts as they fill, so memory is bounded by the open
//!   parts and never by object size. A write succeeds only once its records are in a completed
//!   object, or, with `spool_dir`, once they are fsynced in the link's local spool.
//! - [`S3Source`] lists a prefix with continuation tokens, streams each object line by line, and
//!   keeps a checkpoint (finished keys, position in the current object) in the bucket or a local
//!   file, advanced only by records the component accepted.
//!
//! Every link brings its own endpoint, region, bucket and credentials (wasmCloud secrets
//! `access_key_id` / `secret_access_key`); a link whose bucket is missing or whose credentials are
//! wrong is refused when it is put. Config keys: see the crate's README.

pub mod checkpoint;
pub mod client;
pub mod format;
pub mod lines;
pub mod sink;
pub mod source;
pub mod spool;
pub mod template;
pub mod uploads;

use sluice_provider_core::{ConfigError, ConfigReader, ConnectorError, LinkKey, SinkConnector, SourceConnector};

use crate::checkpoint::CheckpointStore;
use crate::client::check_bucket;
use crate::sink::{S3Writer, SinkConfig};
use crate::source::{S3Reader, SourceConfig};
use crate::template::KeyTemplate;

/// The prefix under which Sluice keeps its own state in a bucket (source checkpoints, sink upload
/// markers). A source never reads keys under it as data.
pub const STATE_PREFIX: &str = "_sluice/";

/// The S3 source connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct S3Source;

/// The S3 sink connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct S3Sink;

impl SourceConnector for S3Source {
    type Config = SourceConfig;
    type Reader = S3Reader;

    /// One reader per link: its checkpoint has one writer (the lease holder).
    fn single_reader(&self, _: &SourceConfig) -> bool {
        true
    }

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<SourceConfig, ConfigError> {
        SourceConfig::from_config(config)
    }

    /// The bucket exists and the credentials may use it.
    async fn check(&self, _: &LinkKey, config: &SourceConfig) -> Result<(), ConnectorError> {
        Ok(check_bucket(&config.client.client(), &config.client.bucket).await?)
    }

    async fn open(&self, link: &LinkKey, config: SourceConfig) -> Result<S3Reader, ConnectorError> {
        let client = config.client.client();
        let store = match &config.checkpoint_file {
            Some(path) => CheckpointStore::File(path.into()),
            None => CheckpointStore::Object {
                client: client.clone(),
                bucket: config.client.bucket.clone(),
                key: config
                    .checkpoint_key
                    .clone()
                    .unwrap_or_else(|| format!("{STATE_PREFIX}checkpoints/{}/{}.json", link.component, link.name)),
            },
        };
        S3Reader::open(client, config, link, store).await
    }
}

impl SinkConnector for S3Sink {
    type Config = SinkConfig;
    type Writer = S3Writer;
    /// A link's spool directory is its writer's alone: two writers would number and upload the
    /// same files.
    const EXCLUSIVE: bool = true;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<SinkConfig, ConfigError> {
        let parsed = SinkConfig::from_config(config)?;
        // Checked now so a bad template refuses the link by key; rendered again in `open`.
        KeyTemplate::parse("key_template", &parsed.template, &LinkKey::new("c", "l"))?;
        Ok(parsed)
    }

    /// The bucket exists and the credentials may use it.
    async fn check(&self, _: &LinkKey, config: &SinkConfig) -> Result<(), ConnectorError> {
        Ok(check_bucket(&config.client.client(), &config.client.bucket).await?)
    }

    async fn open(&self, link: &LinkKey, config: SinkConfig) -> Result<S3Writer, ConnectorError> {
        let template = KeyTemplate::parse("key_template", &config.template, link).map_err(ConnectorError::new)?;
        let client = config.client.client();
        S3Writer::new(client, config, template, link.clone()).map_err(ConnectorError::new)
    }
}

/// Every link config key of the provider: the engine's, the client's, each role's.
#[must_use]
pub fn schema() -> sluice_provider_core::schema::Schema {
    sluice_provider_core::schema::Schema::new(
        "s3",
        "S3 source (objects under a prefix, checkpointed) and sink (rolled objects from a local spool)",
        true,
        true,
    )
    .keys(client::KEYS)
    .keys(source::KEYS)
    .keys(format::KEYS)
    .keys(sink::KEYS)
}

#[cfg(test)]
mod schema_tests {
    use sluice_provider_core::schema::{check_keys, parse_engine_keys, testing};
    use sluice_provider_core::Role;

    use super::*;

    type Pairs = Vec<(&'static str, Option<&'static str>)>;

    fn with(extra: &[(&'static str, Option<&'static str>)]) -> Pairs {
        [
            ("bucket", Some("b")),
            ("endpoint", Some("http://127.0.0.1:8333")),
            ("region", None),
            ("path_style", None),
            ("timeout", None),
            ("access_key_id", Some("id")),
            ("secret_access_key", Some("key")),
            ("session_token", Some("t")),
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect()
    }

    #[test]
    fn every_documented_source_key_parses() {
        let keep = with(&[
            ("prefix", Some("in/")),
            ("poll_interval", None),
            ("split", None),
            ("max_object_size", None),
            ("max_record_size", None),
            ("after_done", None),
            ("checkpoint_key", Some("cp.json")),
            ("checkpoint_file", Some("/tmp/cp.json")),
            ("read_ahead", None),
        ]);
        let moved = with(&[
            ("prefix", Some("in/")),
            ("after_done", Some("move")),
            ("move_prefix", Some("done/")),
        ]);
        check_keys(&schema(), Role::Source, &[&keep, &moved], |r| {
            parse_engine_keys(Role::Source, r)?;
            source::SourceConfig::from_config(r)
        });
    }

    #[test]
    fn every_documented_sink_key_parses() {
        let config = with(&[
            ("format", None),
            ("payload_encoding", None),
            ("compression", Some("gzip")),
            ("compression_level", Some("6")),
            ("key_template", Some("{date}/{unique}.jsonl")),
            ("time_source", None),
            ("part_size", None),
            ("max_object_bytes", None),
            ("max_object_records", Some("1000")),
            ("max_object_age", None),
            ("max_open_objects", None),
            ("spool", None),
            ("spool_dir", Some("/tmp/spool")),
            ("spool_max_bytes", None),
            ("drain_timeout", None),
            ("abort_incomplete_after", None),
            ("buffer", Some("disk")),
            ("buffer_dir", Some("/tmp/b")),
            ("buffer_max_bytes", None),
            ("buffer_max_age", None),
            ("buffer_full", None),
        ]);
        check_keys(&schema(), Role::Sink, &[&config], |r| {
            parse_engine_keys(Role::Sink, r)?;
            sink::SinkConfig::from_config(r)
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
