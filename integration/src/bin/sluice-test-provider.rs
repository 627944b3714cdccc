//! A provider made of the file fixture connectors, started by tests the way a host starts one.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_provider_core::wasmcloud::run(
        "sluice-test-provider",
        sluice_provider_core::schema::Schema::open("test"),
        sluice_integration::fixture::FileSource,
        sluice_integration::fixture::FileSink,
    )
    .await
}
