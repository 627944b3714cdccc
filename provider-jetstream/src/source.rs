//! The JetStream source: a durable pull consumer with explicit acknowledgements. A record is
//! acknowledged only after the step accepted it; what was not is delivered again by the server
//! (after `ack_wait`) to whichever reader holds the durable consumer next.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer, context::Publish, message::Acker, AckKind};
use futures::StreamExt as _;
use sluice_provider_core::{
    ConfigError, ConfigReader, ConnectorError, LinkKey, Message, Record, SourceConnector, SourceReader,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::SourceConfig;
use crate::connection::{api, connect, ensure_stream};
use crate::record::{self, Position};

/// Reads a JetStream stream into pipeline batches.
#[derive(Debug, Clone, Copy, Default)]
pub struct JetStreamSource;

/// What acknowledges one record: its stream sequence and the way to answer the server.
pub struct JetStreamAck {
    sequence: u64,
    acker: Arc<Acker>,
}

impl std::fmt::Debug for JetStreamAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamAck")
            .field("sequence", &self.sequence)
            .finish()
    }
}

/// Records received and not yet acknowledged, by stream sequence: kept alive with progress
/// notices so the server does not deliver them again while the pipeline still holds them.
type Outstanding = Arc<Mutex<BTreeMap<u64, Arc<Acker>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SourceConnector for JetStreamSource {
    type Config = SourceConfig;
    type Reader = JetStreamReader;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<SourceConfig, ConfigError> {
        SourceConfig::parse(config)
    }

    /// Connects with the link's credentials and checks that its stream, if it exists, stays
    /// under the prefix; creates nothing.
    async fn check(&self, link: &LinkKey, config: &SourceConfig) -> Result<(), ConnectorError> {
        let name = format!("sluice-source-check-{}-{}", link.component, link.name);
        Ok(crate::connection::check(&config.connection, &name).await?)
    }

    async fn open(&self, link: &LinkKey, config: SourceConfig) -> Result<JetStreamReader, ConnectorError> {
        let conn = &config.connection;
        let durable = config.durable(link);
        let client = connect(conn, &format!("sluice-source-{}-{}", link.component, link.name)).await?;
        let js = jetstream::new(client.clone());
        let stream = ensure_stream(&js, &conn.stream, &conn.subject_prefix).await?;
        let consumer_config = pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: config.subject.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_ack_pending: i64::try_from(config.max_ack_pending).unwrap_or(i64::MAX),
            max_deliver: -1,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .create_consumer(consumer_config.clone())
            .await
            .map_err(|e| api(&format!("creating durable consumer `{durable}`"), e, false))?;
        info!(stream = %conn.stream.name, %durable, subject = %config.subject, "jetstream source connected");
        let (tx, rx) = mpsc::unbounded_channel();
        let outstanding = Outstanding::default();
        let pump = tokio::spawn(pump(
            Consumer {
                stream,
                config: consumer_config,
                current: consumer,
            },
            conn.stream.name.clone(),
            config.max_ack_pending,
            config.ordered,
            tx,
            Arc::clone(&outstanding),
        ));
        let keepalive = tokio::spawn(keep_alive(Arc::clone(&outstanding), config.ack_wait));
        Ok(JetStreamReader {
            client,
            js,
            stream: conn.stream.name.clone(),
            rx,
            outstanding,
            terminated: Arc::default(),
            tasks: [pump, keepalive],
            config,
        })
    }
}

/// A link's durable consumer, and how to make it again.
struct Consumer {
    stream: jetstream::stream::Stream,
    config: pull::Config,
    current: PullConsumer,
}

