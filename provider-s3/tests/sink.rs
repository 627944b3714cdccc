//! The S3 sink, hosted as wasmCloud hosts it, against SeaweedFS on 127.0.0.1.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{Env, BINARY, PROVIDER};
use futures::StreamExt as _;
use sluice_integration::component::FakeComponent;
use sluice_integration::host::HostedProvider;
use sluice_integration::seaweedfs::object;
use sluice_provider_core::{Failure, Message};

/// A record of the partition test: hour 13 or 14 of 2024-02-29, key a/b, tenant acme/globex.
fn partitioned(i: usize) -> Message {
    let mut m = Message::new(format!("rec-{i}"), format!("test:p@{i}"));
    m.timestamp_ms = Some(1_709_211_600_000 + (i as u64 % 2) * 3_600_000 + i as u64);
    m.key = Some(if i.is_multiple_of(3) { "a/1" } else { "b" }.as_bytes().to_vec().into());
    if !i.is_multiple_of(5) {
        m.headers = vec![(
            "tenant".into(),
            if i.is_multiple_of(4) { "acme" } else { "globex" }
                .as_bytes()
                .to_vec()
                .into(),
        )];
    }
    m
}

fn expected_prefix(i: usize) -> String {
    let hour = if i.is_multiple_of(2) { "13" } else { "14" };
    let key = if i.is_multiple_of(3) { "a%2F1" } else { "b" };
    let tenant = match (i % 5, i % 4) {
        (0, _) => "_none",
        (_, 0) => "acme",
        _ => "globex",
    };
    format!("t/2024-02-29/{hour}/{key}/{tenant}/orders/")
}

fn is_unique_suffix(name: &str) -> bool {
    // 20240229T134545Z-000000ab-000007
    let b = name.as_bytes();
    b.len() == 32
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..25].iter().all(u8::is_ascii_hexdigit)
        && b[25] == b'-'
        && b[26..].iter().all(u8::is_ascii_digit)
}

async fn write_ok(step: &FakeComponent, link: &str, batch: &[Message]) {
    match step.write(PROVIDER, link, batch).await.unwrap() {
        Ok(()) => {}
        Err(f) => panic!("write on {link} failed: {f:?}"),
    }
}

/// (key, lines) of every object under `prefix`.
async fn objects(env: &Env, bucket: &str, prefix: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (key, _) in env.list(bucket, prefix).await {
        let text = String::from_utf8(env.get(bucket, &key).await).unwrap();
        assert!(text.ends_with('\n'), "{key} does not end with a whole line");
        out.push((key, text.lines().map(str::to_string).collect()));
    }
    out
}

