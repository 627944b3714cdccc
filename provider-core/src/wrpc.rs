//! wRPC transport for the engine: calling a component's `ingest.deliver`.

use std::sync::atomic::{AtomicBool, Ordering};

use wrpc_transport::Invoke;

use crate::source::Ingest;
use crate::{Failure, Message};

/// Delivers batches with `sluice:pipeline/ingest.deliver` over wRPC clients (NATS in wasmCloud;
/// TCP or QUIC elsewhere). Each client decides the target and the headers it sends.
///
/// With several clients, each call takes one that is idle. This matters on NATS:
/// `wrpc-transport-nats` 0.29 routes replies through one demultiplexing task per client, which
/// drops a reply that arrives before that task registered its subscription; with many calls in
/// flight on one client that task falls behind and a call now and then hangs until its deadline.
/// One client per in-flight batch keeps each demultiplexer idle when its call starts.
#[derive(Debug)]
pub struct WrpcIngest<C> {
    clients: Vec<C>,
    busy: Vec<AtomicBool>,
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
        Self {
            busy: clients.iter().map(|_| AtomicBool::new(false)).collect(),
            clients,
        }
    }
}

impl<C> Ingest for WrpcIngest<C>
where
    C: Invoke + 'static,
    C::Context: Default,
{
    async fn deliver(&self, batch: &[Message]) -> Result<Result<(), Failure>, anyhow::Error> {
        let idle = self.busy.iter().position(|flag| {
            flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        });
        let _claim = Claim(idle.map(|i| &self.busy[i]));
        let client = &self.clients[idle.unwrap_or(0)];
        crate::bindings::sluice::pipeline::ingest::deliver(client, C::Context::default(), batch).await
    }
}
