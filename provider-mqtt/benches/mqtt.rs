//! MQTT -> provider -> component throughput next to a raw rumqttc subscriber on the same broker,
//! in the same run: QoS 1, 256 B payloads, messages queued at the broker for a persistent session
//! and then drained. Prints records/s, the ratio and the provider's RSS; asserts nothing.
//!
//! `cargo bench -p sluice-provider-mqtt --bench mqtt`

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::{mqttbytes::QoS, AsyncClient, Event, Incoming, MqttOptions};
use sluice_integration::component::FakeComponent;
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::servers::{Mosquitto, NatsServer};

const PROVIDER: &str = "sluice-provider-mqtt";
const RECORDS: usize = 50_000;
const PAYLOAD: usize = 256;

/// Queues `RECORDS` QoS 1 messages on `topic` with the plain mosquitto_pub client.
fn preload(port: u16, topic: &str) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic, "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut stdin = child.stdin.take().unwrap();
    let line = "x".repeat(PAYLOAD);
    for _ in 0..RECORDS {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

fn options(port: u16) -> MqttOptions {
    let mut o = MqttOptions::new("bench-raw", "127.0.0.1", port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_receive_maximum(Some(100));
    o
}

/// A plain rumqttc subscriber (automatic acks) draining the queued messages.
async fn raw_rate(port: u16) -> anyhow::Result<f64> {
    let (client, mut eventloop) = AsyncClient::new(options(port), 1024);
    client.subscribe("bench/raw", QoS::AtLeastOnce).await?;
    while !matches!(eventloop.poll().await?, Event::Incoming(Incoming::SubAck(_))) {}
    client.disconnect().await?;
    while eventloop.poll().await.is_ok() {}
    preload(port, "bench/raw");
    let (_client, mut eventloop) = AsyncClient::new(options(port), 1024);
    let started = Instant::now();
    let mut received = 0;
    while received < RECORDS {
        if let Event::Incoming(Incoming::Publish(_)) = eventloop.poll().await? {
            received += 1;
        }
    }
    Ok(RECORDS as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_integration::init_tracing();
    let nats = NatsServer::start()?;
    let mqtt = Mosquitto::start()?;
    let raw = raw_rate(mqtt.port).await?;

    let client = nats.connect().await?;
    let mut provider = HostedProvider::start(&nats, env!("CARGO_BIN_EXE_sluice-provider-mqtt"), PROVIDER, &[]).await?;
    let url = mqtt.url();
    println!("MQTT QoS 1, {PAYLOAD} B payloads, {RECORDS} messages queued on one local Mosquitto, then drained");
    println!(
        "{:<52} {:>10} {:>7} {:>14}",
        "path", "records/s", "ratio", "provider RSS"
    );
    println!(
        "{:<52} {:>10.0} {:>6.2}x",
        "raw rumqttc subscriber (automatic acks)", raw, 1.0
    );
    for ordered in ["true", "false"] {
        let component = format!("bench-step-{ordered}");
        let topic = format!("bench/{ordered}");
        let config = [
            ("url", url.as_str()),
            ("topics", topic.as_str()),
            ("qos", "1"),
            ("max_batch_records", "256"),
            ("receive_maximum", "1000"),
            ("ordered", ordered),
        ];
        let step = FakeComponent::serve(&client, "default", &component).await?;
        step.keep_records(false);
        let link = Link::source(PROVIDER, &component, "default", &config);
        // Subscribe with a persistent session, leave, queue the messages, come back and drain.
        provider.put_link(link.clone()).await?;
        provider.delete_link(&link).await?;
        preload(mqtt.port, &topic);
        let started = Instant::now();
        provider.put_link(link).await?;
        let done = step
            .wait_for(Duration::from_secs(300), |c| c.accepted_count() >= RECORDS)
            .await;
        anyhow::ensure!(done, "the provider delivered {} of {RECORDS}", step.accepted_count());
        let rate = RECORDS as f64 / started.elapsed().as_secs_f64();
        let rss = provider.rss_kib().unwrap_or_default();
        println!(
            "{:<52} {:>10.0} {:>6.2}x {:>10} KiB",
            format!("provider -> component, acks after deliver, ordered={ordered}"),
            rate,
            rate / raw,
            rss
        );
    }
    Ok(())
}
