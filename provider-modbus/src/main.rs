//! `sluice-provider-modbus`: the Modbus TCP source and sink as a wasmCloud 1.x capability provider.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_provider_core::wasmcloud::run(
        "sluice-provider-modbus",
        sluice_provider_modbus::schema(),
        sluice_provider_modbus::ModbusSource,
        sluice_provider_modbus::ModbusSink,
    )
    .await
}
