//! The Kafka source: a consumer group member that commits, per partition, only offsets whose
//! records the pipeline accepted (or dead-lettered) together with every record before them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use futures::FutureExt as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_provider_core::{
    ConfigError, ConfigReader, ConnectorError, LinkKey, Message, Record, SourceConnector, SourceReader,
};
use tracing::{info, warn};

use crate::config::{SourceConfig, Start};
use crate::producer::Producer;
use crate::routing::Route;

/// Reads Kafka topics into pipeline batches.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaSource;

/// What acknowledges one Kafka record: where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaAck {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

/// The next offset to commit per partition: past every record released for acknowledgement.
type Released = Arc<Mutex<HashMap<(Arc<str>, i32), i64>>>;

/// Logs rebalances and commit failures through `tracing`, and commits what is done of the
/// partitions being revoked before they go.
pub struct SourceContext {
    link: String,
    released: Released,
}

impl SourceContext {
    /// Commits, for the `revoked` partitions, every record already released for acknowledgement
    /// (some of it may still wait for its `ack` call), so their new owner does not read it again.
    fn commit_revoked(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, revoked: &TopicPartitionList) {
        let mut done = TopicPartitionList::new();
        {
            let mut released = self.released.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for p in revoked.elements() {
                if let Some(offset) = released.remove(&(Arc::from(p.topic()), p.partition())) {
                    let _ = done.add_partition_offset(p.topic(), p.partition(), Offset::Offset(offset));
                }
            }
        }
        if done.count() == 0 {
            return;
        }
        match consumer.commit(&done, CommitMode::Sync) {
            Ok(()) => {
                info!(link = %self.link, partitions = done.count(), "committed what was done of the revoked partitions")
            }
            Err(e) => {
                warn!(link = %self.link, error = %e, "commit on revoke failed; the new owner may read those records again")
            }
        }
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => warn!(link = %self.link, fac, "librdkafka: {log_message}"),
            _ => tracing::debug!(link = %self.link, fac, "librdkafka: {log_message}"),
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            info!(link = %self.link, partitions = tpl.count(), "partitions revoked; records still in flight will be read again by their new owner");
            self.commit_revoked(consumer, tpl);
        }
    }

    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            info!(link = %self.link, partitions = tpl.count(), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            warn!(link = %self.link, error = %e, "offset commit failed; the records may be read again");
        }
    }
}

impl SourceConnector for KafkaSource {
    type Config = SourceConfig;
    type Reader = KafkaReader;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<SourceConfig, ConfigError> {
        SourceConfig::parse(config)
    }

    /// The brokers answer, and the named topics (not patterns) and the `dead_letter_topic` exist:
    /// a metadata request from a client of its own, which joins no group.
    async fn check(&self, _: &LinkKey, config: &SourceConfig) -> Result<(), ConnectorError> {
        let client: BaseConsumer = config
            .connection
            .client_config()
            .create()
            .map_err(|e| ConnectorError::msg(format!("bad consumer config: {e}")))?;
        let named = config
            .topics
            .iter()
            .filter(|t| !t.starts_with('^'))
            .map(|t| (None, t.clone()));
        let dead_letters = config
            .dead_letter_topic
            .iter()
            .map(|t| (Some("dead_letter_topic"), t.clone()));
        let timeout = config.connection.connect_timeout;
        crate::metadata::check_topics(
            move || client.fetch_metadata(None, timeout),
            config.connection.bootstrap_servers.clone(),
            named.chain(dead_letters).collect(),
        )
        .await
    }

    async fn open(&self, link: &LinkKey, config: SourceConfig) -> Result<KafkaReader, ConnectorError> {
        let mut client = config.connection.client_config();
        client
            .set("group.id", config.group_id(link))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
            .set(
                "auto.offset.reset",
                match config.start {
                    Start::Earliest => "earliest",
                    Start::Latest => "latest",
                },
            );
        if let Some(instance) = &config.group_instance_id {
            client.set("group.instance.id", instance);
        }
        let released = Released::default();
        let consumer: StreamConsumer<SourceContext> = client
            .create_with_context(SourceContext {
                link: link.to_string(),
                released: Arc::clone(&released),
            })
            .map_err(|e| ConnectorError::msg(format!("bad consumer config: {e}")))?;
        let consumer = Arc::new(consumer);
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ConnectorError::msg(format!("cannot subscribe to {topics:?}: {e}")))?;
        let dead_letters = match &config.dead_letter_topic {
            Some(topic) => Some(Arc::new(DeadLetters {
                topic: topic.clone(),
                producer: Producer::new(
                    &config.connection,
                    "lz4",
                    Duration::from_secs(30),
                    Duration::from_millis(5),
                )?,
            })),
            None => None,
        };
        info!(%link, topics = ?config.topics, group = %config.group_id(link), "kafka source subscribed");
        Ok(KafkaReader {
            consumer,
            released,
            dead_letters,
        })
    }
}

