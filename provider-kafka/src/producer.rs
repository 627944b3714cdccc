//! One long-lived idempotent producer (acks=all) with per-record delivery reports.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use sluice_provider_core::{ConnectorError, Message};

use crate::config::Connection;
use crate::routing::{Route, TOPIC_HEADER};

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

    /// Checks that the brokers answer and every topic in `topics` exists.
    pub async fn check(&self, topics: Vec<String>, timeout: Duration) -> Result<(), ConnectorError> {
        let producer = self.inner.clone();
        crate::metadata::check_topics(
            move || producer.client().fetch_metadata(None, timeout),
            self.servers.clone(),
            topics.into_iter().map(|topic| (None, topic)).collect(),
        )
        .await
    }

    /// Produces `message` to `route.topic` and waits for its delivery report. The record's key,
    /// payload, timestamp and headers go as they are, except a `kafka.topic` header that chose
    /// the topic.
    pub async fn send(&self, route: Route<'_>, message: &Message) -> Result<(), SendError> {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (k, v) in &message.headers {
            if route.by_header && k == TOPIC_HEADER {
                continue;
            }
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_ref()),
            });
        }
        let mut record = FutureRecord::to(route.topic)
            .payload(message.payload.as_ref())
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_ref());
        }
        if let Some(ts) = message.timestamp_ms.and_then(|t| i64::try_from(t).ok()) {
            record = record.timestamp(ts);
        }
        match self.inner.send(record, Duration::from_secs(0)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(classify(e)),
        }
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
