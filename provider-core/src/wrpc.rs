//! wRPC for the engine: calling a component's `ingest.deliver`, and the NATS transport it runs
//! on in wasmCloud ([`nats`]).

pub mod nats;

use wrpc_transport::Invoke;

use crate::source::Ingest;
use crate::{Failure, Message};

/// Delivers batches with `sluice:pipeline/ingest.deliver` over a wRPC client (NATS in wasmCloud;
/// TCP or QUIC elsewhere). The client decides the target and the headers it sends.
#[derive(Debug, Clone)]
pub struct WrpcIngest<C> {
    client: C,
}

impl<C> WrpcIngest<C> {
    /// Delivers through `client`.
    pub fn new(client: C) -> Self {
        Self { client }
    }
}

impl<C> Ingest for WrpcIngest<C>
where
    C: Invoke + 'static,
    C::Context: Default,
{
    async fn deliver(&self, batch: &[Message]) -> Result<Result<(), Failure>, anyhow::Error> {
        crate::bindings::sluice::pipeline::ingest::deliver(&self.client, C::Context::default(), batch).await
    }
}
