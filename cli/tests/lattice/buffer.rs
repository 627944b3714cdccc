//! A sink link with a disk buffer (`buffer: disk`) on the real host: the uplink down is a
//! non-event for the edge. HTTP -> step -> Kafka with the broker frozen: every request is answered
//! 200 from the buffer, the sink provider is killed with SIGKILL while its buffer holds 10,000
//! readings, and once the broker is back every reading is in Kafka. Modbus -> step -> S3 with S3
//! cut for a minute: every poll of that minute lands in S3 afterwards, the provider's memory flat
//! and the buffer on disk bounded. A full buffer with `buffer_full: drop_oldest`: exactly the
//! oldest batches are dropped, and counted. A source link with a disk buffer: HTTP -> step ->
//! Kafka with the broker frozen and the HTTP provider killed with SIGKILL while its source buffer
//! holds 10,000 readings: every request was answered 200, every reading lands. MQTT needs no
//! buffer of Sluice's: with the broker settings README documents (Mosquitto
//! `max_queued_messages 0`, `max_inflight_messages 1000`, as the test tooling runs it) a sink
//! outage loses nothing however far the backlog passes Mosquitto's default queue of 1,000.

use std::time::Instant;

use sluice_integration::modbus::ModbusServer;
use sluice_integration::procfs;
use sluice_integration::proxy::Proxy;
use sluice_provider_core::time::unix_ms;

