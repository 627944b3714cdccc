//! Sink and source throughput of the hosted provider against SeaweedFS on 127.0.0.1, next to a
//! raw aws-sdk-s3 client doing the same work in the same run. Prints a table; asserts nothing.
//!
//! `cargo bench -p sluice-provider-s3 --bench s3` (`SLUICE_BENCH_MIB` sets the sink volume,
//! default 128).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use common::{Env, BINARY, PROVIDER};
use futures::StreamExt as _;
use sluice_integration::component::FakeComponent;
use sluice_integration::host::HostedProvider;
use sluice_integration::seaweedfs::object;
use sluice_provider_core::{Failure, Message};

const RECORD: usize = 1024;
const BATCH: usize = 512;
const WRITERS: usize = 16;
const PART: usize = 5 << 20;

fn record(i: usize) -> Vec<u8> {
    let mut p = format!("{i:012}:").into_bytes();
    p.resize(RECORD, b'x');
    p
}

/// The raw baseline: the same bytes as multipart objects of `object` bytes, 5 MiB parts.
async fn raw_sink(env: &Env, total: usize, object: usize) -> Duration {
    let started = Instant::now();
    let mut written = 0;
    let mut n = 0;
    while written < total {
        let key = format!("raw/{n:06}.txt");
        n += 1;
        let id = env
            .client
            .create_multipart_upload()
            .bucket("bench")
            .key(&key)
            .send()
            .await
            .unwrap()
            .upload_id()
            .unwrap()
            .to_string();
        let mut parts = Vec::new();
        let mut in_object = 0;
        while in_object < object && written < total {
            let mut body = Vec::with_capacity(PART + RECORD);
            while body.len() < PART && in_object < object && written < total {
                body.extend_from_slice(&record(written / RECORD));
                body.push(b'\n');
                in_object += RECORD;
                written += RECORD;
            }
            let number = parts.len() as i32 + 1;
            let out = env
                .client
                .upload_part()
                .bucket("bench")
                .key(&key)
                .upload_id(&id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .unwrap();
            parts.push(
                CompletedPart::builder()
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .part_number(number)
                    .build(),
            );
        }
        env.client
            .complete_multipart_upload()
            .bucket("bench")
            .key(&key)
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .unwrap();
    }
    started.elapsed()
}

async fn provider_sink(env: &Env, step: &FakeComponent, total: usize) -> (Duration, u64) {
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    provider
        .put_link(env.sink_link(
            "bench-step",
            "default",
            "bench",
            &[
                ("key_template", "sink/{unique}.txt"),
                ("format", "raw"),
                ("part_size", "5MiB"),
                ("max_concurrent_writes", "16"),
                ("max_object_age", "2s"),
            ],
        ))
        .await
        .unwrap();
    let (stop, peak) = common::sample_rss(provider.pid().unwrap());
    let records = total / RECORD;
    let started = Instant::now();
    futures::stream::iter((0..records).step_by(BATCH))
        .for_each_concurrent(WRITERS, |start| async move {
            let batch: Vec<Message> = (start..(start + BATCH).min(records))
                .map(|i| Message::new(record(i), "bench"))
                .collect();
            loop {
                match tokio::time::timeout(Duration::from_secs(30), step.write(PROVIDER, "default", &batch)).await {
                    Ok(Ok(Ok(()))) => return,
                    Ok(Ok(Err(Failure::Reject(r)))) => panic!("rejected: {r:?}"),
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await;
    let elapsed = started.elapsed();
    drop(stop);
    let peak = peak.await.unwrap();
    provider.terminate().await.unwrap();
    (elapsed, peak)
}

/// The raw baseline: list + get every object, counting lines.
async fn raw_source(env: &Env) -> (Duration, usize) {
    let started = Instant::now();
    let mut lines = 0;
    for (key, _) in env.list("bench", "src/").await {
        let body = object(&env.client, "bench", &key).await.unwrap();
        lines += body.iter().filter(|b| **b == b'\n').count();
    }
    (started.elapsed(), lines)
}

async fn provider_source(env: &Env, lines: usize) -> (Duration, u64) {
    let client = env.nats.connect().await.unwrap();
    let _step = FakeComponent::serve(&client, "default", "bench-src").await.unwrap();
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    let (stop, peak) = common::sample_rss(provider.pid().unwrap());
    let started = Instant::now();
    provider
        .put_link(env.source_link(
            "bench-src",
            "default",
            "bench",
            &[("prefix", "src/"), ("max_batch_records", "1000"), ("linger", "2ms")],
        ))
        .await
        .unwrap();
    loop {
        let status = provider.status().await.unwrap();
        if status
            .links
            .first()
            .is_some_and(|l| l.metrics.delivered as usize >= lines)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    drop(stop);
    let peak = peak.await.unwrap();
    provider.terminate().await.unwrap();
    (elapsed, peak)
}

#[tokio::main]
async fn main() {
    let total = std::env::var("SLUICE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(128)
        << 20;
    let env = Env::start().await;
    env.bucket("bench").await;
    let client = env.nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "bench-step").await.unwrap();
    let mib = (total >> 20) as f64;
    let records = (total / RECORD) as f64;

    println!("SeaweedFS 4.48 and nats-server on 127.0.0.1, 2 shared cores; records of {RECORD} B");
    println!("sink: {WRITERS} callers x {BATCH}-record batches through wRPC; raw: one aws-sdk-s3 multipart upload loop, 5 MiB parts, objects of the same size");
    let object = WRITERS * BATCH * RECORD;
    let raw = raw_sink(&env, total, object).await;
    let (sink, sink_peak) = provider_sink(&env, &step, total).await;
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>12} {:>8} {:>10}",
        "", "raw MiB/s", "raw rec/s", "MiB/s", "rec/s", "ratio", "peak RSS"
    );
    println!(
        "{:>8} {:>10.1} {:>12.0} {:>10.1} {:>12.0} {:>7.2}x {:>7} MiB",
        "sink",
        mib / raw.as_secs_f64(),
        records / raw.as_secs_f64(),
        mib / sink.as_secs_f64(),
        records / sink.as_secs_f64(),
        raw.as_secs_f64() / sink.as_secs_f64(),
        sink_peak / 1024
    );

    // Source: 20 objects of 10,000 lines of about 100 bytes.
    let (objects, per) = (20, 10_000);
    for o in 0..objects {
        let mut body = String::new();
        for l in 0..per {
            body.push_str(&format!("{o:02}-{l:06}-{}\n", "y".repeat(88)));
        }
        env.client
            .put_object()
            .bucket("bench")
            .key(format!("src/{o:02}.txt"))
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .unwrap();
    }
    let (raw, lines) = raw_source(&env).await;
    let (source, source_peak) = provider_source(&env, lines).await;
    let src_mib = (lines * 100) as f64 / (1 << 20) as f64;
    println!(
        "{:>8} {:>10.1} {:>12.0} {:>10.1} {:>12.0} {:>7.2}x {:>7} MiB",
        "source",
        src_mib / raw.as_secs_f64(),
        lines as f64 / raw.as_secs_f64(),
        src_mib / source.as_secs_f64(),
        lines as f64 / source.as_secs_f64(),
        raw.as_secs_f64() / source.as_secs_f64(),
        source_peak / 1024
    );
    println!("ratio = provider throughput / raw throughput; source raw = list + get + count lines, no delivery");
}
