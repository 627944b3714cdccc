//! The HTTP ingress capability provider: one listener (provider config `address`), a route per
//! source link.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_provider_core::wasmcloud::run_with_config(
        "sluice-provider-http-inproc",
        sluice_provider_http_inproc::schema(),
        |config| {
            let source = sluice_provider_http_inproc::HttpSource::start(config)?;
            Ok((
                sluice_provider_core::Requests::new(source),
                sluice_provider_core::Unsupported,
            ))
        },
    )
    .await
}
