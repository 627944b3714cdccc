//! The MQTT sink: `write` succeeds only once the broker acknowledged every record at the link's QoS.

use sluice_provider_core::{
    ConfigError, ConfigReader, ConnectorError, Failure, LinkKey, Message, Rejected, SinkConnector, SinkWriter,
};

use crate::config::SinkConfig;
use crate::publisher::Publisher;

/// Publishes pipeline results to MQTT.
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttSink;

impl SinkConnector for MqttSink {
    type Config = SinkConfig;
    type Writer = MqttWriter;
    /// A link's client id is its publisher's alone: a second session with it would take the
    /// first one's over.
    const EXCLUSIVE: bool = true;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<SinkConfig, ConfigError> {
        SinkConfig::parse(config)
    }

    async fn open(&self, link: &LinkKey, config: SinkConfig) -> Result<MqttWriter, ConnectorError> {
        let publisher = Publisher::connect(
            &config.connection,
            config.connection.client_id(link, "sink"),
            link,
            config.qos,
        )
        .await?;
        Ok(MqttWriter { publisher, config })
    }
}

/// Writes one sink link.
pub struct MqttWriter {
    publisher: Publisher,
    config: SinkConfig,
}

impl SinkWriter for MqttWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        let mut rejected = Vec::new();
        let mut to_publish = Vec::with_capacity(batch.len());
        for (index, m) in batch.into_iter().enumerate() {
            match self.config.topic.render(m.key.as_deref(), &m.headers) {
                Ok(topic) => to_publish.push((topic, m.payload, m.headers)),
                Err(reason) => rejected.push(Rejected {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    reason,
                }),
            }
        }
        let outcomes = self
            .publisher
            .publish_all(
                to_publish,
                self.config.qos,
                self.config.retain,
                self.config.publish_timeout,
            )
            .await;
        if let Some(e) = outcomes.into_iter().find_map(Result::err) {
            return Err(Failure::Retry(e));
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(Failure::Reject(rejected))
        }
    }

    async fn close(&self) -> Result<(), ConnectorError> {
        self.publisher.close().await;
        Ok(())
    }
}
