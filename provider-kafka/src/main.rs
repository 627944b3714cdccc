//! The Kafka capability provider: a source feeding pipeline steps and a sink they write to.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_provider_core::wasmcloud::run(
        "sluice-provider-kafka",
        sluice_provider_kafka::schema(),
        sluice_provider_kafka::KafkaSource,
        sluice_provider_kafka::KafkaSink,
    )
    .await
}
