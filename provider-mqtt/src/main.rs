//! The MQTT capability provider: a source feeding pipeline steps and a sink they write to.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_provider_core::wasmcloud::run(
        "sluice-provider-mqtt",
        sluice_provider_mqtt::schema(),
        sluice_provider_mqtt::MqttSource,
        sluice_provider_mqtt::MqttSink,
    )
    .await
}
