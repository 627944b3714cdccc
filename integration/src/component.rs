//! Plays a pipeline step natively: serves `sluice:pipeline/ingest.deliver` over wRPC on NATS as a
//! component would, with a behaviour the test chooses, and calls providers' `sink.write`. Records
//! travel in the wire form ([`sluice_provider_core::wire`]); the behaviour and the recorded calls
//! see them decoded, as the trusted `in` component hands them to the logic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt as _;
use sluice_provider_core::wire::{decode_batch, to_wire, WireMessage};
use sluice_provider_core::wrpc::nats;
use sluice_provider_core::{Failure, Message, Rejected};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Bindings of the `step` world, sharing the record types with `sluice-provider-core`.
pub mod bindings {
    wit_bindgen_wrpc::generate!({
        path: "../wit",
        world: "step",
        with: {
            "sluice:pipeline/types@0.1.0": sluice_provider_core::bindings::sluice::pipeline::types,
        },
    });
}

/// How the fake component answers one `deliver` call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Accept the whole batch.
    Accept,
    /// Reject these record indices (the rest is accepted).
    Reject(Vec<(u32, String)>),
    /// Ask for the batch again.
    Retry(String),
    /// Never answer (until [`FakeComponent::release`]).
    Stall,
    /// Accept the whole batch after a pause.
    AcceptAfter(Duration),
}

type Behaviour = dyn Fn(&[Message]) -> Reply + Send + Sync;

struct State {
    behaviour: Mutex<Arc<Behaviour>>,
    calls: Mutex<Vec<Vec<Message>>>,
    accepted: Mutex<Vec<Message>>,
    callers: Mutex<Vec<Option<String>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    accepted_count: AtomicUsize,
    keep_records: std::sync::atomic::AtomicBool,
    call_count: AtomicU64,
    changed: Notify,
    release: Notify,
}

/// How long [`FakeComponent::write`] waits for the provider's answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A component that serves `ingest.deliver` on the lattice under a component id.
#[derive(Clone)]
pub struct FakeComponent {
    /// The component id providers deliver to.
    pub id: String,
    lattice: String,
    wrpc: nats::Client,
    state: Arc<State>,
    server: Arc<JoinHandle<()>>,
}

#[derive(Clone)]
struct Handler(Arc<State>);

impl bindings::exports::sluice::pipeline::ingest::Handler<Option<HeaderMap>> for Handler {
    async fn deliver(&self, cx: Option<HeaderMap>, batch: Vec<WireMessage>) -> anyhow::Result<Result<(), Failure>> {
        // Records not in the wire form are rejected by index, as the `in` component does.
        let (batch, refusals) = decode_batch(batch);
        let state = &self.0;
        state.call_count.fetch_add(1, SeqCst);
        let now = state.in_flight.fetch_add(1, SeqCst) + 1;
        state.max_in_flight.fetch_max(now, SeqCst);
        let caller = cx.as_ref().and_then(|h| h.get("source-id")).map(ToString::to_string);
        let behaviour = Arc::clone(&state.behaviour.lock().unwrap());
        let reply = behaviour(&batch);
        let keep = state.keep_records.load(SeqCst);
        if keep {
            state.calls.lock().unwrap().push(batch.clone());
            state.callers.lock().unwrap().push(caller);
        }
        state.changed.notify_waiters();
        let result = match reply {
            Reply::Accept => {
                state.accepted_count.fetch_add(batch.len(), SeqCst);
                if keep {
                    state.accepted.lock().unwrap().extend(batch);
                }
                Ok(())
            }
            Reply::Reject(rejected) => {
                let mut accepted = state.accepted.lock().unwrap();
                for (i, m) in batch.into_iter().enumerate() {
                    if !rejected.iter().any(|(r, _)| *r as usize == i) {
                        state.accepted_count.fetch_add(1, SeqCst);
                        accepted.push(m);
                    }
                }
                Err(Failure::Reject(
                    rejected
                        .into_iter()
                        .map(|(index, reason)| Rejected { index, reason })
                        .collect(),
                ))
            }
            Reply::Retry(reason) => Err(Failure::Retry(reason)),
            Reply::AcceptAfter(pause) => {
                tokio::time::sleep(pause).await;
                state.accepted_count.fetch_add(batch.len(), SeqCst);
                if keep {
                    state.accepted.lock().unwrap().extend(batch);
                }
                Ok(())
            }
            Reply::Stall => {
                state.release.notified().await;
                Err(Failure::Retry("released from a stall".into()))
            }
        };
        state.in_flight.fetch_sub(1, SeqCst);
        state.changed.notify_waiters();
        Ok(refusals.answer(result))
    }
}

