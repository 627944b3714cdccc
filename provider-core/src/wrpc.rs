//! wRPC transport for the engine: calling a component's `ingest.deliver`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use wrpc_transport::Invoke;

use crate::source::Ingest;
use crate::{Failure, Message};

/// Makes another client for a [`WrpcIngest`] pool.
type MakeClient<C> = Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<C>> + Send + Sync>;

/// Delivers batches with `sluice:pipeline/ingest.deliver` over wRPC clients (NATS in wasmCloud;
/// TCP or QUIC elsewhere). Each client decides the target and the headers it sends.
///
/// With several clients, each call takes one that is idle. This matters on NATS:
/// `wrpc-transport-nats` 0.29 routes replies through one demultiplexing task per client, which
/// drops a reply that arrives before that task registered its subscription; with many calls in
/// flight on one client that task falls behind and a call now and then hangs until its deadline.
/// One client per in-flight batch keeps each demultiplexer idle when its call starts.
pub struct WrpcIngest<C> {
    clients: RwLock<Vec<Arc<Pooled<C>>>>,
    /// Clients made or being made.
    size: AtomicUsize,
    max: usize,
    make: Option<MakeClient<C>>,
}

struct Pooled<C> {
    client: C,
    busy: AtomicBool,
}

impl<C> std::fmt::Debug for WrpcIngest<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrpcIngest")
            .field("clients", &self.size.load(Ordering::Relaxed))
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// Marks a client idle again when the call using it ends.
struct Claim<'a>(Option<&'a AtomicBool>);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(false, Ordering::Release);
        }
    }
}

impl<C> WrpcIngest<C> {
    /// Delivers through `client`.
    pub fn new(client: C) -> Self {
        Self::pooled(vec![client])
    }

    /// Delivers through whichever of `clients` is idle (give one per in-flight batch); when all
    /// are busy, calls share the first.
    ///
    /// # Panics
    /// If `clients` is empty.
    pub fn pooled(clients: Vec<C>) -> Self {
        assert!(!clients.is_empty(), "WrpcIngest needs at least one client");
        let size = clients.len();
        Self {
            clients: RwLock::new(
                clients
                    .into_iter()
                    .map(|client| {
                        Arc::new(Pooled {
                            client,
                            busy: AtomicBool::new(false),
                        })
                    })
                    .collect(),
            ),
            size: AtomicUsize::new(size),
            max: size,
            make: None,
        }
    }

    /// Starts with `first` and makes another client with `make` whenever a call finds every
    /// client busy, up to `max` clients (one per in-flight batch); beyond that, or if `make`
    /// fails, calls share the first. A link that never has more than one batch in flight keeps
    /// one client, however high its `max_in_flight`.
    pub fn growing(
        first: C,
        max: usize,
        make: impl Fn() -> BoxFuture<'static, anyhow::Result<C>> + Send + Sync + 'static,
    ) -> Self {
        let mut ingest = Self::new(first);
        ingest.max = max.max(1);
        ingest.make = Some(Box::new(make));
        ingest
    }

    /// Clients made so far.
    pub fn clients(&self) -> usize {
        self.clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn claim_idle(&self) -> Option<Arc<Pooled<C>>> {
        let clients = self.clients.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .iter()
            .find(|p| {
                p.busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .cloned()
    }

    /// Makes one more client, claimed, if the pool may grow.
    async fn grow(&self) -> Option<Arc<Pooled<C>>> {
        let make = self.make.as_ref()?;
        self.size
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()?;
        match make().await {
            Ok(client) => {
                let pooled = Arc::new(Pooled {
                    client,
                    busy: AtomicBool::new(true),
                });
                self.clients
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Arc::clone(&pooled));
                Some(pooled)
            }
            Err(err) => {
                self.size.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(error = %format!("{err:#}"), "could not make another wRPC client; sharing one");
                None
            }
        }
    }
}

impl<C> Ingest for WrpcIngest<C>
where
    C: Invoke + 'static,
    C::Context: Default,
{
    async fn deliver(&self, batch: &[Message]) -> Result<Result<(), Failure>, anyhow::Error> {
        let claimed = match self.claim_idle() {
            Some(pooled) => Some(pooled),
            None => self.grow().await,
        };
        let pooled = match &claimed {
            Some(pooled) => Arc::clone(pooled),
            None => Arc::clone(&self.clients.read().unwrap_or_else(std::sync::PoisonError::into_inner)[0]),
        };
        let _claim = Claim(claimed.as_ref().map(|p| &p.busy));
        crate::bindings::sluice::pipeline::ingest::deliver(&pooled.client, C::Context::default(), batch).await
    }
}
