//! Records per second of 1 KiB through the hop, sink -> JetStream -> source: the provider's
//! connectors driven by the delivery engine (a sink link written by concurrent callers, a source
//! link delivering to an in-process component), next to a raw async-nats loop on the same
//! nats-server in the same run (as many concurrent publishers, each publishing a batch and awaiting
//! its PubAcks, and one pull consumer acknowledging each message). Prints a table with the ratio
//! and this process's RSS; asserts nothing.
//!
//! `cargo bench -p sluice-provider-jetstream --bench hop`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use sluice_integration::procfs;
use sluice_integration::servers::NatsServer;
use sluice_provider_core::testing::MemoryIngest;
use sluice_provider_core::{Engine, LinkKey, LinkSpec, Message, RunnerSettings};
use sluice_provider_jetstream::{JetStreamSink, JetStreamSource};

/// Records per run.
const RECORDS: usize = 20_000;
/// Records per write (the sink's batch; the raw loop's PubAck wait).
const BATCH: usize = 100;
/// Concurrent writers on both sides.
const WRITERS: usize = 4;
/// Payload size.
const SIZE: usize = 1024;
const ROUNDS: usize = 2;

fn rss_mib() -> String {
    let pid = std::process::id();
    let kib = |field| procfs::memory_kib(pid, field).unwrap_or(0) as f64 / 1024.0;
    format!("{:.0} MiB (peak {:.0})", kib("VmRSS"), kib("VmHWM"))
}

/// Records per second through the provider's sink and source links.
async fn provider_rate(nats: &NatsServer, run: usize) -> anyhow::Result<f64> {
    let engine = Arc::new(Engine::new(JetStreamSource, JetStreamSink));
    let prefix = format!("bench.hop{run}");
    let config = |extra: &[(&str, &str)]| -> HashMap<String, String> {
        [
            ("url", nats.url().as_str()),
            ("subject_prefix", prefix.as_str()),
            ("subject", &format!("{prefix}.records")),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    engine
        .put_sink_link(LinkSpec::new(LinkKey::new("writer", "default"), config(&[])))
        .await?;
    let ingest = MemoryIngest::default();
    let step = ingest.clone();
    engine
        .put_source_link(
            LinkSpec::new(LinkKey::new("reader", "default"), config(&[("linger", "2ms")])),
            || async move { Ok(step) },
        )
        .await?;
    let payload = Bytes::from(vec![b'x'; SIZE]);
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (engine, payload) = (Arc::clone(&engine), payload.clone());
        writers.spawn(async move {
            for b in 0..RECORDS / WRITERS / BATCH {
                let batch = (0..BATCH)
                    .map(|i| Message::new(payload.clone(), format!("bench:{w}@{}", b * BATCH + i)))
                    .collect();
                engine.write("writer", "default", batch).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ingest.accepted().len() < RECORDS {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the source delivered {} of {RECORDS}",
            ingest.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    engine.shutdown().await;
    Ok(RECORDS as f64 / elapsed.as_secs_f64())
}

/// Records per second of raw async-nats publishing and pull-consuming the same way.
async fn raw_rate(nats: &NatsServer, run: usize) -> anyhow::Result<f64> {
    let js = jetstream::new(nats.connect().await?);
    let subject = format!("bench.raw{run}.records");
    let stream = js
        .create_stream(stream::Config {
            name: format!("bench_raw{run}"),
            subjects: vec![format!("bench.raw{run}.>")],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("reader".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: i64::try_from(RunnerSettings::default().max_unacknowledged())?,
            ..Default::default()
        })
        .await?;
    let payload = Bytes::from(vec![b'x'; SIZE]);
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        for _ in 0..RECORDS {
            let message = messages
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("the consumer ended"))?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    });
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
        writers.spawn(async move {
            for _ in 0..RECORDS / WRITERS / BATCH {
                let mut acks = Vec::with_capacity(BATCH);
                for _ in 0..BATCH {
                    acks.push(js.publish(subject.clone(), payload.clone()).await?);
                }
                for ack in futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await {
                    ack?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    reader.await??;
    Ok(RECORDS as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    println!("{RECORDS} records of {SIZE} B, {WRITERS} concurrent writers of {BATCH}-record batches, file storage");
    println!("| round | raw async-nats (records/s) | provider hop (records/s) | ratio | RSS after |");
    println!("|---|---|---|---|---|");
    let (mut raw_total, mut hop_total) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let raw = raw_rate(&nats, round).await?;
        let hop = provider_rate(&nats, round).await?;
        raw_total += raw;
        hop_total += hop;
        println!(
            "| {} | {raw:.0} | {hop:.0} | {:.2}x | {} |",
            round + 1,
            hop / raw,
            rss_mib()
        );
    }
    println!(
        "mean: raw {:.0} records/s, provider hop {:.0} records/s, ratio {:.2}x",
        raw_total / ROUNDS as f64,
        hop_total / ROUNDS as f64,
        hop_total / raw_total
    );
    Ok(())
}
