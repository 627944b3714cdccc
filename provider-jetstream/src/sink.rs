//! The JetStream sink: `write` succeeds only once the stream acknowledged (PubAck) every record.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, context::Publish, context::PublishErrorKind};
use async_nats::Subject;
use sluice_provider_core::{
    ConfigError, ConfigReader, ConnectorError, Failure, LinkKey, Message, Rejected, SinkConnector, SinkWriter,
};

use crate::config::SinkConfig;
use crate::connection::{connect, ensure_stream};
use crate::record;

/// Publishes pipeline results to a JetStream stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct JetStreamSink;

impl SinkConnector for JetStreamSink {
    type Config = SinkConfig;
    type Writer = JetStreamWriter;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<SinkConfig, ConfigError> {
        SinkConfig::parse(config)
    }

    /// Connects with the link's credentials and checks that its stream, if it exists, stays
    /// under the prefix; creates nothing.
    async fn check(&self, link: &LinkKey, config: &SinkConfig) -> Result<(), ConnectorError> {
        let name = format!("sluice-sink-check-{}-{}", link.component, link.name);
        Ok(crate::connection::check(&config.connection, &name).await?)
    }

    async fn open(&self, link: &LinkKey, config: SinkConfig) -> Result<JetStreamWriter, ConnectorError> {
        let conn = &config.connection;
        let client = connect(conn, &format!("sluice-sink-{}-{}", link.component, link.name)).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.publish_timeout);
        ensure_stream(&js, &conn.stream, &conn.subject_prefix).await?;
        Ok(JetStreamWriter {
            stream: conn.stream.name.clone(),
            subject: Subject::from(config.subject.as_str()),
            client,
            js,
            config,
        })
    }
}

/// Writes one sink link.
pub struct JetStreamWriter {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    subject: Subject,
    config: SinkConfig,
}

impl JetStreamWriter {
    fn rejected(index: usize, reason: String) -> Rejected {
        Rejected {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            reason,
        }
    }
}

/// Whether the stream refused a message for good: it is larger than the stream stores.
fn refused_for_good(err: &jetstream::context::PublishError) -> bool {
    err.kind() == PublishErrorKind::Other
        && std::error::Error::source(err)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|e| e.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
}

impl SinkWriter for JetStreamWriter {
    /// Publishes every record of the batch at once, then waits for all their PubAcks (within
    /// `publish_timeout`). A record too large for the server or the stream is rejected by index;
    /// any other publish error or a missing PubAck makes the whole batch `retry`.
    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        let max_payload = self.client.server_info().max_payload;
        let mut rejected = Vec::new();
        let mut pending = Vec::with_capacity(batch.len());
        let mut ids_seen: HashMap<&str, usize> = HashMap::new();
        for (index, message) in batch.iter().enumerate() {
            let mut headers = record::to_headers(message);
            if self.config.dedup {
                // A step may emit several records with one origin: number them in batch order,
                // which a retried batch repeats.
                let seen = ids_seen.entry(message.origin.as_str()).or_insert(0);
                let mut id = record::encode(message.origin.as_bytes());
                if *seen > 0 {
                    id.push_str(&format!("#{seen}"));
                }
                *seen += 1;
                headers.insert(record::MSG_ID, id);
            }
            let size = message.payload.len() + record::headers_len(&headers);
            if max_payload > 0 && size > max_payload {
                rejected.push(Self::rejected(
                    index,
                    format!("record of {size} bytes is larger than the server's max_payload ({max_payload} bytes)"),
                ));
                continue;
            }
            let publish = Publish::build()
                .payload(message.payload.clone())
                .headers(headers)
                .expected_stream(&self.stream);
            match self.js.send_publish(self.subject.clone(), publish).await {
                Ok(ack) => pending.push((index, ack)),
                Err(e) => return Err(Failure::Retry(format!("publishing to `{}` failed: {e}", self.subject))),
            }
        }
        let acks = futures::future::join_all(
            pending
                .into_iter()
                .map(|(index, ack)| async move { (index, ack.await) }),
        );
        let acks = tokio::time::timeout(self.config.publish_timeout + Duration::from_millis(100), acks)
            .await
            .map_err(|_| {
                Failure::Retry(format!(
                    "stream `{}` did not acknowledge the batch within {:?}",
                    self.stream, self.config.publish_timeout
                ))
            })?;
        let mut unacknowledged = 0;
        let mut first_error = None;
        for (index, ack) in acks {
            match ack {
                Ok(_) => {}
                Err(e) if refused_for_good(&e) => {
                    rejected.push(Self::rejected(
                        index,
                        format!("stream `{}` refused the record: {e}", self.stream),
                    ));
                }
                Err(e) => {
                    unacknowledged += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(Failure::Retry(format!(
                "{unacknowledged} of {} records not acknowledged by stream `{}`: {e}",
                batch.len(),
                self.stream
            )));
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            rejected.sort_by_key(|r| r.index);
            Err(Failure::Reject(rejected))
        }
    }

    async fn close(&self) -> Result<(), ConnectorError> {
        self.client.flush().await.map_err(ConnectorError::new)?;
        Ok(())
    }
}