/// Reads one source link.
pub struct KafkaReader {
    consumer: Arc<StreamConsumer<SourceContext>>,
    released: Released,
    dead_letters: Option<Arc<DeadLetters>>,
}

/// Where a source link's rejected records go: its `dead_letter_topic`.
struct DeadLetters {
    topic: String,
    producer: Producer,
}

fn record(m: &BorrowedMessage<'_>) -> Record<KafkaAck> {
    let topic: Arc<str> = Arc::from(m.topic());
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), Bytes::copy_from_slice(h.value.unwrap_or_default())))
                .collect()
        })
        .unwrap_or_default();
    let message = Message {
        key: m.key().map(Bytes::copy_from_slice),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
        timestamp_ms: m.timestamp().to_millis().and_then(|t| u64::try_from(t).ok()),
        origin: format!("kafka:{}/{}@{}", m.topic(), m.partition(), m.offset()),
    };
    let ack = KafkaAck {
        topic: Arc::clone(&topic),
        partition: m.partition(),
        offset: m.offset(),
    };
    // Kafka orders records per partition; keep that order through the pipeline.
    Record::new(message, ack).ordered_by((topic, m.partition()))
}

impl SourceReader for KafkaReader {
    type Ack = KafkaAck;

    async fn poll(&mut self, max: usize) -> Result<Vec<Record<KafkaAck>>, ConnectorError> {
        let first = self.consumer.recv().await.map_err(ConnectorError::new)?;
        let mut records = vec![record(&first)];
        drop(first);
        while records.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => records.push(record(&m)),
                Some(Err(e)) => {
                    warn!(error = %e, "kafka consumer error");
                    break;
                }
                None => break,
            }
        }
        Ok(records)
    }

    fn released(&mut self, acks: &[KafkaAck]) {
        let mut released = self.released.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for a in acks {
            released.insert((Arc::clone(&a.topic), a.partition), a.offset + 1);
        }
    }

    fn ack(&mut self, acks: Vec<KafkaAck>) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        let consumer = Arc::clone(&self.consumer);
        async move {
            // Acknowledgements arrive in read order, so the last offset per partition is contiguous.
            let mut next: BTreeMap<(Arc<str>, i32), i64> = BTreeMap::new();
            for a in acks {
                next.insert((a.topic, a.partition), a.offset + 1);
            }
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in next {
                tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .map_err(ConnectorError::new)?;
            }
            // A synchronous commit (on a blocking thread): once `ack` returns, the offsets are
            // stored by the group coordinator, so a crash redelivers only what was not
            // acknowledged. The runner reads and delivers on while it waits.
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                .await
                .map_err(ConnectorError::new)?
                .map_err(|e| ConnectorError::msg(format!("commit failed: {e}")))
        }
    }

    fn dead_letter(
        &mut self,
        rejected: Vec<(Message, String)>,
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        let dead_letters = self.dead_letters.clone();
        async move {
            match dead_letters {
                Some(dead_letters) => dead_letters.write(rejected).await,
                None => {
                    for (m, reason) in &rejected {
                        warn!(origin = %m.origin, %reason, "record rejected; no dead_letter_topic configured");
                    }
                    Ok(())
                }
            }
        }
    }

    async fn close(&mut self) {
        let consumer = Arc::clone(&self.consumer);
        let _ = tokio::task::spawn_blocking(move || consumer.unsubscribe()).await;
    }
}

impl DeadLetters {
    /// Produces `rejected` to the topic, each with its reason and origin as headers.
    async fn write(&self, rejected: Vec<(Message, String)>) -> Result<(), ConnectorError> {
        let messages = rejected
            .into_iter()
            .map(|(mut m, reason)| {
                m.headers.push(("sluice.reason".into(), Bytes::from(reason)));
                m.headers.push(("sluice.origin".into(), Bytes::from(m.origin.clone())));
                m
            })
            .collect::<Vec<_>>();
        // The dead-letter topic is the link's; a record's own `kafka.topic` header is just a header.
        let route = Route {
            topic: &self.topic,
            by_header: false,
        };
        let outcomes = join_all(messages.iter().map(|m| self.producer.send(route, m))).await;
        match outcomes.into_iter().find_map(Result::err) {
            Some(e) => Err(ConnectorError::msg(format!("dead-letter produce failed: {e}"))),
            None => Ok(()),
        }
    }
}
