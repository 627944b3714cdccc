//! Provider archives: every provider packaged as a `.par.gz` loads with `provider-archive`'s reader
//! (what the host uses), its claims name the provider, and the embedded wasmCloud host starts it
//! from the archive and it answers health checks.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_deploy::host::EmbeddedHost;
use sluice_integration::servers::NatsServer;

#[tokio::test]
async fn every_archive_loads_and_its_claims_name_the_provider() {
    let dir = common::archives().await;
    let providers = common::providers();
    let names: Vec<_> = providers.iter().map(|p| p.name.as_str()).collect();
    for expected in [
        "sluice-provider-kafka",
        "sluice-provider-modbus",
        "sluice-provider-mqtt",
        "sluice-provider-s3",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for provider in &providers {
        let path = sluice_deploy::archive::path(&dir, &provider.name);
        let info = sluice_deploy::archive::inspect(&path).await.expect("archive loads");
        assert_eq!(info.name, provider.name);
        assert_eq!(info.vendor, xtask::par::VENDOR);
        assert_eq!(info.version.as_deref(), Some(provider.version.as_str()));
        assert_eq!(info.targets, vec![xtask::par::host_target()]);
        assert!(info.subject.starts_with('V'), "service key subject: {}", info.subject);
        // Stripped: no symbol table left in the binary the host will run.
        let unstripped = std::fs::metadata(common::debug_dir().join(&provider.name))
            .unwrap()
            .len();
        assert!(
            (info.binary_bytes as u64) < unstripped,
            "{}: {} bytes packaged, {unstripped} built",
            provider.name,
            info.binary_bytes
        );
    }
}

async fn health(nats: &async_nats::Client, lattice: &str, provider: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let subject = format!("wasmbus.rpc.{lattice}.{provider}.health");
        match tokio::time::timeout(Duration::from_secs(2), nats.request(subject, "".into())).await {
            Ok(Ok(reply)) => return serde_json::from_slice(&reply.payload).expect("health is JSON"),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("{provider} did not answer health within {within:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_embedded_host_starts_every_provider_from_its_archive() {
    sluice_integration::init_tracing();
    let dir = common::archives().await;
    let nats_server = NatsServer::start().unwrap();
    let lattice = "archives";
    let host = EmbeddedHost::start(&nats_server.url(), lattice).await.unwrap();
    let nats = nats_server.connect().await.unwrap();
    let ctl = wasmcloud_control_interface::ClientBuilder::new(nats.clone())
        .lattice(lattice)
        .build();
    let providers = common::providers();
    for provider in &providers {
        let image = format!(
            "file://{}",
            sluice_deploy::archive::path(&dir, &provider.name).display()
        );
        let ack = ctl
            .start_provider(host.id(), &image, &provider.name, None, Vec::new())
            .await
            .expect("start_provider request");
        assert!(ack.succeeded(), "{}: {}", provider.name, ack.message());
    }
    for provider in &providers {
        let reply = health(&nats, lattice, &provider.name, Duration::from_secs(60)).await;
        assert_eq!(reply["healthy"], Value::Bool(true), "{}: {reply}", provider.name);
    }
    // The host's inventory lists every provider under its id.
    let inventory = ctl.get_host_inventory(host.id()).await.unwrap();
    let inventory = inventory.into_data().expect("inventory");
    let mut running: Vec<_> = inventory.providers().iter().map(|p| p.id().to_string()).collect();
    running.sort();
    let mut expected: Vec<_> = providers.iter().map(|p| p.name.clone()).collect();
    expected.sort();
    assert_eq!(running, expected);
    // The providers it unpacked go with it.
    let cache = host.provider_cache();
    assert!(cache.is_dir(), "{} holds the unpacked providers", cache.display());
    host.stop().await.unwrap();
    assert!(!cache.exists(), "{} left behind", cache.display());
}
