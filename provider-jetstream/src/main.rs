//! The JetStream capability provider: a durable hop between pipeline steps.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_provider_core::wasmcloud::run(
        "sluice-provider-jetstream",
        sluice_provider_jetstream::schema(),
        sluice_provider_jetstream::JetStreamSource,
        sluice_provider_jetstream::JetStreamSink,
    )
    .await
}
