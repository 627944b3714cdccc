//! The Kafka sink: `write` succeeds only when every record's delivery report (acks=all) succeeded.

use sluice_provider_core::{
    ConfigError, ConfigReader, ConnectorError, Failure, LinkKey, Message, Rejected, SinkConnector, SinkWriter,
};

use crate::config::SinkConfig;
use crate::producer::{Producer, SendError};

/// Produces pipeline results to Kafka.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaSink;

impl SinkConnector for KafkaSink {
    type Config = SinkConfig;
    type Writer = KafkaWriter;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<SinkConfig, ConfigError> {
        SinkConfig::parse(config)
    }

    async fn open(&self, _: &LinkKey, config: SinkConfig) -> Result<KafkaWriter, ConnectorError> {
        let producer = Producer::new(
            &config.connection,
            &config.compression,
            config.delivery_timeout,
            config.linger,
        )?;
        producer
            .check(config.topic.as_deref(), config.connection.connect_timeout)
            .await?;
        Ok(KafkaWriter { producer, config })
    }
}

/// Writes one sink link.
pub struct KafkaWriter {
    producer: Producer,
    config: SinkConfig,
}

impl SinkWriter for KafkaWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        let outcomes = self.producer.send_all(&batch, self.config.topic.as_deref()).await;
        let mut rejected = Vec::new();
        for (index, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(()) => {}
                Err(SendError::Transient(e)) => return Err(Failure::Retry(e)),
                Err(SendError::Permanent(reason)) => rejected.push(Rejected {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    reason,
                }),
            }
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(Failure::Reject(rejected))
        }
    }
}
