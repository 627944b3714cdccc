//! The MQTT source: a persistent session with manual acknowledgements, so the broker keeps every
//! message the pipeline has not accepted yet and sends it again after a crash or reconnect.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_provider_core::time::unix_ms;
use sluice_provider_core::{
    ConfigError, ConfigReader, ConnectorError, LinkKey, Message, Record, SourceConnector, SourceReader,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Qos, SourceConfig};
use crate::publisher::Publisher;
use crate::session::{self, Client, Event, Inbound, SessionOptions};

/// Reads MQTT topics into pipeline batches.
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttSource;

/// What acknowledges one MQTT message: its QoS and packet id.
#[derive(Debug, Clone, Copy)]
pub struct MqttAck {
    qos: Qos,
    pkid: u16,
}

impl SourceConnector for MqttSource {
    type Config = SourceConfig;
    type Reader = MqttReader;

    /// One instance at a time holds the link's persistent session (its client id is the
    /// link's): a standby that takes over resumes the same session, so the broker redelivers
    /// what the dead holder had not acknowledged and what arrived meanwhile.
    fn single_reader(&self, _: &SourceConfig) -> bool {
        true
    }

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<SourceConfig, ConfigError> {
        SourceConfig::parse(config)
    }

    async fn open(&self, link: &LinkKey, config: SourceConfig) -> Result<MqttReader, ConnectorError> {
        let conn = &config.connection;
        let options = SessionOptions {
            persistent: true,
            session_expiry_secs: u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX),
            receive_maximum: config.receive_maximum,
            manual_acks: true,
        };
        let (client, mut eventloop) = session::connect(conn, &conn.client_id(link, "src"), options)?;
        let (session_present, limits) = session::handshake(&mut eventloop, conn).await?;
        for warning in limits.warnings(config.qos, 0) {
            warn!(%link, broker = %conn.broker(), "{warning}");
        }
        client
            .subscribe(&config.topics, config.qos)
            .await
            .map_err(ConnectorError::msg)?;
        info!(broker = %conn.broker(), session_present, topics = ?config.topics, "mqtt source connected");
        let dead_letters = match &config.dead_letter_topic {
            Some(_) => Some(Arc::new(
                Publisher::connect(conn, conn.client_id(link, "dlq"), link, config.qos).await?,
            )),
            None => None,
        };
        // Unbounded so the event loop is never stuck behind the pipeline (it must keep sending
        // acknowledgements and keep-alives); QoS 1/2 messages are bounded by the broker's flow
        // control (receive maximum), QoS 0 ones by `max_buffered`.
        let (tx, rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(pump(
            eventloop,
            client.clone(),
            config.clone(),
            tx,
            Arc::clone(&buffered),
        ));
        Ok(MqttReader {
            broker: conn.broker(),
            client,
            rx,
            buffered,
            task,
            dead_letters,
            config,
        })
    }
}

/// Keeps the connection polled (keep-alives, reconnects) and hands messages to the reader.
async fn pump(
    mut eventloop: session::EventLoop,
    client: Client,
    config: SourceConfig,
    tx: mpsc::UnboundedSender<Inbound>,
    buffered: Arc<AtomicUsize>,
) {
    let mut failures = 0u32;
    let mut dropped = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Event::Publish(inbound)) => {
                failures = 0;
                if inbound.qos == Qos::AtMostOnce && buffered.load(Ordering::Relaxed) >= config.max_buffered {
                    dropped += 1;
                    if dropped.is_power_of_two() {
                        warn!(dropped, "pipeline behind: dropping QoS 0 messages (at most once)");
                    }
                    continue;
                }
                buffered.fetch_add(1, Ordering::Relaxed);
                if tx.send(inbound).is_err() {
                    return;
                }
            }
            Ok(Event::Connected { session_present, .. }) => {
                failures = 0;
                info!(broker = %config.connection.broker(), session_present, "mqtt source reconnected");
                if !session_present {
                    if let Err(e) = client.subscribe(&config.topics, config.qos).await {
                        warn!(error = %e, "resubscribing failed");
                    }
                }
            }
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                warn!(broker = %config.connection.broker(), error = %e, ?delay, "mqtt source connection lost; reconnecting");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reads one source link.
pub struct MqttReader {
    broker: String,
    client: Client,
    rx: mpsc::UnboundedReceiver<Inbound>,
    buffered: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    dead_letters: Option<Arc<Publisher>>,
    config: SourceConfig,
}

impl MqttReader {
    fn record(&self, m: Inbound) -> Record<MqttAck> {
        let mut headers = m.headers;
        headers.push((
            "mqtt.retain".into(),
            Bytes::from(if m.retain { "true" } else { "false" }),
        ));
        headers.push(("mqtt.qos".into(), Bytes::from((m.qos as u8).to_string())));
        let origin = format!("mqtt:{}/{}#{}", self.broker, m.topic, m.pkid);
        let ack = MqttAck {
            qos: m.qos,
            pkid: m.pkid,
        };
        let message = Message {
            key: Some(Bytes::from(m.topic.clone().into_bytes())),
            payload: m.payload,
            headers,
            timestamp_ms: Some(unix_ms()),
            origin,
        };
        // MQTT orders messages per topic; keep that order through the pipeline unless told not to.
        let record = Record::new(message, ack);
        if self.config.ordered {
            record.ordered_by(m.topic)
        } else {
            record
        }
    }
}

impl SourceReader for MqttReader {
    type Ack = MqttAck;

    async fn poll(&mut self, max: usize) -> Result<Vec<Record<MqttAck>>, ConnectorError> {
        let first = self
            .rx
            .recv()
            .await
            .ok_or_else(|| ConnectorError::msg("the mqtt connection task stopped"))?;
        let mut records = vec![self.record(first)];
        while records.len() < max {
            match self.rx.try_recv() {
                Ok(m) => records.push(self.record(m)),
                Err(_) => break,
            }
        }
        self.buffered.fetch_sub(records.len(), Ordering::Relaxed);
        Ok(records)
    }

    fn ack(&mut self, acks: Vec<MqttAck>) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        let client = self.client.clone();
        async move {
            for ack in acks.into_iter().filter(|a| a.qos != Qos::AtMostOnce) {
                client.ack(ack.qos, ack.pkid).await.map_err(ConnectorError::msg)?;
            }
            Ok(())
        }
    }

    fn dead_letter(
        &mut self,
        rejected: Vec<(Message, String)>,
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        let destination = self.dead_letters.clone().zip(self.config.dead_letter_topic.clone());
        async move {
            let Some((publisher, topic)) = destination else {
                for (m, reason) in &rejected {
                    warn!(origin = %m.origin, %reason, "record rejected; no dead_letter_topic configured");
                }
                return Ok(());
            };
            let messages = rejected
                .into_iter()
                .map(|(m, reason)| {
                    let mut headers = m.headers;
                    headers.push(("sluice.reason".into(), Bytes::from(reason)));
                    headers.push(("sluice.origin".into(), Bytes::from(m.origin)));
                    (topic.clone(), m.payload, headers)
                })
                .collect();
            let outcomes = publisher
                .publish_all(messages, Qos::AtLeastOnce, false, Duration::from_secs(30))
                .await;
            match outcomes.into_iter().find_map(Result::err) {
                Some(e) => Err(ConnectorError::msg(format!("dead-letter publish failed: {e}"))),
                None => Ok(()),
            }
        }
    }

    async fn close(&mut self) {
        self.task.abort();
        self.client.disconnect().await;
        if let Some(p) = &self.dead_letters {
            p.close().await;
        }
    }
}

impl Drop for MqttReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}
