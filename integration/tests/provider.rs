//! A provider-shaped binary (`sluice-test-provider`: provider-core + the file fixture connectors)
//! started exactly as a wasmCloud 1.x host starts it, driven over a real nats-server.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use sluice_integration::component::{payloads, records, FakeComponent, Reply};
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::servers::NatsServer;
use sluice_provider_core::wire::to_wire;
use sluice_provider_core::{Failure, Message};

const PROVIDER: &str = "sluice-test-provider";
const BINARY: &str = env!("CARGO_BIN_EXE_sluice-test-provider");

fn write_lines(path: &Path, range: std::ops::Range<usize>, append: bool) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(path)
        .unwrap();
    for i in range {
        writeln!(file, "line-{i}").unwrap();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_provider_feeds_sinks_and_refuses_bad_links_by_name() {
    sluice_integration::init_tracing();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-a").await.unwrap();
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    assert_eq!(provider.health().await.unwrap()["healthy"], true);
    let dir = provider.dir().to_path_buf();

    // Source: the provider reads the file and delivers it to the component, then checkpoints.
    let input = dir.join("input.txt");
    write_lines(&input, 0..100, false);
    let source = Link::source(
        PROVIDER,
        "step-a",
        "default",
        &[
            ("input", input.to_str().unwrap()),
            ("checkpoint", dir.join("a.checkpoint").to_str().unwrap()),
            ("linger", "5ms"),
        ],
    );
    provider.put_link(source.clone()).await.unwrap();
    assert!(
        step.wait_for(Duration::from_secs(20), |c| c.accepted().len() == 100)
            .await
    );
    let want: Vec<String> = (0..100).map(|i| format!("line-{i}")).collect();
    assert_eq!(payloads(&step.accepted()), want);
    assert!(
        step.callers().iter().all(|c| c.as_deref() == Some(PROVIDER)),
        "source-id is the provider"
    );

    // A bad link is refused, naming the key, the component and the link; health says so too.
    let bad = Link::source(
        PROVIDER,
        "step-bad",
        "orders",
        &[("max_in_flight", "abc"), ("input", "x"), ("checkpoint", "y")],
    );
    provider.put_link(bad).await.unwrap();
    let status = provider.status().await.unwrap();
    assert_eq!(status.refused.len(), 1, "{status:?}");
    let error = &status.refused[0].error;
    for needle in ["max_in_flight", "step-bad", "orders"] {
        assert!(error.contains(needle), "`{needle}` missing from {error}");
    }
    let health = provider.health().await.unwrap();
    assert_eq!(health["healthy"], true, "other links still run");
    assert!(
        health["message"].as_str().unwrap_or_default().contains("max_in_flight"),
        "{health}"
    );
    assert!(
        provider.wait_for_log("max_in_flight", Duration::from_secs(10)).await,
        "the refusal is logged"
    );

    // Sinks: each component reaches only its own link's config; secrets arrive, sealed, and are
    // never logged; a secret passed as plain config is refused.
    let secret = "s3cr3t-value-never-logged";
    let out_a = dir.join("a.out");
    let out_b = dir.join("b.out");
    provider
        .put_link(
            Link::sink(
                "step-a",
                PROVIDER,
                "default",
                &[("output", out_a.to_str().unwrap()), ("expect_token", "true")],
            )
            .with_secret(PROVIDER, "token", secret),
        )
        .await
        .unwrap();
    provider
        .put_link(Link::sink(
            "step-b",
            PROVIDER,
            "default",
            &[("output", out_b.to_str().unwrap())],
        ))
        .await
        .unwrap();
    provider
        .put_link(Link::sink(
            "step-d",
            PROVIDER,
            "default",
            &[("output", "/dev/null"), ("token", "plain")],
        ))
        .await
        .unwrap();
    let step_b = FakeComponent::serve(&client, "default", "step-b").await.unwrap();
    let step_c = FakeComponent::serve(&client, "default", "step-c").await.unwrap();
    step.write(PROVIDER, "default", &records("a", 3))
        .await
        .unwrap()
        .unwrap();
    step_b
        .write(PROVIDER, "default", &records("b", 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read(&out_a), "a-0\na-1\na-2\n");
    assert_eq!(read(&out_b), "b-0\nb-1\n");

    // Payloads travel in the wire form: every byte value reaches the sink unchanged, and a record
    // whose payload is not in the wire form is rejected by index while the rest is written.
    let binary: Vec<u8> = (0..=255).collect();
    let mut batch = to_wire(&[
        Message::new(binary.clone(), "test:bin@0"),
        Message::new(&b"after"[..], "test:bin@2"),
    ]);
    let mut bad = batch[0].clone();
    bad.payload = "not \u{0100} latin-1".into();
    batch.insert(1, bad);
    match step_b.write_wire(PROVIDER, "default", &batch).await.unwrap() {
        Err(Failure::Reject(rejected)) => {
            assert_eq!(rejected.len(), 1, "{rejected:?}");
            assert_eq!(rejected[0].index, 1);
            assert!(
                rejected[0].reason.starts_with("payload is not in the wire form"),
                "{}",
                rejected[0].reason
            );
        }
        other => panic!("a record not in the wire form got {other:?}"),
    }
    let mut want = b"b-0\nb-1\n".to_vec();
    want.extend_from_slice(&binary);
    want.extend_from_slice(b"\nafter\n");
    assert_eq!(std::fs::read(&out_b).unwrap(), want);
    match step_c.write(PROVIDER, "default", &records("c", 1)).await.unwrap() {
        Err(Failure::Retry(reason)) => assert!(reason.contains("step-c"), "{reason}"),
        other => panic!("a component without a link got {other:?}"),
    }
    assert_eq!(read(&out_a.with_extension("token-length")), secret.len().to_string());
    let status = provider.status().await.unwrap();
    let refused_d = status.refusal("step-d").expect("step-d refused");
    assert!(refused_d.contains("`token` is a secret"), "{refused_d}");
    assert!(
        provider
            .wait_for_log("Secret(<redacted>)", Duration::from_secs(10))
            .await,
        "the config was logged, redacted"
    );
    assert!(!provider.logs().contains(secret), "a secret reached the log");

    // The good source link kept running through all of that.
    write_lines(&input, 100..150, true);
    assert!(
        step.wait_for(Duration::from_secs(20), |c| c.accepted().len() == 150)
            .await
    );

    // Link delete over the lattice stops delivery to that component.
    provider.delete_link(&source).await.unwrap();
    write_lines(&input, 150..160, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(step.accepted().len(), 150);
    assert_eq!(read(&dir.join("a.checkpoint")), "150");

    let exit = provider.terminate().await.unwrap();
    assert!(exit.success(), "SIGTERM exits cleanly: {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_lose_no_record() {
    sluice_integration::init_tracing();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-k").await.unwrap();
    step.behave(|_| Reply::AcceptAfter(Duration::from_millis(5)));
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    let dir = provider.dir().to_path_buf();
    let input = dir.join("input.txt");
    let total = 3000;
    write_lines(&input, 0..total, false);
    let link = Link::source(
        PROVIDER,
        "step-k",
        "default",
        &[
            ("input", input.to_str().unwrap()),
            ("checkpoint", dir.join("k.checkpoint").to_str().unwrap()),
            ("max_batch_records", "50"),
        ],
    );
    provider.put_link(link).await.unwrap();

    for round in 1..=2 {
        let target = round * total / 3;
        assert!(
            step.wait_for(Duration::from_secs(30), |c| c.accepted().len() >= target)
                .await
        );
        provider.kill().await.unwrap();
        provider.restart().await.unwrap();
    }
    let all = |c: &FakeComponent| payloads(&c.accepted()).into_iter().collect::<HashSet<_>>().len() == total;
    assert!(
        step.wait_for(Duration::from_secs(60), all).await,
        "every record arrived"
    );
    let accepted = step.accepted().len();
    assert!(accepted >= total);
    let duplicates = accepted - total;
    // Only unacknowledged records come again: at most max_in_flight * max_batch_records (200) read
    // and unacknowledged plus one poll (50), and up to 200 whose checkpoint write the kill cut off.
    assert!(duplicates <= 2 * (200 + 50 + 200), "{duplicates} duplicates");
    eprintln!("kill -9 x2: {total} records, {duplicates} redelivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_component_keeps_the_provider_bounded() {
    sluice_integration::init_tracing();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-s").await.unwrap();
    step.behave(|_| Reply::Stall);
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    let dir = provider.dir().to_path_buf();
    let input = dir.join("input.txt");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&input).unwrap();
        for i in 0..4000 {
            writeln!(file, "{i:01024}").unwrap();
        }
    }
    let link = Link::source(
        PROVIDER,
        "step-s",
        "default",
        &[
            ("input", input.to_str().unwrap()),
            ("checkpoint", dir.join("s.checkpoint").to_str().unwrap()),
            ("max_in_flight", "2"),
            ("max_batch_records", "20"),
            ("deliver_timeout", "1h"),
            ("linger", "1ms"),
        ],
    );
    provider.put_link(link).await.unwrap();
    assert!(step.wait_for(Duration::from_secs(20), |c| c.in_flight() == 2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let polled = provider.status().await.unwrap().links[0].metrics.polled;
    let rss = provider.rss_kib().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = provider.status().await.unwrap();
    assert_eq!(step.in_flight(), 2);
    assert_eq!(step.max_in_flight(), 2);
    assert_eq!(status.links[0].metrics.polled, polled, "the provider stopped reading");
    assert!(polled <= 3 * 20, "read {polled} records while stalled");
    assert_eq!(status.links[0].metrics.in_flight, 2);
    assert_eq!(status.links[0].metrics.acked, 0);
    let grown = provider.rss_kib().unwrap().saturating_sub(rss);
    eprintln!("stalled: polled {polled}, RSS {rss} KiB, grew {grown} KiB in 2 s");
    assert!(grown < 2048, "RSS grew {grown} KiB while stalled");
    step.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_ordered_lane_idles_at_exactly_the_unacknowledged_bound() {
    sluice_integration::init_tracing();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-o").await.unwrap();
    step.behave(|_| Reply::Stall);
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    let dir = provider.dir().to_path_buf();
    let input = dir.join("input.txt");
    let lines: String = (0..1000).map(|i| format!("{i:0128}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    // One lane: one batch in flight, the next one read and waiting behind it (its linger long
    // past), and nothing else to do until the step answers.
    let link = Link::source(
        PROVIDER,
        "step-o",
        "default",
        &[
            ("input", input.to_str().unwrap()),
            ("checkpoint", dir.join("o.checkpoint").to_str().unwrap()),
            ("ordered", "true"),
            ("max_in_flight", "2"),
            ("max_batch_records", "20"),
            ("deliver_timeout", "1h"),
            ("linger", "1ms"),
        ],
    );
    provider.put_link(link).await.unwrap();
    assert!(step.wait_for(Duration::from_secs(20), |c| c.in_flight() == 1).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let share = sluice_integration::procfs::core_share(provider.pid().unwrap(), Duration::from_secs(5)).await;
    let status = provider.status().await.unwrap();
    eprintln!(
        "stalled lane: {:.1}% of a core, polled {}",
        share * 100.0,
        status.links[0].metrics.polled
    );
    assert!(
        share < 0.05,
        "the provider used {:.1}% of a core waiting",
        share * 100.0
    );
    assert_eq!(
        status.links[0].metrics.polled,
        2 * 20,
        "read exactly max_in_flight * max_batch_records while nothing was acknowledged"
    );
    assert_eq!(step.max_in_flight(), 1, "one batch of the lane in flight");
    step.release();
}