use super::recovery::{provider_pid, publish_paced, restarted};
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buffered_kafka_sink_answers_while_the_broker_is_down_and_loses_nothing_across_kill_9() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let kafka = KafkaBroker::start().unwrap();
    let bootstrap = kafka.bootstrap();
    create_topic(&bootstrap, "buffered").await;
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice.add_host("edge-b").await.unwrap();
    lattice.serve_secrets("nats-kv", HashMap::new()).await.unwrap();
    let port = sluice_integration::servers::free_port();
    let buffer_dir = dir.join("buffer");
    let spec = PipelineSpec::parse(&format!(
        "name: http-buffered
lattice: edge-b
source:
  provider: http-inproc
  provider_config:
    address: 127.0.0.1:{port}
  config:
    path: /ingest/b
    methods: POST
step:
  component: steps/sensors.wasm
sink:
  provider: kafka
  config:
    bootstrap_servers: {bootstrap}
    topic: buffered
    buffer: disk
    buffer_dir: {}
",
        buffer_dir.display()
    ))
    .unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    let url = format!("http://127.0.0.1:{port}/ingest/b");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let post = |from: usize, n: usize| {
        let body: String = (from..from + n)
            .map(|i| format!("{{\"device\":\"b-{i}\",\"temp\":1,\"site\":\"edge\"}}\n"))
            .collect();
        http.post(&url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    // One reading through while the broker is up: the pipeline is live.
    assert!(post(1_000_000, 1).await.unwrap().status().is_success());
    let live = kafka_records(&bootstrap, "buffered", &["b-1000000".to_string()]).await;
    assert!(
        live.contains_key("b-1000000"),
        "the pipeline moved nothing: {}",
        deployment.progress().await
    );

    // The broker frozen (SIGSTOP: connections hang, as with a dead uplink): every request is
    // still answered 200, from the buffer.
    kafka.process().signal("STOP").unwrap();
    let (requests, per) = (100, 100);
    let started = Instant::now();
    for request in 0..requests {
        let response = post(request * per, per).await.unwrap();
        assert!(
            response.status().is_success(),
            "request {request} answered {} with the broker down: {}",
            response.status(),
            deployment.progress().await
        );
    }
    let answered_in = started.elapsed();
    let buffered = deployment.progress().await;
    let held = buffered.sink.as_ref().map_or(0, |l| l.metrics.buffered_records);
    assert!(
        held >= (requests * per) as u64,
        "the buffer holds {held} readings: {buffered}"
    );

    // SIGKILL of the Kafka provider while its buffer holds them; the host restarts it.
    let pid = provider_pid(&host, "sluice-provider-kafka").expect("the Kafka provider runs");
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    restarted(&host, "sluice-provider-kafka", pid).await;

    // The broker back: the restarted provider drains what the killed one buffered.
    kafka.process().signal("CONT").unwrap();
    let wanted = expected("b-", requests * per);
    let got = kafka_records(&bootstrap, "buffered", &wanted).await;
    let duplicated = assert_landed(
        "buffered Kafka sink, broker down, provider killed",
        &got,
        &wanted,
        deployment.progress().await,
    );
    eprintln!(
        "buffered: {} requests of {per} answered 200 in {answered_in:?} with the broker down; {held} held at the kill; {duplicated} duplicated",
        requests
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

/// The Modbus polls in `bucket` by their poll time (the record's `timestamp_ms`, which the step
/// keeps), with how often each arrived (duplicates show).
async fn s3_polls(client: &aws_sdk_s3::Client, bucket: &str) -> BTreeMap<u64, usize> {
    let mut polls = BTreeMap::new();
    let listed = client.list_objects_v2().bucket(bucket).send().await.unwrap();
    for object in listed.contents() {
        let body = sluice_integration::seaweedfs::object(client, bucket, object.key().unwrap())
            .await
            .unwrap();
        for line in std::str::from_utf8(&body).unwrap().lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            let payload: Value = serde_json::from_str(line["payload"].as_str().unwrap()).unwrap();
            assert_eq!(payload["device_id"], "plc1", "{line}");
            *polls
                .entry(line["timestamp_ms"].as_u64().expect("the poll time survives the step"))
                .or_default() += 1;
        }
    }
    polls
}

/// Waits for the device to serve a poll, then returns the polls served so far and the time (unix
/// ms): taken between two polls, every poll counted has an earlier timestamp and every later
/// poll a later one.
async fn between_polls(modbus: &ModbusServer) -> (usize, u64) {
    let served = modbus.requests().len();
    let deadline = Instant::now() + WAIT;
    loop {
        let now = modbus.requests().len();
        if now > served {
            return (now, unix_ms());
        }
        assert!(Instant::now() < deadline, "the device was not polled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bytes of the files under `dir`.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => disk_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modbus_to_s3_with_s3_down_for_a_minute_keeps_every_poll_in_a_bounded_buffer() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let modbus = ModbusServer::start(&serde_json::json!({
        "units": [1],
        "size": 100,
        "values": [{"unit": 1, "table": "holding", "address": 0, "type": "f32", "value": 21.5}]
    }))
    .unwrap();
    let s3 = S3Server::start().unwrap();
    let client = s3.client();
    s3.create_bucket("polls").await.unwrap();
    // The S3 provider reaches S3 only through a proxy, cut for the outage.
    let proxy = Proxy::start(s3.port(), true).await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice.add_host("edge-m").await.unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("modbus-buffered", &s3, "edge-m"))
        .await
        .unwrap();
    let buffer_dir = dir.join("buffer");
    let max_bytes = 4u64 << 20;
    // One device, one tag: one read request per poll. The S3 sink's own spool is off, so what
    // holds the polls during the outage is the link's disk buffer; one write slot, so each
    // drained batch completes its object at once instead of after `max_object_age`.
    let interval = Duration::from_millis(250);
    let spec = PipelineSpec::parse(&format!(
        "name: modbus-buffered
lattice: edge-m
source:
  provider: modbus
  config:
    record_per: device
    register_map: |
      [devices.plc1]
      address = \"{address}\"
      interval = \"{interval}ms\"

      [[tags]]
      name = \"line_temp\"
      table = \"holding\"
      address = 0
      type = \"f32\"
step:
  component: steps/sensors.wasm
sink:
  provider: s3
  config:
    endpoint: http://127.0.0.1:{proxy}
    bucket: polls
    key_template: \"polls/{{unique}}.jsonl\"
    payload_encoding: utf8
    spool: false
    max_concurrent_writes: 1
    buffer: disk
    buffer_dir: {buffer}
    buffer_max_bytes: {max_bytes}
  secrets:
    access_key_id: edge-m-s3-access-key-id
    secret_access_key: edge-m-s3-secret-access-key
",
        address = modbus.address(),
        interval = interval.as_millis(),
        proxy = proxy.port(),
        buffer = buffer_dir.display(),
    ))
    .unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while s3_polls(&client, "polls").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no poll reached S3: {}",
            deployment.progress().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // S3 down for 60 s while the device is polled.
    let (served_before, cut_at) = between_polls(&modbus).await;
    proxy.set_up(false);
    let s3_pid = provider_pid(&host, "sluice-provider-s3").expect("the S3 provider runs");
    let rss = || procfs::memory_kib(s3_pid, "VmRSS").expect("the S3 provider runs");
    let rss_at_start = rss();
    let outage = Instant::now();
    let mut most_on_disk = 0;
    while outage.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        most_on_disk = most_on_disk.max(disk_bytes(&buffer_dir));
    }
    let (served_after, back_at) = between_polls(&modbus).await;
    let rss_at_end = rss();
    let held = deployment.progress().await;
    let metrics = held.sink.as_ref().expect("the sink link").metrics;
    proxy.set_up(true);
    let polls = served_after - served_before;
    assert!(
        metrics.buffered_records > 0 && metrics.write_failures > 0,
        "the sink did not buffer through the outage: {held}"
    );

    // S3 back: every poll of the minute lands, none missing.
    let in_outage = |got: &BTreeMap<u64, usize>| got.range(cut_at..back_at).count();
    let deadline = Instant::now() + WAIT;
    let got = loop {
        let got = s3_polls(&client, "polls").await;
        if in_outage(&got) >= polls || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let landed = in_outage(&got);
    let duplicated = got.range(cut_at..back_at).filter(|(_, n)| **n > 1).count();
    let before_outage = got.range(..cut_at).count();
    eprintln!(
        "modbus -> S3, S3 down 60 s: {polls} polls served, {landed} landed, {} missing, {duplicated} duplicated \
         ({before_outage} of {served_before} polls before the outage landed); buffer at the end {} records, {} B \
         (at most {most_on_disk} B on disk); S3 provider RSS {} KiB at the start, {} KiB at the end",
        polls.saturating_sub(landed),
        metrics.buffered_records,
        metrics.buffered_bytes,
        rss_at_start,
        rss_at_end,
    );
    assert_eq!(
        landed,
        polls,
        "polls of the outage in S3 (none missing, none extra); {}",
        deployment.progress().await
    );
    assert!(
        metrics.buffered_records >= polls as u64 * 9 / 10,
        "the buffer held {} of {polls} polls: {held}",
        metrics.buffered_records
    );
    // Flat: the buffer is on disk, not in the provider.
    assert!(
        rss_at_end <= rss_at_start + 16 * 1024,
        "S3 provider RSS grew from {rss_at_start} KiB to {rss_at_end} KiB during the outage"
    );
    // Bounded: the undrained batches within `buffer_max_bytes`, plus at most one segment.
    assert!(
        most_on_disk <= max_bytes + max_bytes / 8,
        "{most_on_disk} B on disk for a buffer of {max_bytes} B"
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_buffer_with_drop_oldest_drops_exactly_the_oldest_batches_and_counts_them() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let kafka = KafkaBroker::start().unwrap();
    let bootstrap = kafka.bootstrap();
    create_topic(&bootstrap, "dropping").await;
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("edge-d").await.unwrap();
    lattice.serve_secrets("nats-kv", HashMap::new()).await.unwrap();
    let port = sluice_integration::servers::free_port();
    let buffer_dir = dir.join("buffer");
    let spec = PipelineSpec::parse(&format!(
        "name: http-dropping
lattice: edge-d
source:
  provider: http-inproc
  provider_config:
    address: 127.0.0.1:{port}
  config:
    path: /ingest/d
    methods: POST
step:
  component: steps/sensors.wasm
sink:
  provider: kafka
  config:
    bootstrap_servers: {bootstrap}
    topic: dropping
    buffer: disk
    buffer_dir: {}
    buffer_max_bytes: 16KiB
    buffer_full: drop_oldest
",
        buffer_dir.display()
    ))
    .unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    let url = format!("http://127.0.0.1:{port}/ingest/d");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Request `r` carries readings `d-{r}-{i}`: one request, one batch.
    let per = 10;
    let post = |request: usize| {
        let body: String = (0..per)
            .map(|i| format!("{{\"device\":\"d-{request}-{i}\",\"temp\":1,\"site\":\"edge\"}}\n"))
            .collect();
        http.post(&url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    assert!(post(1_000_000).await.unwrap().status().is_success());
    let live = kafka_records(&bootstrap, "dropping", &["d-1000000-0".to_string()]).await;
    assert!(
        live.contains_key("d-1000000-0"),
        "the pipeline moved nothing: {}",
        deployment.progress().await
    );

    // The broker frozen; 100 batches into a buffer that holds about 15: every request is
    // answered 200, and the oldest batches make room for the newest.
    kafka.process().signal("STOP").unwrap();
    let requests = 100;
    for request in 0..requests {
        let response = post(request).await.unwrap();
        assert!(
            response.status().is_success(),
            "request {request} answered {}: {}",
            response.status(),
            deployment.progress().await
        );
    }
    let full = deployment.progress().await;
    let metrics = full.sink.as_ref().expect("the sink link").metrics;
    assert!(metrics.buffer_dropped > 0, "nothing dropped: {full}");
    kafka.process().signal("CONT").unwrap();

    // The newest batches all land; what does not is exactly what was counted dropped, and it is
    // the oldest (the batch the drainer was writing when the broker froze may still land).
    // Drained in order: once the newest batch is in Kafka, every batch kept is.
    let wanted: Vec<String> = (0..per).map(|i| format!("d-{}-{i}", requests - 1)).collect();
    let got = kafka_records(&bootstrap, "dropping", &wanted).await;
    let landed: Vec<usize> = (0..requests)
        .filter(|r| (0..per).any(|i| got.contains_key(&format!("d-{r}-{i}"))))
        .collect();
    for r in &landed {
        assert!(
            (0..per).all(|i| got.contains_key(&format!("d-{r}-{i}"))),
            "batch {r} landed in part"
        );
    }
    let oldest_kept = (0..requests)
        .rev()
        .take_while(|r| landed.contains(r))
        .last()
        .unwrap_or(requests);
    let in_flight: Vec<usize> = landed.iter().copied().filter(|r| *r < oldest_kept).collect();
    let lost = (requests - landed.len()) * per;
    eprintln!(
        "drop_oldest: {requests} batches of {per} into a 16 KiB buffer with the broker frozen: {} dropped (counted {}), \
         batches {oldest_kept}..{requests} landed, and {in_flight:?} the drainer was writing",
        lost, metrics.buffer_dropped
    );
    assert!(
        in_flight.iter().enumerate().all(|(i, r)| i == *r),
        "only the run of oldest batches the drainer was writing may land out of the newest run: {in_flight:?}"
    );
    assert!(
        oldest_kept < requests,
        "no batch landed: {}",
        deployment.progress().await
    );
    // The batch the drainer was writing, if it landed, was counted dropped from the buffer too.
    assert_eq!(
        (lost + in_flight.len() * per) as u64,
        metrics.buffer_dropped,
        "every record missing was counted dropped, and no other: {}",
        deployment.progress().await
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

/// The source side: the buffer sits between the HTTP provider and the step, so a request is
/// answered 200 once its readings are fsynced in the HTTP provider's buffer, whatever is down
/// behind the step. The Kafka sink has no buffer of its own here: with the broker frozen the step
/// cannot write, and the source buffer holds everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buffered_http_source_answers_200_while_the_step_cannot_write_and_loses_nothing_across_kill_9() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let test_started = Instant::now();
    let kafka = KafkaBroker::start().unwrap();
    let bootstrap = kafka.bootstrap();
    create_topic(&bootstrap, "source-buffered").await;
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice.add_host("edge-s").await.unwrap();
    lattice.serve_secrets("nats-kv", HashMap::new()).await.unwrap();
    let port = sluice_integration::servers::free_port();
    let buffer_dir = dir.join("source-buffer");
    let spec = PipelineSpec::parse(&format!(
        "name: http-source-buffered
lattice: edge-s
source:
  provider: http-inproc
  provider_config:
    address: 127.0.0.1:{port}
  config:
    path: /ingest/s
    methods: POST
    buffer: disk
    buffer_dir: {}
step:
  component: steps/sensors.wasm
sink:
  provider: kafka
  config:
    bootstrap_servers: {bootstrap}
    topic: source-buffered
",
        buffer_dir.display()
    ))
    .unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    let url = format!("http://127.0.0.1:{port}/ingest/s");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let post = |from: usize, n: usize| {
        let body: String = (from..from + n)
            .map(|i| format!("{{\"device\":\"s-{i}\",\"temp\":1,\"site\":\"edge\"}}\n"))
            .collect();
        http.post(&url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    assert!(post(1_000_000, 1).await.unwrap().status().is_success());
    let live = kafka_records(&bootstrap, "source-buffered", &["s-1000000".to_string()]).await;
    assert!(
        live.contains_key("s-1000000"),
        "the pipeline moved nothing: {}",
        deployment.progress().await
    );

    // The broker frozen: the step's writes hang, yet every request is answered 200 at once.
    kafka.process().signal("STOP").unwrap();
    let (requests, per) = (100, 100);
    let started = Instant::now();
    for request in 0..requests {
        let response = post(request * per, per).await.unwrap();
        assert!(
            response.status().is_success(),
            "request {request} answered {} with the broker down: {}",
            response.status(),
            deployment.progress().await
        );
    }
    let answered_in = started.elapsed();
    let buffered = deployment.progress().await;
    let source = buffered.source.as_ref().expect("the source link").metrics;
    assert!(
        source.buffered_records >= (requests * per) as u64,
        "the source buffer holds {} readings: {buffered}",
        source.buffered_records
    );
    assert_eq!(
        source.buffer_drained, 1,
        "only the live reading reached the step: {buffered}"
    );

    // SIGKILL of the HTTP provider while its buffer holds them; the host restarts it and the
    // restarted provider replays the buffer into the step once the broker is back.
    let pid = provider_pid(&host, "sluice-provider-http-inproc").expect("the HTTP provider runs");
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    restarted(&host, "sluice-provider-http-inproc", pid).await;
    kafka.process().signal("CONT").unwrap();
    let wanted = expected("s-", requests * per);
    let got = kafka_records(&bootstrap, "source-buffered", &wanted).await;
    let duplicated = assert_landed(
        "buffered HTTP source, broker down, HTTP provider killed",
        &got,
        &wanted,
        deployment.progress().await,
    );
    eprintln!(
        "source buffer: {requests} requests of {per} answered 200 in {answered_in:?} with the broker down; \
         {} held at the kill; {duplicated} duplicated; test body {:?}",
        source.buffered_records,
        test_started.elapsed()
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

/// How long the sink is down in the MQTT queue test: `SLUICE_MQTT_OUTAGE_SECS`, 20 s by default
/// (CI-sized; 60 for the outage README states).
fn mqtt_outage() -> Duration {
    let secs = std::env::var("SLUICE_MQTT_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mqtt_with_the_documented_queue_settings_loses_nothing_across_a_sink_outage() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let test_started = Instant::now();
    let kafka = KafkaBroker::start().unwrap();
    let bootstrap = kafka.bootstrap();
    create_topic(&bootstrap, "mqtt-queued").await;
    let mqtt = Mosquitto::start().unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("edge-q").await.unwrap();
    lattice.serve_secrets("nats-kv", HashMap::new()).await.unwrap();
    let spec = format!(
        "name: mqtt-queued
lattice: edge-q
source:
  provider: mqtt
  config:
    url: {}
    topics: \"queued/#\"
    qos: 1
step:
  component: steps/sensors.wasm
sink:
  provider: kafka
  config:
    bootstrap_servers: {bootstrap}
    topic: mqtt-queued
",
        mqtt.url()
    );
    let deployment = Deployment::start(lattice.nats(), &PipelineSpec::parse(&spec).unwrap(), &par, &dir)
        .await
        .unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    publish(&mqtt, "queued/line-1", "live-", 1);
    let live = kafka_records(&bootstrap, "mqtt-queued", &["live-0".to_string()]).await;
    assert!(
        live.contains_key("live-0"),
        "the pipeline moved nothing: {}",
        deployment.progress().await
    );

    // The sink's broker frozen for the outage while readings keep coming: five times Mosquitto's
    // default queue (1,000 per session), more than the source may hold unacknowledged (2,048).
    let outage = mqtt_outage();
    let n = 5_000;
    kafka.process().signal("STOP").unwrap();
    let started = Instant::now();
    let chunks = usize::try_from(outage.as_secs()).unwrap_or(1).max(1);
    publish_paced(&mqtt, "queued/line-1", "q-", n, chunks, Duration::from_secs(1))
        .await
        .unwrap();
    if let Some(left) = outage.checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let during = deployment.progress().await;
    let polled = during.source.as_ref().map_or(0, |l| l.metrics.polled);
    let queued = (n as u64 + 1).saturating_sub(polled);
    assert!(
        queued > 1_000,
        "only {queued} readings waited in Mosquitto: the test would not pass its default queue: {during}"
    );
    kafka.process().signal("CONT").unwrap();
    let outage = started.elapsed();

    let wanted = expected("q-", n);
    let got = kafka_records(&bootstrap, "mqtt-queued", &wanted).await;
    let duplicated = assert_landed(
        "MQTT source, sink down, documented Mosquitto queue settings",
        &got,
        &wanted,
        deployment.progress().await,
    );
    eprintln!(
        "mqtt queue: {n} readings published during a {outage:?} sink outage, {polled} read by the source and \
         {queued} queued in Mosquitto at its end; 0 lost, {duplicated} duplicated; test body {:?}",
        test_started.elapsed()
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}
