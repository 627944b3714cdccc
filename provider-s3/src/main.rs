//! The S3 capability provider: source and sink, started by a wasmCloud 1.x host.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_provider_core::wasmcloud::run(
        "sluice-provider-s3",
        sluice_provider_s3::schema(),
        sluice_provider_s3::S3Source,
        sluice_provider_s3::S3Sink,
    )
    .await
}