impl FakeComponent {
    /// Serves `ingest.deliver` as component `id` on `lattice`, accepting everything.
    pub async fn serve(client: &async_nats::Client, lattice: &str, id: &str) -> anyhow::Result<Self> {
        let prefix: Arc<str> = format!("{lattice}.{id}").into();
        let wrpc = nats::Client::new(client.clone(), Arc::clone(&prefix), Some(prefix)).await?;
        let state = Arc::new(State {
            behaviour: Mutex::new(Arc::new(|_: &[Message]| Reply::Accept)),
            calls: Mutex::default(),
            accepted: Mutex::default(),
            callers: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            accepted_count: AtomicUsize::new(0),
            keep_records: std::sync::atomic::AtomicBool::new(true),
            call_count: AtomicU64::new(0),
            changed: Notify::new(),
            release: Notify::new(),
        });
        let invocations = bindings::serve(&wrpc, Handler(Arc::clone(&state))).await?;
        let server = tokio::spawn(async move {
            let mut all = futures::stream::select_all(invocations.into_iter().map(|(_, _, s)| s));
            while let Some(invocation) = all.next().await {
                match invocation {
                    Ok(fut) => {
                        tokio::spawn(async move {
                            if let Err(err) = fut.await {
                                tracing::debug!(?err, "fake component invocation failed");
                            }
                        });
                    }
                    Err(err) => tracing::warn!(?err, "fake component failed to accept an invocation"),
                }
            }
        });
        // Let the subscription reach the server before anyone calls.
        client.flush().await?;
        Ok(Self {
            id: id.into(),
            lattice: lattice.into(),
            wrpc,
            state,
            server: Arc::new(server),
        })
    }

    /// Answers every following call with `behaviour(batch)`.
    pub fn behave(&self, behaviour: impl Fn(&[Message]) -> Reply + Send + Sync + 'static) {
        *self.state.behaviour.lock().unwrap() = Arc::new(behaviour);
    }

    /// Lets every stalled call return (with `retry`).
    pub fn release(&self) {
        self.state.release.notify_waiters();
    }

    /// Every batch received, in arrival order, accepted or not.
    pub fn calls(&self) -> Vec<Vec<Message>> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The `source-id` header of every call.
    pub fn callers(&self) -> Vec<Option<String>> {
        self.state.callers.lock().unwrap().clone()
    }

    /// Every record accepted, in the order accepted.
    pub fn accepted(&self) -> Vec<Message> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// How many records were accepted, without copying them.
    pub fn accepted_count(&self) -> usize {
        self.state.accepted_count.load(SeqCst)
    }

    /// Whether calls and accepted records are kept for [`Self::calls`] and [`Self::accepted`]
    /// (default) or only counted, as a benchmark's component would.
    pub fn keep_records(&self, keep: bool) {
        self.state.keep_records.store(keep, SeqCst);
    }

    /// Calls running right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(SeqCst)
    }

    /// The most calls that ever ran at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(SeqCst)
    }

    /// How many `deliver` calls arrived.
    pub fn call_count(&self) -> u64 {
        self.state.call_count.load(SeqCst)
    }

    /// Waits until `done` holds, or `within` passes; returns whether it held.
    pub async fn wait_for(&self, within: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.state.changed.notified();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(self);
            }
        }
    }

    /// Calls `sink.write` on `provider` as this component, over its link `link_name`.
    pub async fn write(
        &self,
        provider: &str,
        link_name: &str,
        batch: &[Message],
    ) -> anyhow::Result<Result<(), Failure>> {
        self.write_wire(provider, link_name, &to_wire(batch)).await
    }

    /// Calls `sink.write` with records as they travel, e.g. one that is not in the wire form.
    pub async fn write_wire(
        &self,
        provider: &str,
        link_name: &str,
        batch: &[WireMessage],
    ) -> anyhow::Result<Result<(), Failure>> {
        let wrpc = self.wrpc.with_prefix(format!("{}.{provider}", self.lattice));
        let mut headers = HeaderMap::new();
        headers.insert("source-id", self.id.as_str());
        headers.insert("target-id", provider);
        headers.insert("link-name", link_name);
        // A provider that never answers must fail the test, not hang it.
        tokio::time::timeout(
            WRITE_TIMEOUT,
            bindings::sluice::pipeline::sink::write(&wrpc, Some(headers), batch),
        )
        .await
        .map_err(|_| anyhow::anyhow!("sink.write got no answer within {WRITE_TIMEOUT:?}"))?
    }
}

impl Drop for FakeComponent {
    fn drop(&mut self) {
        if Arc::strong_count(&self.server) == 1 {
            self.server.abort();
        }
    }
}

/// `n` records with payloads `"{prefix}-{i}"` and origins `"test:{prefix}@{i}"`.
pub fn records(prefix: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(format!("{prefix}-{i}").into_bytes(), format!("test:{prefix}@{i}")))
        .collect()
}

/// Payloads of `messages` as strings.
pub fn payloads(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}
