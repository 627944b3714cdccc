//! The Kafka sink: `write` succeeds only when every record's delivery report (acks=all) succeeded.
//! Records go to the topic the link's [`TopicPolicy`](crate::routing::TopicPolicy) gives them.

use futures::future::join_all;
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
            .check(config.topics.named_topics(), config.connection.connect_timeout)
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
        let sends = batch.iter().map(|m| async move {
            let route = self.config.topics.route(&m.headers).map_err(SendError::Permanent)?;
            self.producer.send(route, m).await
        });
        let outcomes = join_all(sends).await;
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