fn payload_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["payload"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_formats_and_every_roll_policy() {
    let env = Env::start().await;
    env.bucket("sink-test").await;
    let client = env.nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-p").await.unwrap();
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    let long_age = ("max_object_age", "1h");

    // Partitioned keys: date/hour from the record timestamp, key, header, link, unique suffix.
    provider
        .put_link(env.sink_link(
            "step-p",
            "orders",
            "sink-test",
            &[
                (
                    "key_template",
                    "t/{date}/{hour}/{key}/{header:tenant}/{link}/{unique}.jsonl",
                ),
                ("payload_encoding", "utf8"),
                ("max_open_objects", "16"),
                ("max_concurrent_writes", "1"),
                long_age,
            ],
        ))
        .await
        .unwrap();
    let batch: Vec<Message> = (0..60).map(partitioned).collect();
    write_ok(&step, "orders", &batch).await;
    let objs = objects(&env, "sink-test", "t/").await;
    let mut seen = BTreeMap::new();
    for (key, lines) in &objs {
        let (dir, name) = key.rsplit_once('/').unwrap();
        assert!(is_unique_suffix(name.strip_suffix(".jsonl").unwrap()), "{key}");
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let i: usize = v["payload"].as_str().unwrap()[4..].parse().unwrap();
            assert_eq!(format!("{dir}/"), expected_prefix(i), "record {i} in {key}");
            assert_eq!(v["origin"], format!("test:p@{i}"));
            assert_eq!(v["timestamp_ms"], partitioned(i).timestamp_ms.unwrap());
            *seen.entry(i).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 60, "every record written");
    assert!(seen.values().all(|n| *n == 1), "each once");
    let partitions: std::collections::HashSet<String> = (0..60).map(expected_prefix).collect();
    assert_eq!(objs.len(), partitions.len(), "one object per partition: {objs:?}");

    // Roll by count: 35 records, 10 per object.
    provider
        .put_link(env.sink_link(
            "step-p",
            "count",
            "sink-test",
            &[
                ("key_template", "count/{unique}.jsonl"),
                ("max_object_records", "10"),
                ("max_concurrent_writes", "1"),
                long_age,
            ],
        ))
        .await
        .unwrap();
    write_ok(&step, "count", &sluice_integration::component::records("c", 35)).await;
    let objs = objects(&env, "sink-test", "count/").await;
    let mut sizes: Vec<usize> = objs.iter().map(|(_, l)| l.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [5, 10, 10, 10]);
    let mut all: Vec<String> = objs.iter().flat_map(|(_, l)| l.iter().map(|l| payload_of(l))).collect();
    all.sort();
    let mut want = sluice_integration::component::payloads(&sluice_integration::component::records("c", 35));
    want.sort();
    // Base64 is the default payload encoding.
    let decoded: Vec<String> = all
        .iter()
        .map(|p| {
            use base64::Engine as _;
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(p).unwrap()).unwrap()
        })
        .collect();
    let mut decoded_sorted = decoded.clone();
    decoded_sorted.sort();
    assert_eq!(decoded_sorted, want);

    // Roll by size: `raw` lines of 100 bytes, objects close once they hold 1000 bytes.
    provider
        .put_link(env.sink_link(
            "step-p",
            "size",
            "sink-test",
            &[
                ("key_template", "size/{unique}.txt"),
                ("format", "raw"),
                ("max_object_bytes", "1000"),
                ("max_concurrent_writes", "1"),
                long_age,
            ],
        ))
        .await
        .unwrap();
    let lines: Vec<Message> = (0..45).map(|i| Message::new(format!("{i:099}"), "t")).collect();
    write_ok(&step, "size", &lines).await;
    let mut listed = env.list("sink-test", "size/").await;
    listed.sort();
    let sizes: Vec<u64> = listed.iter().map(|(_, s)| *s).collect();
    assert_eq!(sizes, [1000, 1000, 1000, 1000, 500], "{listed:?}");

    // Roll by age: eight write slots, one write waiting; only the age can close its object.
    provider
        .put_link(env.sink_link(
            "step-p",
            "age",
            "sink-test",
            &[
                ("key_template", "age/{unique}.jsonl"),
                ("max_object_age", "300ms"),
                ("max_concurrent_writes", "8"),
            ],
        ))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    write_ok(&step, "age", &sluice_integration::component::records("age", 5)).await;
    let waited = started.elapsed();
    let objs = objects(&env, "sink-test", "age/").await;
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].1.len(), 5);
    eprintln!("age roll: the write returned after {waited:?} (max_object_age 300ms)");

    // gzip and zstd objects decompress to the records; `raw` refuses a payload with a newline
    // by index and writes the rest.
    for (name, compression) in [("gz", "gzip"), ("zst", "zstd")] {
        provider
            .put_link(env.sink_link(
                "step-p",
                name,
                "sink-test",
                &[
                    ("key_template", &format!("{name}/{{unique}}")),
                    ("format", "raw"),
                    ("compression", compression),
                    ("max_concurrent_writes", "1"),
                ],
            ))
            .await
            .unwrap();
        let mut batch = sluice_integration::component::records(name, 500);
        batch[7].payload = b"two\nlines".to_vec().into();
        match step.write(PROVIDER, name, &batch).await.unwrap() {
            Err(Failure::Reject(rejected)) => {
                assert_eq!(rejected.len(), 1);
                assert_eq!(rejected[0].index, 7);
                assert!(rejected[0].reason.contains("newline"), "{}", rejected[0].reason);
            }
            other => panic!("expected a reject, got {other:?}"),
        }
        let listed = env.list("sink-test", &format!("{name}/")).await;
        assert_eq!(listed.len(), 1);
        let body = object(&env.client, "sink-test", &listed[0].0).await.unwrap();
        let plain = if compression == "gzip" {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out).unwrap();
            out
        } else {
            zstd::decode_all(&body[..]).unwrap()
        };
        let mut want: Vec<String> = sluice_integration::component::payloads(&batch);
        want.remove(7);
        let got: Vec<String> = String::from_utf8(plain).unwrap().lines().map(str::to_string).collect();
        assert_eq!(got, want, "{compression}");
        assert!(
            body.len() < want.iter().map(|w| w.len() + 1).sum::<usize>(),
            "{compression} compressed"
        );
    }

    let status = provider.status().await.unwrap();
    assert!(status.refused.is_empty(), "{status:?}");
    let exit = provider.terminate().await.unwrap();
    assert!(exit.success());
}

