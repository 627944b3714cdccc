//! File-backed connectors for the provider-shaped test binary (`sluice-test-provider`), so a test
//! can watch a provider process from outside and across kill -9 and restarts.
//!
//! Source link config: `input` (a file, one record per line, read as it grows) and `checkpoint`
//! (a file holding the number of leading lines acknowledged). Sink link config: `output` (a file
//! each written record is appended to, one per line); optional secret `token`, and `expect_token`
//! (`true` to refuse a link without it).

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use sluice_provider_core::{
    ConfigError, ConfigReader, ConnectorError, Failure, LinkKey, Message, Record, Secret, SinkConnector, SinkWriter,
    SourceConnector, SourceReader,
};

/// Reads lines of a file as records, checkpointing acknowledged lines to another file.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSource;

/// Config of a [`FileSource`] link.
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    input: PathBuf,
    checkpoint: PathBuf,
    /// `ordered`: every line in one ordering lane (one batch in flight), as one MQTT topic or
    /// one Kafka partition.
    ordered: bool,
}

impl SourceConnector for FileSource {
    type Config = FileSourceConfig;
    type Reader = FileReader;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<FileSourceConfig, ConfigError> {
        Ok(FileSourceConfig {
            input: config.required_str("input")?.into(),
            checkpoint: config.required_str("checkpoint")?.into(),
            ordered: config.bool_or("ordered", false)?,
        })
    }

    async fn open(&self, _: &LinkKey, config: FileSourceConfig) -> Result<FileReader, ConnectorError> {
        let next = match std::fs::read_to_string(&config.checkpoint) {
            Ok(text) => text.trim().parse().map_err(ConnectorError::new)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
            Err(err) => return Err(ConnectorError::new(err)),
        };
        Ok(FileReader { config, next })
    }
}

/// Reads one [`FileSource`] link.
#[derive(Debug)]
pub struct FileReader {
    config: FileSourceConfig,
    /// The next line to read.
    next: u64,
}

impl SourceReader for FileReader {
    type Ack = u64;

    async fn poll(&mut self, max: usize) -> Result<Vec<Record<u64>>, ConnectorError> {
        loop {
            let text = match tokio::fs::read_to_string(&self.config.input).await {
                Ok(text) => text,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(err) => return Err(ConnectorError::new(err)),
            };
            let origin = self.config.input.display().to_string();
            let records: Vec<Record<u64>> = text
                .lines()
                .enumerate()
                .skip(self.next as usize)
                .take(max)
                .map(|(i, line)| {
                    let record = Record::new(
                        Message::new(line.as_bytes().to_vec(), format!("file:{origin}#{i}")),
                        i as u64,
                    );
                    if self.config.ordered {
                        record.ordered_by(&origin)
                    } else {
                        record
                    }
                })
                .collect();
            if let Some(last) = records.last() {
                self.next = last.ack + 1;
                return Ok(records);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn ack(&mut self, acks: Vec<u64>) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        let checkpoint = self.config.checkpoint.clone();
        async move {
            let Some(last) = acks.last() else {
                return Ok(());
            };
            let tmp = checkpoint.with_extension("tmp");
            tokio::fs::write(&tmp, (last + 1).to_string())
                .await
                .map_err(ConnectorError::new)?;
            tokio::fs::rename(&tmp, &checkpoint).await.map_err(ConnectorError::new)
        }
    }
}

/// Appends written records to a file, one per line.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSink;

/// Config of a [`FileSink`] link.
#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    output: PathBuf,
    token: Option<Secret>,
}

impl SinkConnector for FileSink {
    type Config = FileSinkConfig;
    type Writer = FileWriter;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<FileSinkConfig, ConfigError> {
        let token = if config.bool_or("expect_token", false)? {
            Some(config.required_secret("token")?)
        } else {
            config.secret("token")?
        };
        let parsed = FileSinkConfig {
            output: config.required_str("output")?.into(),
            token,
        };
        tracing::info!(config = ?parsed, "file sink config");
        Ok(parsed)
    }

    async fn open(&self, _: &LinkKey, config: FileSinkConfig) -> Result<FileWriter, ConnectorError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.output)
            .map_err(ConnectorError::new)?;
        if let Some(token) = &config.token {
            // Proves the secret arrived without revealing it: only its length is recorded.
            std::fs::write(
                config.output.with_extension("token-length"),
                token.expose().len().to_string(),
            )
            .map_err(ConnectorError::new)?;
        }
        Ok(FileWriter {
            file: std::sync::Mutex::new(file),
        })
    }
}

/// Writes one [`FileSink`] link.
#[derive(Debug)]
pub struct FileWriter {
    file: std::sync::Mutex<std::fs::File>,
}

impl SinkWriter for FileWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        let mut buf = Vec::new();
        for m in &batch {
            buf.extend_from_slice(&m.payload);
            buf.push(b'\n');
        }
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(&buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| Failure::Retry(format!("write failed: {e}")))
    }
}
