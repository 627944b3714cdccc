//! Publishing with confirmation: a publish counts as done only when the broker acknowledged it at
//! its QoS (PUBACK for 1, PUBCOMP for 2; on the wire for 0). Used by the sink and for dead letters.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_provider_core::{ConnectorError, LinkKey};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::config::{Connection, Qos};
use crate::session::{self, Client, Event, EventLoop, SessionOptions};

type Outcome = Result<(), String>;

/// One message to publish: topic, payload, headers (v5 user properties).
pub type Outgoing = (String, Bytes, Vec<(String, Bytes)>);

struct Waiter {
    qos: Qos,
    done: oneshot::Sender<Outcome>,
}

/// Publishes not yet confirmed: in request order until they get a packet id, then by packet id.
struct State {
    client: Client,
    queued: VecDeque<Waiter>,
    sent: HashMap<u16, Waiter>,
}

impl State {
    fn fail_all(&mut self, reason: &str) {
        for w in self.queued.drain(..).chain(self.sent.drain().map(|(_, w)| w)) {
            let _ = w.done.send(Err(reason.to_string()));
        }
    }
}

/// One connection that publishes and reports each publish's acknowledgement.
///
/// The connection is not persistent: after a failure every unconfirmed publish is reported failed
/// (its caller retries), and a fresh connection starts, so packet ids never cross connections.
pub struct Publisher {
    state: Arc<Mutex<State>>,
    /// Keeps waiters in the order their requests reach the event loop.
    order: tokio::sync::Mutex<()>,
    task: JoinHandle<()>,
    broker: String,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const OPTIONS: SessionOptions = SessionOptions {
    persistent: false,
    session_expiry_secs: 0,
    receive_maximum: 100,
    manual_acks: false,
};

impl Publisher {
    /// Connects (refusing bad credentials or an unreachable broker right away) and keeps the
    /// connection up in the background.
    /// Warns (naming the link) when the broker announces limits below what publishing at `qos`
    /// needs.
    pub async fn connect(
        conn: &Connection,
        client_id: String,
        link: &LinkKey,
        qos: Qos,
    ) -> Result<Self, ConnectorError> {
        let (client, mut eventloop) = session::connect(conn, &client_id, OPTIONS)?;
        let (_, limits) = session::handshake(&mut eventloop, conn).await?;
        for warning in limits.warnings(qos, usize::from(OPTIONS.receive_maximum)) {
            warn!(%link, broker = %conn.broker(), "{warning}");
        }
        let state = Arc::new(Mutex::new(State {
            client,
            queued: VecDeque::new(),
            sent: HashMap::new(),
        }));
        let task = tokio::spawn(run(Arc::clone(&state), eventloop, conn.clone(), client_id));
        Ok(Self {
            state,
            order: tokio::sync::Mutex::new(()),
            task,
            broker: conn.broker(),
        })
    }

    /// Publishes every message and waits until each is acknowledged, up to `timeout`.
    /// Returns one outcome per message, in order.
    pub async fn publish_all(
        &self,
        messages: Vec<Outgoing>,
        qos: Qos,
        retain: bool,
        timeout: Duration,
    ) -> Vec<Outcome> {
        let mut pending = Vec::with_capacity(messages.len());
        {
            let _order = self.order.lock().await;
            for (topic, payload, headers) in messages {
                let (done, rx) = oneshot::channel();
                let client = {
                    let mut state = lock(&self.state);
                    state.queued.push_back(Waiter { qos, done });
                    state.client.clone()
                };
                if let Err(e) = client.publish(topic, qos, retain, payload, &headers).await {
                    // The request never reached the event loop: take its waiter back.
                    lock(&self.state).queued.pop_back();
                    pending.push(Err(format!("publish to {} failed: {e}", self.broker)));
                    continue;
                }
                pending.push(Ok(rx));
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut outcomes = Vec::with_capacity(pending.len());
        for p in pending {
            outcomes.push(match p {
                Err(e) => Err(e),
                Ok(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(_)) => Err("the connection closed before the broker acknowledged".into()),
                    Err(_) => Err(format!("no acknowledgement from {} within {timeout:?}", self.broker)),
                },
            });
        }
        outcomes
    }

    /// Disconnects cleanly.
    pub async fn close(&self) {
        let client = lock(&self.state).client.clone();
        client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(state: Arc<Mutex<State>>, mut eventloop: EventLoop, conn: Connection, client_id: String) {
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                failures = 0;
                let mut st = lock(&state);
                match event {
                    Event::Sent(pkid) => {
                        if let Some(w) = st.queued.pop_front() {
                            if w.qos == Qos::AtMostOnce {
                                let _ = w.done.send(Ok(()));
                            } else {
                                st.sent.insert(pkid, w);
                            }
                        }
                    }
                    Event::PubAck(pkid, outcome) => {
                        if let Some(w) = st.sent.remove(&pkid) {
                            let _ = w.done.send(outcome);
                        }
                    }
                    Event::PubRec(pkid, Err(e)) => {
                        if let Some(w) = st.sent.remove(&pkid) {
                            let _ = w.done.send(Err(e));
                        }
                    }
                    Event::PubComp(pkid) => {
                        if let Some(w) = st.sent.remove(&pkid) {
                            let _ = w.done.send(Ok(()));
                        }
                    }
                    _ => {}
                }
            }
            Err(e) => {
                failures += 1;
                warn!(broker = %conn.broker(), error = %e, "publisher connection lost; reconnecting");
                lock(&state).fail_all(&format!("connection to {} lost: {e}", conn.broker()));
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tokio::time::sleep(delay).await;
                match session::connect(&conn, &client_id, OPTIONS) {
                    Ok((client, fresh)) => {
                        let mut st = lock(&state);
                        st.fail_all("reconnecting");
                        st.client = client;
                        eventloop = fresh;
                    }
                    Err(e) => warn!(error = %e, "cannot recreate the publisher connection"),
                }
            }
        }
    }
}
