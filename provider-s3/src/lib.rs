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
