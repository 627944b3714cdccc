//! One long-lived idempotent producer (acks=all) with per-record delivery reports.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use sluice_provider_core::{ConnectorError, Message};

use crate::config::Connection;

/// Why one record was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth trying again (broker down, timeout, leader change).
    #[error("{0}")]
    Transient(String),
    /// Will never succeed as it is (too large, no topic, not authorized).
    #[error("{0}")]
    Permanent(String),
}

/// An idempotent producer shared by every write of one link.
pub struct Producer {
    inner: FutureProducer,
    servers: String,
}

impl Producer {
    /// Creates the producer (it connects lazily).
    pub fn new(
        conn: &Connection,
        compression: &str,
        delivery_timeout: Duration,
        linger: Duration,
    ) -> Result<Self, ConnectorError> {
        let mut config = conn.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", compression)
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .set("linger.ms", linger.as_millis().to_string());
        let inner: FutureProducer = config
            .create()
            .map_err(|e| ConnectorError::msg(format!("bad producer config: {e}")))?;
        Ok(Self {
            inner,
            servers: conn.bootstrap_servers.clone(),
        })
    }

    /// Checks that the brokers answer and `topic` (if given) exists.
    pub async fn check(&self, topic: Option<&str>, timeout: Duration) -> Result<(), ConnectorError> {
        let producer = self.inner.clone();
        crate::metadata::check_topics(
            move || producer.client().fetch_metadata(None, timeout),
            self.servers.clone(),
            topic.map(str::to_string).into_iter().collect(),
        )
        .await
    }

    /// Produces every message (to its `kafka.topic` header, else `default_topic`) and waits for
    /// every delivery report. One outcome per message, in order.
    pub async fn send_all(&self, messages: &[Message], default_topic: Option<&str>) -> Vec<Result<(), SendError>> {
        let sends = messages.iter().map(|m| async move {
            let topic = m
                .headers
                .iter()
                .find(|(k, _)| k == "kafka.topic")
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .or(default_topic)
                .ok_or_else(|| SendError::Permanent("no topic: set `topic` or a `kafka.topic` header".into()))?;
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (k, v) in m.headers.iter().filter(|(k, _)| k != "kafka.topic") {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_ref()),
                });
            }
            let mut record = FutureRecord::to(topic).payload(m.payload.as_ref()).headers(headers);
            if let Some(key) = &m.key {
                record = record.key(key.as_ref());
            }
            if let Some(ts) = m.timestamp_ms.and_then(|t| i64::try_from(t).ok()) {
                record = record.timestamp(ts);
            }
            match self.inner.send(record, Duration::from_secs(0)).await {
                Ok(_) => Ok(()),
                Err((e, _)) => Err(classify(e)),
            }
        });
        join_all(sends).await
    }
}

fn classify(e: KafkaError) -> SendError {
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
        )
    );
    if permanent {
        SendError::Permanent(e.to_string())
    } else {
        SendError::Transient(e.to_string())
    }
}
