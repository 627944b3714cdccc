//! Throughput of the delivery engine over NATS, next to a raw async-nats request/reply loop of the
//! same 1 KiB payloads measured in the same run. Prints a table; asserts nothing.
//!
//! `cargo run --release -p sluice-integration --bin bench-core`

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use sluice_integration::component::FakeComponent;
use sluice_integration::servers::NatsServer;
use sluice_provider_core::testing::MemorySource;
use sluice_provider_core::wrpc::{nats, WrpcIngest};
use sluice_provider_core::{Engine, LinkKey, LinkSpec, Message, Unsupported};

const PAYLOAD: usize = 1024;

/// Records per second through the engine at `batch` records per batch.
async fn engine_rate(nats: &NatsServer, batch: usize, records: usize) -> anyhow::Result<f64> {
    let client = nats.connect().await?;
    let component_id = format!("bench-{batch}");
    let _component = FakeComponent::serve(&client, "default", &component_id).await?;
    let source = MemorySource::default();
    let engine = Engine::new(source.clone(), Unsupported);
    let key = LinkKey::new(&component_id, "default");
    let stream = source.stream(&key);
    stream.push((0..records).map(|i| Message::new(vec![b'x'; PAYLOAD], format!("bench@{i}"))));
    let config = [
        ("max_batch_records", batch.to_string()),
        ("max_batch_bytes", "64MiB".to_string()),
        ("linger", "1ms".to_string()),
        ("max_in_flight", "4".to_string()),
    ];
    let spec = LinkSpec::new(key, config.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    let prefix = format!("default.{component_id}");
    let started = Instant::now();
    engine
        .put_source_link(spec, || async move {
            Ok(WrpcIngest::new(nats::Client::new(client, prefix, None).await?))
        })
        .await?;
    let done = stream
        .wait_for(Duration::from_secs(300), |s| s.acked_count() == records)
        .await;
    anyhow::ensure!(done, "engine run did not finish");
    let elapsed = started.elapsed();
    engine.shutdown().await;
    Ok(records as f64 / elapsed.as_secs_f64())
}

/// Records per second of a plain request/reply loop carrying `batch` records' bytes per request.
async fn raw_rate(nats: &NatsServer, batch: usize, records: usize) -> anyhow::Result<f64> {
    let responder = nats.connect().await?;
    let mut sub = responder.subscribe("bench.raw").await?;
    let server = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, Bytes::new()).await;
            }
        }
    });
    let client = nats.connect().await?;
    client.flush().await?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD * batch]);
    let started = Instant::now();
    for _ in 0..records / batch {
        client.request("bench.raw", payload.clone()).await?;
    }
    let elapsed = started.elapsed();
    server.abort();
    Ok(records as f64 / elapsed.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As in a provider: a subscriber at the usual level, so disabled trace spans cost nothing.
    sluice_integration::init_tracing();
    let nats = NatsServer::start()?;
    println!("records of {PAYLOAD} B, one nats-server on 127.0.0.1; raw = sequential async-nats request/reply");
    println!("carrying the same bytes per request; engine = provider-core runner, max_in_flight 4, wRPC");
    println!(
        "{:>6} {:>14} {:>14} {:>14} {:>16}",
        "batch", "raw rec/s", "engine rec/s", "engine/raw", "engine/batch 1"
    );
    let mut per_record = None;
    for (batch, records) in [(1, 5_000), (64, 50_000), (512, 100_000)] {
        let raw = raw_rate(&nats, batch, records).await?;
        let rate = engine_rate(&nats, batch, records).await?;
        let base = *per_record.get_or_insert(rate);
        println!(
            "{batch:>6} {raw:>14.0} {rate:>14.0} {:>13.2}x {:>15.2}x",
            rate / raw,
            rate / base
        );
    }
    Ok(())
}
