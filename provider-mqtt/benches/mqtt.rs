//! MQTT -> provider -> component throughput next to a raw rumqttc subscriber on the same broker,
//! in the same run: QoS 1, 256 B payloads, messages queued at the broker for a persistent session
//! and then drained. Runs the three paths in turn, `ROUNDS` times, and prints each path's
//! median records/s, its ratio to the raw median and the provider's RSS; asserts nothing. (On
//! a shared 2-core machine one run of the raw path alone swings by 2x; medians of interleaved
//! rounds keep the ratio steady.)
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
const ROUNDS: usize = 3;

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

fn options(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_receive_maximum(Some(100));
    o
}

/// A plain rumqttc subscriber (automatic acks) draining the queued messages.
async fn raw_rate(port: u16, round: usize) -> anyhow::Result<f64> {
    let (id, topic) = (format!("bench-raw-{round}"), format!("bench/raw/{round}"));
    let (client, mut eventloop) = AsyncClient::new(options(port, &id), 1024);
    client.subscribe(&topic, QoS::AtLeastOnce).await?;
    while !matches!(eventloop.poll().await?, Event::Incoming(Incoming::SubAck(_))) {}
    client.disconnect().await?;
    while eventloop.poll().await.is_ok() {}
    preload(port, &topic);
    let (_client, mut eventloop) = AsyncClient::new(options(port, &id), 1024);
    let started = Instant::now();
    let mut received = 0;
    while received < RECORDS {
        if let Event::Incoming(Incoming::Publish(_)) = eventloop.poll().await? {
            received += 1;
        }
    }
    Ok(RECORDS as f64 / started.elapsed().as_secs_f64())
}

/// Drains `RECORDS` queued messages through the provider into a native step; records/s and the
/// provider's RSS afterwards.
async fn provider_rate(
    provider: &mut HostedProvider,
    client: &async_nats::Client,
    mqtt: &Mosquitto,
    ordered: &str,
    round: usize,
) -> anyhow::Result<(f64, u64)> {
    let component = format!("bench-step-{ordered}-{round}");
    let topic = format!("bench/{ordered}/{round}");
    let url = mqtt.url();
    let config = [
        ("url", url.as_str()),
        ("topics", topic.as_str()),
        ("qos", "1"),
        ("max_batch_records", "256"),
        ("receive_maximum", "1000"),
        ("ordered", ordered),
    ];
    let step = FakeComponent::serve(client, "default", &component).await?;
    step.keep_records(false);
    let link = Link::source(PROVIDER, &component, "default", &config);
    // Subscribe with a persistent session, leave, queue the messages, come back and drain.
    provider.put_link(link.clone()).await?;
    provider.delete_link(&link).await?;
    preload(mqtt.port, &topic);
    let started = Instant::now();
    provider.put_link(link.clone()).await?;
    let done = step
        .wait_for(Duration::from_secs(300), |c| c.accepted_count() >= RECORDS)
        .await;
    anyhow::ensure!(done, "the provider delivered {} of {RECORDS}", step.accepted_count());
    let rate = RECORDS as f64 / started.elapsed().as_secs_f64();
    let rss = provider.rss_kib().unwrap_or_default();
    provider.delete_link(&link).await?;
    Ok((rate, rss))
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_integration::init_tracing();
    let nats = NatsServer::start()?;
    let mqtt = Mosquitto::start()?;
    let client = nats.connect().await?;
    let mut provider = HostedProvider::start(&nats, env!("CARGO_BIN_EXE_sluice-provider-mqtt"), PROVIDER, &[]).await?;

    let (mut raw, mut ordered, mut unordered, mut rss) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..ROUNDS {
        raw.push(raw_rate(mqtt.port, round).await?);
        let (rate, kib) = provider_rate(&mut provider, &client, &mqtt, "true", round).await?;
        ordered.push(rate);
        rss = rss.max(kib);
        let (rate, kib) = provider_rate(&mut provider, &client, &mqtt, "false", round).await?;
        unordered.push(rate);
        rss = rss.max(kib);
    }

    println!(
        "MQTT QoS 1, {PAYLOAD} B payloads, {RECORDS} messages queued on one local Mosquitto, then drained; \
         medians of {ROUNDS} interleaved rounds"
    );
    println!("{:<58} {:>10} {:>7}   rounds", "path", "records/s", "ratio");
    let raw_median = median(raw.clone());
    for (path, rates) in [
        ("raw rumqttc subscriber (automatic acks)", raw),
        ("provider -> component, acks after deliver, ordered=true", ordered),
        ("provider -> component, acks after deliver, ordered=false", unordered),
    ] {
        let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        let m = median(rates);
        println!("{path:<58} {m:>10.0} {:>6.2}x   {}", m / raw_median, all.join(" "));
    }
    println!("provider peak RSS after a drain: {rss} KiB");
    Ok(())
}
