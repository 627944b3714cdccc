//! wRPC for the engine: calling a component's `ingest.deliver`, and the NATS transport it runs
//! on in wasmCloud ([`nats`]).

pub mod nats;

use wrpc_transport::Invoke;

use crate::source::Ingest;
use crate::{Failure, Message};

/// Delivers batches with `sluice:pipeline/ingest.deliver` over a wRPC client (NATS in wasmCloud;
/// TCP or QUIC elsewhere), in the wire form ([`crate::wire`]). The client decides the target and
/// the headers it sends.
#[derive(Debug, Clone)]
pub struct WrpcIngest<C> {
    client: C,
    max_batch_bytes: Option<u64>,
}

impl<C> WrpcIngest<C> {
    /// Delivers through `client`.
    pub fn new(client: C) -> Self {
        Self {
            client,
            max_batch_bytes: None,
        }
    }

    /// Keeps each batch within `bytes`: what one call of the transport carries in one message
    /// (see [`nats::Client::max_call_bytes`]).
    #[must_use]
    pub fn with_max_batch_bytes(mut self, bytes: u64) -> Self {
        self.max_batch_bytes = Some(bytes);
        self
    }
}

impl<C> Ingest for WrpcIngest<C>
where
    C: Invoke + 'static,
    C::Context: From<async_nats::HeaderMap>,
{
    /// Delivers with the trace context of the current span (the batch's), see [`crate::trace`].
    async fn deliver(&self, batch: &[Message]) -> Result<Result<(), Failure>, anyhow::Error> {
        let batch = crate::wire::to_wire(batch);
        let cx = C::Context::from(crate::trace::headers_of(&tracing::Span::current()));
        crate::bindings::sluice::pipeline::ingest::deliver(&self.client, cx, &batch).await
    }

    fn max_batch_bytes(&self) -> Option<u64> {
        self.max_batch_bytes
    }
}
