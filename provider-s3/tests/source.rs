//! The S3 source, hosted as wasmCloud hosts it, against SeaweedFS on 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::{Env, BINARY, PROVIDER};
use futures::StreamExt as _;
use sluice_integration::component::{FakeComponent, Reply};
use sluice_integration::host::HostedProvider;

const OBJECTS: usize = 50;
const LINES: usize = 10_000;

fn line(object: usize, line: usize) -> String {
    format!("obj{object:02}-line{line:05}")
}

/// Waits until the component holds at least `n` records (polling; `accepted()` copies).
async fn wait_accepted(step: &FakeComponent, n: usize, within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = step.accepted().len();
        if got >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A component `component` and a provider with a source link `default` of `bucket` to it.
async fn start_source(
    env: &Env,
    component: &str,
    bucket: &str,
    extra: &[(&str, &str)],
) -> (FakeComponent, HostedProvider) {
    let client = env.nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", component).await.unwrap();
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    provider
        .put_link(env.source_link(component, "default", bucket, extra))
        .await
        .unwrap();
    (step, provider)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_midway_loses_no_line_and_resumes_from_the_checkpoint() {
    let env = Env::start().await;
    env.bucket("src").await;
    for o in 0..OBJECTS {
        let mut body = String::with_capacity(LINES * 20);
        for l in 0..LINES {
            body.push_str(&line(o, l));
            body.push('\n');
        }
        env.client
            .put_object()
            .bucket("src")
            .key(format!("in/{o:02}.txt"))
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .unwrap();
    }
    // Not under the prefix: never read.
    env.client
        .put_object()
        .bucket("src")
        .key("other/x.txt")
        .body(ByteStream::from_static(b"nope\n"))
        .send()
        .await
        .unwrap();
    let client = env.nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-src").await.unwrap();
    step.behave(|_| Reply::AcceptAfter(Duration::from_millis(2)));
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    let link = env.source_link(
        "step-src",
        "default",
        "src",
        &[
            ("prefix", "in/"),
            ("poll_interval", "500ms"),
            ("max_batch_records", "500"),
        ],
    );
    provider.put_link(link).await.unwrap();
    let total = OBJECTS * LINES;
    let midway = wait_accepted(&step, total / 2, Duration::from_secs(240)).await;
    assert!(midway >= total / 2, "only {midway} delivered:\n{}", provider.logs());
    provider.kill().await.unwrap();
    // Deliveries already inside the component finish; then nothing arrives until the restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_kill = step.accepted().len();
    let checkpoint = env.get("src", "_sluice/checkpoints/step-src/default.json").await;
    let checkpoint: serde_json::Value = serde_json::from_slice(&checkpoint).unwrap();
    eprintln!(
        "killed after {at_kill} lines; checkpoint: done up to {}, current {}",
        checkpoint["after"], checkpoint["current"]
    );
    provider.restart().await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let mut counts: HashMap<String, u32> = HashMap::new();
    loop {
        let accepted = step.accepted();
        counts.clear();
        for m in &accepted {
            *counts
                .entry(String::from_utf8(m.payload.to_vec()).unwrap())
                .or_insert(0) += 1;
        }
        if counts.len() >= total || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut lost = 0;
    for o in 0..OBJECTS {
        for l in 0..LINES {
            if !counts.contains_key(&line(o, l)) {
                lost += 1;
            }
        }
    }
    let accepted = step.accepted();
    let duplicates = accepted.len() - counts.len();
    eprintln!("source: {total} lines, {lost} lost, {duplicates} delivered twice after kill -9");
    assert_eq!(lost, 0, "lines lost:\n{}", provider.logs());
    assert_eq!(counts.len(), total, "only the prefix is read");
    // Redelivered: at most what was read and not yet checkpointed (read-ahead + in flight).
    assert!(duplicates <= 1024 + 4 * 500 + 500, "{duplicates} duplicates");
    // Origins name bucket, key and line; the key is the object key; lines in order per object.
    let first = accepted
        .iter()
        .find(|m| m.payload.as_ref() == line(3, 0).as_bytes())
        .unwrap();
    assert_eq!(first.origin, "s3:src/in/03.txt#1");
    assert_eq!(first.key.as_deref(), Some(&b"in/03.txt"[..]));
    let mut last_line: HashMap<&[u8], usize> = HashMap::new();
    for m in accepted.iter().skip(at_kill) {
        let n: usize = m.origin.rsplit_once('#').unwrap().1.parse().unwrap();
        let prev = last_line.insert(m.key.as_deref().unwrap(), n);
        assert!(prev.is_none_or(|p| p < n), "order within {:?}", m.origin);
    }

    // Nothing more arrives: the checkpoint holds every object as done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(step.accepted().len(), accepted.len(), "no redelivery once done");
    provider.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_done_with_a_local_checkpoint_and_jsonl_split() {
    let env = Env::start().await;
    env.bucket("src2").await;
    let client = env.nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-j").await.unwrap();
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    let checkpoint = provider.dir().join("j.checkpoint.json");
    for o in 0..3 {
        env.client
            .put_object()
            .bucket("src2")
            .key(format!("j/{o}.jsonl"))
            .body(ByteStream::from(
                format!("{{\"n\":{o}}}\nnot json\r\n{{\"last\":true}}").into_bytes(),
            ))
            .send()
            .await
            .unwrap();
    }
    provider
        .put_link(env.source_link(
            "step-j",
            "default",
            "src2",
            &[
                ("prefix", "j/"),
                ("split", "jsonl"),
                ("after_done", "move"),
                ("move_prefix", "done/"),
                ("checkpoint_file", checkpoint.to_str().unwrap()),
                ("poll_interval", "200ms"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(wait_accepted(&step, 9, Duration::from_secs(30)).await, 9);
    let accepted = step.accepted();
    let bad: Vec<_> = accepted
        .iter()
        .filter(|m| m.headers.iter().any(|(n, _)| n == "sluice-error"))
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        bad,
        ["not json", "not json", "not json"],
        "the invalid line is flagged, CR stripped"
    );
    // Moved once the checkpoint recorded them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !env.list("src2", "j/").await.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.list("src2", "j/").await.is_empty(), "moved away");
    assert_eq!(env.list("src2", "done/j/").await.len(), 3);
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    assert!(stored["current"].is_null(), "{stored}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(step.accepted().len(), 9, "moved objects are not read again");
    provider.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_longer_than_max_record_size_is_skipped_in_bounded_memory() {
    let env = Env::start().await;
    env.bucket("long").await;
    // 64 MiB without a newline, then ordinary lines; an object after it; one that is a single
    // line of 2 MiB (no record at all, yet it must be marked done and not read again).
    let mut body = vec![b'x'; 64 << 20];
    body.extend_from_slice(b"\nafter-1\nafter-2\n");
    common::put(&env.client, "long", "l/0-long.txt", body).await;
    common::put(&env.client, "long", "l/1-next.txt", "next-1\n").await;
    common::put(&env.client, "long", "l/2-only-long.txt", vec![b'y'; 2 << 20]).await;
    let (step, mut provider) = start_source(
        &env,
        "step-long",
        "long",
        &[("prefix", "l/"), ("poll_interval", "200ms")],
    )
    .await;
    assert_eq!(
        wait_accepted(&step, 3, Duration::from_secs(60)).await,
        3,
        "{}",
        provider.logs()
    );
    // A few more listings: the skipped lines are not read again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let payloads = sluice_integration::component::payloads(&step.accepted());
    assert_eq!(payloads, ["after-1", "after-2", "next-1"]);
    let peak = common::peak_rss_kib(provider.pid().unwrap());
    let logs = provider.logs();
    eprintln!("64 MiB line skipped; provider peak RSS {} MiB", peak / 1024);
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    assert!(
        logs.contains("s3:long/l/0-long.txt#1"),
        "the skipped line is logged by origin:\n{logs}"
    );
    assert_eq!(
        logs.matches("s3:long/l/2-only-long.txt#1").count(),
        1,
        "an object of only a skipped line is done after one read:\n{logs}"
    );
    provider.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_stays_small_over_20000_objects_and_state_is_never_read() {
    const COUNT: usize = 20_000;
    let env = Env::start().await;
    env.bucket("many").await;
    let started = std::time::Instant::now();
    futures::stream::iter(0..COUNT)
        .for_each_concurrent(64, |i| {
            let client = env.client.clone();
            async move { common::put(&client, "many", &format!("o/{i:05}.txt"), format!("rec-{i:05}\n")).await }
        })
        .await;
    eprintln!("{COUNT} objects put in {:?}", started.elapsed());
    // Another link's checkpoint and a sink's upload marker, in the bucket this link reads whole.
    common::put(&env.client, "many", "_sluice/checkpoints/step-other/default.json", "{}").await;
    common::put(&env.client, "many", "_sluice/uploads/step-other/default/x.txt", "").await;
    let (step, mut provider) = start_source(
        &env,
        "step-many",
        "many",
        &[("poll_interval", "300ms"), ("max_batch_records", "500")],
    )
    .await;
    // The checkpoint's size as the link advances: read while records arrive.
    let key = "_sluice/checkpoints/step-many/default.json";
    let started = std::time::Instant::now();
    let mut sizes: Vec<(usize, usize)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let accepted = step.accepted_count();
        if let Ok(body) = sluice_integration::seaweedfs::object(&env.client, "many", key).await {
            sizes.push((accepted, body.len()));
        }
        if accepted >= COUNT || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{} records delivered in {:?}", step.accepted_count(), started.elapsed());
    // A few more listings: nothing else arrives, own state included.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = step.accepted();
    let keys: Vec<String> = accepted
        .iter()
        .map(|m| String::from_utf8_lossy(m.key.as_deref().unwrap()).into_owned())
        .collect();
    let state: Vec<&String> = keys.iter().filter(|k| k.starts_with("_sluice/")).collect();
    assert!(state.is_empty(), "Sluice state read as data: {state:?}");
    assert_eq!(accepted.len(), COUNT, "each object once:\n{}", provider.logs());
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), COUNT);

    let stored = sluice_integration::seaweedfs::object(&env.client, "many", key)
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["after"], format!("o/{:05}.txt", COUNT - 1), "{stored}");
    let checkpoint_sizes: Vec<usize> = sizes.iter().map(|(_, s)| *s).collect();
    let largest = checkpoint_sizes.iter().max().copied().unwrap_or(0);
    eprintln!(
        "checkpoint size while {COUNT} objects were read (records accepted, bytes): first {:?}, last {:?}, largest {largest} B",
        sizes.first(),
        sizes.last()
    );
    assert!(
        sizes.len() >= 3,
        "the checkpoint was sampled while records arrived: {sizes:?}"
    );
    // Flat: the same few hundred bytes at the first object and at the last.
    assert!(largest < 512, "checkpoint grows with the bucket: {sizes:?}");
    provider.terminate().await.unwrap();

    // For the record (not asserted): one save now, and one of the checkpoint as it was before
    // the high-water mark (every finished key with its ETag).
    let before: serde_json::Value = serde_json::json!({
        "done": (0..COUNT)
            .map(|i| (format!("o/{i:05}.txt"), serde_json::json!("\"0123456789abcdef0123456789abcdef\"")))
            .collect::<serde_json::Map<_, _>>(),
        "current": null,
    });
    for (name, body) in [("now", stored.to_string()), ("before", before.to_string())] {
        let started = std::time::Instant::now();
        for _ in 0..5 {
            common::put(&env.client, "many", "_sluice/timing.json", body.clone()).await;
        }
        eprintln!(
            "checkpoint save {name}: {} B, {:?} each",
            body.len(),
            started.elapsed() / 5
        );
    }
}
