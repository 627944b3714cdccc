//! Kafka -> provider -> component (1 KiB records) next to a raw rdkafka consumer, and component ->
//! provider -> Kafka next to a raw rdkafka producer, on the same broker in the same run. Prints
//! records/s, ratios and the provider's RSS; asserts nothing.
//!
//! `cargo bench -p sluice-provider-kafka --bench kafka`

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sluice_integration::component::FakeComponent;
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::servers::{KafkaBroker, NatsServer};
use sluice_provider_core::Message;

const PROVIDER: &str = "sluice-provider-kafka";
const RECORDS: usize = 20_000;
const PAYLOAD: usize = 1024;

async fn create_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
    }
    Ok(())
}

fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()?)
}

/// Raw producer: records/s for `RECORDS` 1 KiB records, all awaited.
async fn raw_produce(bootstrap: &str, topic: &str) -> anyhow::Result<f64> {
    let producer = producer(bootstrap)?;
    let payload = vec![b'x'; PAYLOAD];
    let started = Instant::now();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(512) {
        let sends = chunk.iter().map(|i| {
            let key = format!("k{}", i % 30);
            let producer = &producer;
            let payload = &payload;
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).payload(payload).key(&key),
                        Duration::from_secs(30),
                    )
                    .await
            }
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    Ok(RECORDS as f64 / started.elapsed().as_secs_f64())
}

/// Raw consumer: records/s draining `RECORDS` from `topic` in a fresh group.
async fn raw_consume(bootstrap: &str, topic: &str) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let first = consumer.recv().await?;
    drop(first);
    let started = Instant::now();
    for _ in 1..RECORDS {
        consumer.recv().await?;
    }
    Ok((RECORDS - 1) as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_integration::init_tracing();
    let nats = NatsServer::start()?;
    let kafka = KafkaBroker::start()?;
    let bootstrap = kafka.bootstrap();
    for topic in ["bench-in", "bench-raw-out", "bench-out"] {
        create_topic(&bootstrap, topic).await?;
    }
    let raw_produced = raw_produce(&bootstrap, "bench-in").await?;
    let raw_consumed = raw_consume(&bootstrap, "bench-in").await?;

    let client = nats.connect().await?;
    let mut provider = HostedProvider::start(&nats, env!("CARGO_BIN_EXE_sluice-provider-kafka"), PROVIDER, &[]).await?;

    // Source: the same topic, drained by the provider into a native step.
    let step = FakeComponent::serve(&client, "default", "bench-step").await?;
    step.keep_records(false);
    let config = [
        ("bootstrap_servers", bootstrap.as_str()),
        ("topics", "bench-in"),
        ("max_batch_records", "256"),
    ];
    provider
        .put_link(Link::source(PROVIDER, "bench-step", "default", &config))
        .await?;
    // Timed from the first delivered batch, as the raw consumer is timed from its first record:
    // joining the group is not throughput.
    anyhow::ensure!(
        step.wait_for(Duration::from_secs(60), |c| c.accepted_count() > 0).await,
        "the source delivered nothing"
    );
    let (started, first) = (Instant::now(), step.accepted_count());
    anyhow::ensure!(
        step.wait_for(Duration::from_secs(300), |c| c.accepted_count() >= RECORDS)
            .await,
        "source delivered {} of {RECORDS}",
        step.accepted_count()
    );
    let sourced = (RECORDS - first) as f64 / started.elapsed().as_secs_f64();
    let rss_source = provider.rss_kib().unwrap_or_default();

    // Sink: a component writes the same records in batches of 512.
    let sink = [("bootstrap_servers", bootstrap.as_str()), ("topic", "bench-out")];
    provider
        .put_link(Link::sink("bench-writer", PROVIDER, "default", &sink))
        .await?;
    let writer = FakeComponent::serve(&client, "default", "bench-writer").await?;
    let batch: Vec<Message> = (0..512)
        .map(|i| {
            let mut m = Message::new(vec![b'x'; PAYLOAD], "bench");
            m.key = Some(format!("k{}", i % 30).into_bytes().into());
            m
        })
        .collect();
    let started = Instant::now();
    let mut written = 0;
    while written < RECORDS {
        writer
            .write(PROVIDER, "default", &batch)
            .await?
            .map_err(|f| anyhow::anyhow!("write failed: {f:?}"))?;
        written += batch.len();
    }
    let sunk = written as f64 / started.elapsed().as_secs_f64();
    let rss_sink = provider.rss_kib().unwrap_or_default();

    println!("Kafka (Tansu, sqlite) on 127.0.0.1, {PAYLOAD} B records, 3 partitions, {RECORDS} records");
    println!(
        "{:<48} {:>10} {:>8} {:>14}",
        "path", "records/s", "ratio", "provider RSS"
    );
    println!("{:<48} {:>10.0} {:>7.2}x", "raw rdkafka consumer", raw_consumed, 1.0);
    println!(
        "{:<48} {:>10.0} {:>7.2}x {:>10} KiB",
        "Kafka -> provider -> step (commit after deliver)",
        sourced,
        sourced / raw_consumed,
        rss_source
    );
    println!(
        "{:<48} {:>10.0} {:>7.2}x",
        "raw rdkafka producer (acks=all, idempotent)", raw_produced, 1.0
    );
    println!(
        "{:<48} {:>10.0} {:>7.2}x {:>10} KiB",
        "step -> provider -> Kafka (batches of 512)",
        sunk,
        sunk / raw_produced,
        rss_sink
    );
    Ok(())
}