/// Payload of record `i` of the large runs: its index, then filler, `size` bytes in all.
fn big_payload(i: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{i:012}:").into_bytes();
    let fill = b"abcdefghijklmnopqrstuvwxyz0123456789";
    while p.len() < size {
        p.push(fill[(i as usize + p.len()) % fill.len()]);
    }
    p
}

/// Checks every line of every object under `prefix` is a whole record of the large runs, and
/// counts each index.
async fn count_big(env: &Env, bucket: &str, prefix: &str, size: usize, counts: &mut HashMap<u64, u32>) -> usize {
    let listed = env.list(bucket, prefix).await;
    for (key, _) in &listed {
        let body = env.get(bucket, key).await;
        assert_eq!(body.last(), Some(&b'\n'), "{key} ends mid-record");
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let i: u64 = std::str::from_utf8(&line[..12]).unwrap().parse().unwrap();
            assert_eq!(line, &big_payload(i, size)[..], "record {i} in {key} is intact");
            *counts.entry(i).or_insert(0) += 1;
        }
    }
    listed.len()
}

/// Writes records `range` in batches of `batch` records from `writers` concurrent callers,
/// retrying `retry` answers. Returns how many batches were answered `Ok`.
async fn write_big(
    step: &FakeComponent,
    link: &str,
    range: std::ops::Range<u64>,
    batch: u64,
    writers: usize,
    size: usize,
) {
    let starts: Vec<u64> = range.clone().step_by(batch as usize).collect();
    write_batches(step, link, starts, range.end, batch, writers, size).await;
}

