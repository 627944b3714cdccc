//! The provider binary started as a wasmCloud host starts it, with a real nats-server as both the
//! lattice and the JetStream server: one step writes to it, another reads from it, and the
//! provider is killed with SIGKILL mid-stream.

use std::collections::HashSet;
use std::time::Duration;

use sluice_integration::component::{payloads, records, FakeComponent, Reply};
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::servers::NatsServer;

const PROVIDER: &str = "sluice-provider-jetstream";
const BINARY: &str = env!("CARGO_BIN_EXE_sluice-provider-jetstream");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_carries_a_hop_across_a_kill_9_and_refuses_plain_credentials() {
    sluice_integration::init_tracing();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    let url = nats.url();
    let writer = FakeComponent::serve(&client, "default", "step-a").await.unwrap();
    let reader = FakeComponent::serve(&client, "default", "step-b").await.unwrap();
    reader.behave(|_| Reply::AcceptAfter(Duration::from_millis(5)));
    let hop = [
        ("url", url.as_str()),
        ("subject_prefix", "acme.p1"),
        ("subject", "acme.p1.hop"),
    ];
    provider
        .put_link(
            Link::sink(
                "step-a",
                PROVIDER,
                "default",
                &[hop[0], hop[1], hop[2], ("dedup", "true")],
            )
            // Credentials arrive as sealed secrets (this server has no auth and ignores them).
            .with_secret(PROVIDER, "user", "pipeline")
            .with_secret(PROVIDER, "password", "hunter2"),
        )
        .await
        .unwrap();
    let source = [
        hop[0],
        hop[1],
        hop[2],
        ("ack_wait", "1s"),
        ("max_in_flight", "2"),
        ("max_batch_records", "50"),
        ("linger", "5ms"),
    ];
    provider
        .put_link(Link::source(PROVIDER, "step-b", "default", &source))
        .await
        .unwrap();

    let total = 2_000;
    let sent = records("hop", total);
    for chunk in sent.chunks(200) {
        writer.write(PROVIDER, "default", chunk).await.unwrap().unwrap();
    }
    assert!(
        reader
            .wait_for(Duration::from_secs(60), |c| c.accepted().len() >= 500)
            .await
    );
    provider.kill().await.unwrap();
    let before = reader.accepted().len();
    provider.restart().await.unwrap();
    let distinct = |c: &FakeComponent| payloads(&c.accepted()).into_iter().collect::<HashSet<_>>().len();
    assert!(
        reader.wait_for(Duration::from_secs(90), |c| distinct(c) == total).await,
        "lost {} records",
        total - distinct(&reader)
    );
    let duplicates = reader.accepted().len() - total;
    eprintln!("jetstream provider kill -9 after {before} of {total} records: 0 lost, {duplicates} delivered twice");
    assert!(
        duplicates <= 100,
        "{duplicates} duplicates, more than the unacknowledged window"
    );
    let origins: Vec<String> = reader.accepted().iter().map(|m| m.origin.clone()).collect();
    assert!(
        origins.iter().all(|o| o.starts_with("test:hop@")),
        "origins carried over the hop"
    );

    let plain = Link::source(
        PROVIDER,
        "step-c",
        "default",
        &[hop[0], hop[1], hop[2], ("password", "hunter2")],
    );
    provider.put_link(plain).await.unwrap();
    let status = provider
        .wait_status(Duration::from_secs(10), |s| s.refusal("step-c").is_some())
        .await
        .unwrap();
    let refusal = status.refusal("step-c").unwrap();
    assert!(
        refusal.contains("`password`") && refusal.contains("step-c"),
        "{refusal}"
    );
    assert!(!provider.logs().contains("hunter2"), "a password reached the log");
}