/// Reads the consumer's messages into `tx` as records, registering each as outstanding. When the
/// message stream fails or ends it is opened again with backoff, the durable consumer created
/// again first (create-or-update: the same consumer when it still exists, a new one that starts
/// from the stream's first record when it was deleted).
async fn pump(
    mut consumer: Consumer,
    stream: String,
    batch: usize,
    ordered: bool,
    tx: mpsc::UnboundedSender<Record<JetStreamAck>>,
    outstanding: Outstanding,
) {
    let mut failures = 0u32;
    loop {
        if failures > 0 {
            match consumer.stream.create_consumer(consumer.config.clone()).await {
                Ok(current) => consumer.current = current,
                Err(e) => warn!(%stream, error = %e, "cannot create the durable consumer again"),
            }
        }
        match consumer.current.stream().max_messages_per_batch(batch).messages().await {
            Ok(mut messages) => {
                while let Some(item) = messages.next().await {
                    match item {
                        Ok(message) => {
                            failures = 0;
                            let Some(record) = to_record(message, &stream, ordered, &outstanding) else {
                                continue;
                            };
                            if tx.send(record).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            debug!(%stream, error = %e, "jetstream pull failed");
                            if e.kind() != pull::MessagesErrorKind::MissingHeartbeat {
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => warn!(%stream, error = %e, "cannot pull from the consumer; trying again"),
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(failures.min(6)))).await;
    }
}

fn to_record(
    message: jetstream::Message,
    stream: &str,
    ordered: bool,
    outstanding: &Outstanding,
) -> Option<Record<JetStreamAck>> {
    let (sequence, stored_ms) = match message.info() {
        Ok(info) => (
            info.stream_sequence,
            u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        ),
        Err(e) => {
            warn!(%stream, error = %e, "a message without JetStream metadata; skipped");
            return None;
        }
    };
    let (message, acker) = message.split();
    let acker = Arc::new(acker);
    lock(outstanding).insert(sequence, Arc::clone(&acker));
    let subject = message.subject.to_string();
    let at = Position {
        stream,
        subject: &subject,
        sequence,
        stored_ms,
    };
    let record = Record::new(
        record::from_nats(message.headers.as_ref(), message.payload, at),
        JetStreamAck { sequence, acker },
    );
    Some(if ordered { record.ordered_by(subject) } else { record })
}

/// Tells the server every `ack_wait / 3` that outstanding records are still being worked on.
async fn keep_alive(outstanding: Outstanding, ack_wait: Duration) {
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let held: Vec<Arc<Acker>> = lock(&outstanding).values().cloned().collect();
        for acker in held {
            if let Err(e) = acker.ack_with(AckKind::Progress).await {
                debug!(error = %e, "progress notice failed");
                break;
            }
        }
    }
}

/// Reads one source link.
pub struct JetStreamReader {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    rx: mpsc::UnboundedReceiver<Record<JetStreamAck>>,
    outstanding: Outstanding,
    /// Stream sequences of records dead-lettered: acknowledged with `+TERM`.
    terminated: Arc<Mutex<HashSet<u64>>>,
    tasks: [JoinHandle<()>; 2],
    config: SourceConfig,
}

impl SourceReader for JetStreamReader {
    type Ack = JetStreamAck;

    async fn poll(&mut self, max: usize) -> Result<Vec<Record<JetStreamAck>>, ConnectorError> {
        let first = self
            .rx
            .recv()
            .await
            .ok_or_else(|| ConnectorError::msg("the jetstream pull task stopped"))?;
        let mut records = vec![first];
        while records.len() < max {
            match self.rx.try_recv() {
                Ok(record) => records.push(record),
                Err(_) => break,
            }
        }
        Ok(records)
    }

    fn ack(&mut self, acks: Vec<JetStreamAck>) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        let (client, outstanding, terminated) = (
            self.client.clone(),
            Arc::clone(&self.outstanding),
            Arc::clone(&self.terminated),
        );
        async move {
            for ack in acks {
                {
                    let mut held = lock(&outstanding);
                    if held.get(&ack.sequence).is_some_and(|a| Arc::ptr_eq(a, &ack.acker)) {
                        held.remove(&ack.sequence);
                    }
                }
                let kind = if lock(&terminated).remove(&ack.sequence) {
                    AckKind::Term
                } else {
                    AckKind::Ack
                };
                ack.acker
                    .ack_with(kind)
                    .await
                    .map_err(|e| ConnectorError::transient(format!("acknowledging failed: {e}")))?;
            }
            client
                .flush()
                .await
                .map_err(|e| ConnectorError::transient(format!("acknowledging failed: {e}")))
        }
    }

    /// Publishes rejected records to `dead_letter_subject` with the reason (header
    /// `Sluice-Reason`) and waits for the stream's PubAcks; then their acknowledgements are
    /// `+TERM`, so the server never delivers them again. Without a dead-letter subject they are
    /// logged.
    fn dead_letter(
        &mut self,
        rejected: Vec<(Message, String)>,
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        let js = self.js.clone();
        let stream = self.stream.clone();
        let subject = self.config.dead_letter_subject.clone();
        let terminated = Arc::clone(&self.terminated);
        async move {
            let sequences: Vec<u64> = rejected.iter().filter_map(|(m, _)| record::sequence_of(m)).collect();
            match subject {
                None => {
                    for (m, reason) in &rejected {
                        warn!(origin = %m.origin, %reason, "record rejected; no dead_letter_subject configured");
                    }
                }
                Some(subject) => {
                    let mut acks = Vec::with_capacity(rejected.len());
                    for (m, reason) in &rejected {
                        let mut headers = record::to_headers(m);
                        headers.insert(record::REASON, record::encode(reason.as_bytes()));
                        let mut publish = Publish::build()
                            .payload(m.payload.clone())
                            .headers(headers)
                            .expected_stream(&stream);
                        if let Some(seq) = record::sequence_of(m) {
                            // Written again after a failure, a dead letter is stored once.
                            publish = publish.message_id(format!("dead-letter:{stream}:{seq}"));
                        }
                        let ack = js
                            .send_publish(subject.clone(), publish)
                            .await
                            .map_err(|e| ConnectorError::transient(format!("dead-letter publish failed: {e}")))?;
                        acks.push(ack);
                    }
                    for ack in
                        futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await
                    {
                        ack.map_err(|e| ConnectorError::transient(format!("dead-letter publish failed: {e}")))?;
                    }
                }
            }
            lock(&terminated).extend(sequences);
            Ok(())
        }
    }

    /// Hands records received but never polled back to the server (`-NAK`), so the next reader
    /// gets them at once instead of after `ack_wait`.
    async fn close(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.rx.close();
        while let Ok(record) = self.rx.try_recv() {
            let _ = record.ack.acker.ack_with(AckKind::Nak(None)).await;
        }
        let _ = self.client.flush().await;
    }
}

impl Drop for JetStreamReader {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