/// Writes the batches starting at `starts` (each `batch` records, none past `end`).
async fn write_batches(
    step: &FakeComponent,
    link: &str,
    starts: Vec<u64>,
    end: u64,
    batch: u64,
    writers: usize,
    size: usize,
) {
    futures::stream::iter(starts)
        .for_each_concurrent(writers, |start| async move {
            let end = (start + batch).min(end);
            let records: Vec<Message> = (start..end)
                .map(|i| Message::new(big_payload(i, size), format!("big@{i}")))
                .collect();
            loop {
                match tokio::time::timeout(Duration::from_secs(30), step.write(PROVIDER, link, &records)).await {
                    Ok(Ok(Ok(()))) => return,
                    Ok(Ok(Err(Failure::Retry(_))) | Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                    // No answer: the write may or may not have landed; offer it again (at least once).
                    Err(_) => eprintln!("write of records {start}.. got no answer in 30 s; writing it again"),
                    Ok(Ok(Err(f))) => panic!("write failed: {f:?}"),
                }
            }
        })
        .await;
}

/// 256 MiB by default, run by every `cargo test`; `SLUICE_S3_BIG_MIB=1024` for the 1 GiB run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_input_streams_in_bounded_memory_and_reads_back_equal() {
    let total_bytes: u64 = std::env::var("SLUICE_S3_BIG_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(256)
        << 20;
    let size = 1024;
    let records = total_bytes / size as u64;
    let env = Env::start().await;
    env.bucket("big").await;
    let client = env.nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-big").await.unwrap();
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    provider
        .put_link(env.sink_link(
            "step-big",
            "default",
            "big",
            &[
                ("key_template", "big/{unique}.txt"),
                ("format", "raw"),
                ("part_size", "5MiB"),
                ("max_concurrent_writes", "12"),
                // Long enough that a slow moment on a busy machine does not close small objects
                // (the size assertion below), short enough to close the last one promptly.
                ("max_object_age", "5s"),
            ],
        ))
        .await
        .unwrap();
    let idle = provider.rss_kib().unwrap();
    let started = std::time::Instant::now();
    write_big(&step, "default", 0..records, 512, 12, size).await;
    let elapsed = started.elapsed();
    // The kernel's high-water mark: every peak since the provider started, however short.
    let peak = common::peak_rss_kib(provider.pid().unwrap());
    let mut counts = HashMap::new();
    let objects = count_big(&env, "big", "big/", size, &mut counts).await;
    let duplicates: u64 = counts.values().map(|n| u64::from(*n) - 1).sum();
    eprintln!(
        "sink: {} MiB in {elapsed:?} ({:.1} MiB/s) as {objects} objects; {duplicates} records written twice; \
         provider RSS idle {} MiB, peak {} MiB",
        total_bytes >> 20,
        (total_bytes >> 20) as f64 / elapsed.as_secs_f64(),
        idle / 1024,
        peak / 1024
    );
    assert_eq!(counts.len() as u64, records, "every record is in an object");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    assert!(
        objects as u64 <= total_bytes / (5 << 20),
        "objects are multipart-sized: {objects}"
    );
    assert_eq!(env.incomplete_uploads("big", "big/").await, 0);
    provider.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_leaves_no_partial_object_and_loses_no_acknowledged_record() {
    let size = 1024;
    let batch = 1024u64;
    let records = 48 * 1024u64;
    let env = Env::start().await;
    env.bucket("kill").await;
    let client = env.nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-kill").await.unwrap();
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    provider
        .put_link(env.sink_link(
            "step-kill",
            "default",
            "kill",
            &[
                ("key_template", "k/{unique}.txt"),
                ("format", "raw"),
                ("part_size", "5MiB"),
                ("max_concurrent_writes", "8"),
                ("max_object_age", "2s"),
                ("abort_incomplete_after", "0s"),
            ],
        ))
        .await
        .unwrap();

    // Eight callers write 1 MiB batches, once each; some are acknowledged before the kill.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writers = {
        let step = step.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let starts: Vec<u64> = (0..records).step_by(batch as usize).collect();
            futures::stream::iter(starts)
                .for_each_concurrent(8, |start| {
                    let step = step.clone();
                    let acked = acked.clone();
                    async move {
                        let batch: Vec<Message> = (start..start + batch)
                            .map(|i| Message::new(big_payload(i, size), format!("k@{i}")))
                            .collect();
                        let answer =
                            tokio::time::timeout(Duration::from_secs(20), step.write(PROVIDER, "default", &batch))
                                .await;
                        if let Ok(Ok(Ok(()))) = answer {
                            acked.lock().unwrap().push(start);
                        }
                    }
                })
                .await;
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 8 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next object is filling now: its first part is being uploaded.
    tokio::time::sleep(Duration::from_millis(400)).await;
    provider.kill().await.unwrap();
    writers.await.unwrap();
    let acked: Vec<u64> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 8, "writes were acknowledged before the kill");
    assert!(acked.len() < (records / batch) as usize, "the kill came mid-stream");

    // Right after the kill: every visible object is whole, and holds every acknowledged record.
    let mut counts = HashMap::new();
    let visible = count_big(&env, "kill", "k/", size, &mut counts).await;
    let incomplete = env.incomplete_uploads("kill", "k/").await;
    for start in &acked {
        for i in *start..start + batch {
            assert!(counts.contains_key(&i), "acknowledged record {i} missing after kill -9");
        }
    }
    eprintln!(
        "kill -9: {} of {} batches acknowledged, {visible} whole objects visible, {incomplete} incomplete uploads invisible",
        acked.len(),
        records / batch
    );

    // The restarted provider aborts what the killed one left, and takes the rest of the input.
    provider.restart().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.incomplete_uploads("kill", "k/").await > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(env.incomplete_uploads("kill", "k/").await, 0, "stale uploads aborted");
    let missing: Vec<u64> = (0..records)
        .step_by(batch as usize)
        .filter(|s| !acked.contains(s))
        .collect();
    write_batches(&step, "default", missing, records, batch, 8, size).await;
    let mut counts = HashMap::new();
    count_big(&env, "kill", "k/", size, &mut counts).await;
    let lost = (0..records).filter(|i| !counts.contains_key(i)).count();
    let duplicates: u64 = counts.values().map(|n| u64::from(*n) - 1).sum();
    eprintln!("after restart: {records} records, {lost} lost, {duplicates} written twice");
    assert_eq!(lost, 0);
    provider.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_or_a_missing_bucket_refuse_the_link_and_others_run_on() {
    let env = Env::start().await;
    env.bucket("good").await;
    let client = env.nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-ok").await.unwrap();
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    provider
        .put_link(env.sink_link("step-ok", "default", "good", &[("max_concurrent_writes", "1")]))
        .await
        .unwrap();
    let wrong_secret = "this-secret-is-wrong-and-never-logged";
    let config = env.config("good", &[]);
    let pairs: Vec<(&str, &str)> = config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let wrong = sluice_integration::host::Link::sink("step-creds", PROVIDER, "default", &pairs)
        .with_secret(PROVIDER, "access_key_id", &env.s3.access_key_id)
        .with_secret(PROVIDER, "secret_access_key", wrong_secret);
    provider.put_link(wrong).await.unwrap();
    provider
        .put_link(env.sink_link("step-nobucket", "default", "no-such-bucket", &[]))
        .await
        .unwrap();
    provider
        .put_link(env.source_link("step-src-nobucket", "in", "no-such-bucket", &[]))
        .await
        .unwrap();
    provider
        .put_link(env.sink_link("step-tpl", "default", "good", &[("key_template", "x/{date}.jsonl")]))
        .await
        .unwrap();
    let status = provider.status().await.unwrap();
    let error = |component: &str| {
        status
            .refusal(component)
            .unwrap_or_else(|| panic!("{component} not refused: {status:?}"))
            .to_string()
    };
    let creds = error("step-creds");
    assert!(
        creds.contains("SignatureDoesNotMatch") || creds.contains("AccessDenied"),
        "{creds}"
    );
    assert!(creds.contains("secret_access_key"), "{creds}");
    let missing = error("step-nobucket");
    assert!(
        missing.contains("NoSuchBucket") && missing.contains("no-such-bucket"),
        "{missing}"
    );
    let source = error("step-src-nobucket");
    assert!(source.contains("NoSuchBucket") && source.contains("`in`"), "{source}");
    let template = error("step-tpl");
    assert!(
        template.contains("key_template") && template.contains("{unique}"),
        "{template}"
    );
    eprintln!("refusals:\n  {creds}\n  {missing}\n  {source}\n  {template}");

    // The good link was never disturbed.
    write_ok(&step, "default", &sluice_integration::component::records("ok", 3)).await;
    assert_eq!(env.list("good", "default/").await.len(), 1);
    assert!(!provider.logs().contains(wrong_secret), "a secret reached the log");
    assert!(
        !provider.logs().contains(&env.s3.secret_access_key),
        "a secret reached the log"
    );
    provider.terminate().await.unwrap();
}

/// `.batch` files in a spool directory tree.
fn spooled_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            n += spooled_files(&path);
        } else if path.extension().is_some_and(|e| e == "batch") {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_mode_acknowledges_once_fsynced_and_a_restart_uploads_the_rest() {
    let (size, batch, batches) = (256, 100u64, 20u64);
    let env = Env::start().await;
    env.bucket("spool").await;
    let spool_dir = sluice_integration::servers::temp_dir("s3-spool").unwrap();
    let spool = spool_dir.to_str().unwrap().to_string();
    let client = env.nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-spool").await.unwrap();
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    let link = |age: &str| {
        env.sink_link(
            "step-spool",
            "default",
            "spool",
            &[
                ("key_template", "s/{unique}.txt"),
                ("format", "raw"),
                ("spool_dir", spool.as_str()),
                ("max_object_age", age),
            ],
        )
    };
    // Objects stay open for an hour: a write can only succeed through the spool.
    provider.put_link(link("1h")).await.unwrap();
    for b in 0..batches {
        let records: Vec<Message> = (b * batch..(b + 1) * batch)
            .map(|i| Message::new(big_payload(i, size), format!("s@{i}")))
            .collect();
        write_ok(&step, "default", &records).await;
    }
    assert_eq!(
        spooled_files(&spool_dir),
        batches as usize,
        "one fsynced file per write"
    );
    assert!(env.list("spool", "s/").await.is_empty(), "no object is complete yet");

    // Killed with everything spooled and nothing uploaded; the restarted provider uploads it
    // (objects now close after a second).
    provider.kill().await.unwrap();
    provider.restart().await.unwrap();
    provider.delete_link(&link("1h")).await.unwrap();
    provider.put_link(link("1s")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while spooled_files(&spool_dir) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        spooled_files(&spool_dir),
        0,
        "the spool drains once its objects complete"
    );
    let mut counts = HashMap::new();
    let objects = count_big(&env, "spool", "s/", size, &mut counts).await;
    let lost = (0..batch * batches).filter(|i| !counts.contains_key(i)).count();
    let duplicates: u64 = counts.values().map(|n| u64::from(*n) - 1).sum();
    eprintln!(
        "spool: {} acknowledged records, uploaded after kill -9 as {objects} objects, {lost} lost, {duplicates} written twice",
        batch * batches
    );
    assert_eq!(lost, 0);
    provider.terminate().await.unwrap();
    let _ = std::fs::remove_dir_all(&spool_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_one_link_never_aborts_another_links_upload_under_the_same_prefix() {
    let size = 1024;
    let records = 6 * 1024u64;
    let env = Env::start().await;
    env.bucket("shared").await;
    let client = env.nats.connect().await.unwrap();
    let a = FakeComponent::serve(&client, "default", "step-a").await.unwrap();
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    // Two pipelines, each with a link named `default` and the default key template: both write
    // under `default/`. B aborts every upload it left as soon as it starts.
    let link = |component: &str, age: &'static str| {
        env.sink_link(
            component,
            "default",
            "shared",
            &[
                ("format", "raw"),
                ("part_size", "5MiB"),
                ("max_object_age", age),
                ("abort_incomplete_after", "0s"),
            ],
        )
    };
    provider.put_link(link("step-a", "10s")).await.unwrap();
    provider.put_link(link("step-b", "1s")).await.unwrap();

    // A writes 6 MiB: its first part is uploaded, and its object stays open for 10 s.
    let batch: Vec<Message> = (0..records)
        .map(|i| Message::new(big_payload(i, size), format!("a@{i}")))
        .collect();
    let writing = tokio::spawn({
        let a = a.clone();
        async move { a.write(PROVIDER, "default", &batch).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.incomplete_uploads("shared", "default/").await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        env.incomplete_uploads("shared", "default/").await,
        1,
        "A's upload is in progress"
    );

    // B restarts: its link is put again while A's upload runs.
    provider.delete_link(&link("step-b", "1s")).await.unwrap();
    provider.put_link(link("step-b", "1s")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!writing.is_finished(), "A's object is still open");
    assert_eq!(
        env.incomplete_uploads("shared", "default/").await,
        1,
        "B's restart left A's upload alone:\n{}",
        provider.logs()
    );

    // A's object completes: the write succeeds and holds every record.
    match writing.await.unwrap().unwrap() {
        Ok(()) => {}
        Err(f) => panic!("A's write failed: {f:?}\n{}", provider.logs()),
    }
    let mut counts = HashMap::new();
    let objects = count_big(&env, "shared", "default/", size, &mut counts).await;
    assert_eq!(objects, 1);
    assert_eq!(counts.len() as u64, records);
    assert_eq!(env.incomplete_uploads("shared", "default/").await, 0);
    assert!(
        env.list("shared", "_sluice/uploads/").await.is_empty(),
        "upload markers are removed once their upload completed"
    );
    provider.terminate().await.unwrap();
}

/// Writes `batches` batches of `batch` records (`size` bytes each) from record 0, each acknowledged.
async fn write_acknowledged(step: &FakeComponent, batch: u64, batches: u64, size: usize) {
    for b in 0..batches {
        let records: Vec<Message> = (b * batch..(b + 1) * batch)
            .map(|i| Message::new(big_payload(i, size), format!("s@{i}")))
            .collect();
        write_ok(step, "default", &records).await;
    }
}

/// Waits until the provider logged that the sink link of `component` stopped (the status stops
/// listing a sink link before its writer closed).
async fn wait_sink_stopped(provider: &HostedProvider, component: &str) {
    let line = format!("sink link stopped component={component} ");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !provider.logs().contains(&line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line}not logged:\n{}",
            provider.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts every record `0..n` is in an object under `prefix`.
async fn assert_all_stored(env: &Env, bucket: &str, prefix: &str, n: u64, size: usize) {
    let mut counts = HashMap::new();
    count_big(env, bucket, prefix, size, &mut counts).await;
    let lost = (0..n).filter(|i| !counts.contains_key(i)).count();
    assert_eq!(lost, 0, "{lost} of {n} acknowledged records are not under {prefix}");
}

/// Pauses S3 and writes `batches` acknowledged batches from `step`, whose link spools to `dir`:
/// the link's uploader waits on its first part with the rest still spooled.
async fn spool_while_s3_hangs(
    env: &Env,
    step: &FakeComponent,
    dir: &std::path::Path,
    (batch, batches, size): (u64, u64, usize),
) {
    env.s3.pause().unwrap();
    write_acknowledged(step, batch, batches, size).await;
    assert_eq!(spooled_files(dir), batches as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_mode_uploads_the_spool_on_link_delete_and_shutdown_or_keeps_it_for_the_next_put() {
    // 12 MiB a link: more than two 5 MiB parts, so a drainer stuck on a part leaves files queued.
    let (size, batch, batches) = (1024, 512u64, 24u64);
    let mut env = Env::start().await;
    env.bucket("drain").await;
    let spool_dir = sluice_integration::servers::temp_dir("s3-drain").unwrap();
    let spool = spool_dir.to_str().unwrap().to_string();
    let client = env.nats.connect().await.unwrap();
    // Objects stay open for an hour: only the link's end can complete them.
    let link = |component: &str, age: &'static str, drain: &'static str| {
        env.sink_link(
            component,
            "default",
            "drain",
            &[
                ("key_template", "{component}/{unique}.txt"),
                ("format", "raw"),
                ("part_size", "5MiB"),
                ("spool_dir", spool.as_str()),
                ("max_object_age", age),
                ("drain_timeout", drain),
            ],
        )
    };
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    let mut steps = Vec::new();
    for component in ["step-del", "step-shut"] {
        provider.put_link(link(component, "1h", "30s")).await.unwrap();
        steps.push(FakeComponent::serve(&client, "default", component).await.unwrap());
    }
    // Link delete: every acknowledged record lands in objects (S3 answers again after the delete
    // began), and the spool empties.
    spool_while_s3_hangs(&env, &steps[0], &spool_dir.join("step-del"), (batch, batches, size)).await;
    provider.delete_link(&link("step-del", "1h", "30s")).await.unwrap();
    env.s3.resume().unwrap();
    wait_sink_stopped(&provider, "step-del").await;
    assert_eq!(spooled_files(&spool_dir.join("step-del")), 0, "{}", provider.logs());
    assert_all_stored(&env, "drain", "step-del/", batch * batches, size).await;
    // Shutdown: the same for the link still put.
    spool_while_s3_hangs(&env, &steps[1], &spool_dir.join("step-shut"), (batch, batches, size)).await;
    let (exit, resumed) = tokio::join!(provider.terminate(), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        env.s3.resume()
    });
    resumed.unwrap();
    assert!(exit.unwrap().success());
    assert_eq!(spooled_files(&spool_dir.join("step-shut")), 0, "{}", provider.logs());
    assert_all_stored(&env, "drain", "step-shut/", batch * batches, size).await;

    // Link delete, S3 stopped: the files stay, each logged, and the next put uploads them.
    let (down, down_again) = (link("step-down", "1h", "3s"), link("step-down", "1s", "3s"));
    let mut provider = HostedProvider::start(&env.nats, BINARY, PROVIDER, &[]).await.unwrap();
    provider.put_link(down.clone()).await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-down").await.unwrap();
    write_acknowledged(&step, batch, batches, size).await;
    env.s3.stop().unwrap();
    let started = std::time::Instant::now();
    provider.delete_link(&down).await.unwrap();
    wait_sink_stopped(&provider, "step-down").await;
    eprintln!("delete with S3 stopped took {:?} (drain_timeout 3s)", started.elapsed());
    let down_dir = spool_dir.join("step-down").join("default");
    assert_eq!(spooled_files(&down_dir), batches as usize);
    let logs = provider.logs();
    let first = down_dir.join(format!("{:020}.batch", 0));
    assert!(
        logs.contains(&first.display().to_string()),
        "left files are logged:\n{logs}"
    );
    env.s3.start_again().unwrap();
    provider.put_link(down_again).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while spooled_files(&down_dir) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(spooled_files(&down_dir), 0, "{}", provider.logs());
    assert_all_stored(&env, "drain", "step-down/", batch * batches, size).await;
    provider.terminate().await.unwrap();
    let _ = std::fs::remove_dir_all(&spool_dir);
}
