//! End to end on the real host: assembled pipelines (release providers from their `.par.gz`, the
//! example Rust logic composed into a step, an embedded wasmCloud 1.x host and wadm on a local
//! nats-server) moving 1 KiB readings between real servers, next to the plain clients of the same
//! servers in the same run:
//!
//! | pipeline | through the pipeline | raw path |
//! | --- | --- | --- |
//! | MQTT -> S3 | `mosquitto_pub` -> source acknowledged every reading | `mosquitto_pub` -> `mosquitto_sub` (QoS 1) |
//! | MQTT -> Kafka | the same | the slower of that and the Kafka raw path below |
//! | Kafka -> S3 | rdkafka producing to a 6-partition topic -> every offset committed | rdkafka -> a consumer of every partition, reading as they arrive |
//! | HTTP -> Kafka | NDJSON POSTs (16 at a time) -> every request answered 200 | rdkafka -> a consumer, as for Kafka -> S3 (the HTTP server is Sluice's own) |
//!
//! For each: records/s, the providers' CPU time per record and peak RSS, the host process's (host,
//! wadm and this client) CPU and RSS; into Kafka, the end-to-end latency p50/p99 (send -> read
//! from the output topic) at half the measured rate, next to the same reader's latency for readings
//! rdkafka produces straight to a topic at that rate; into S3, how long after the last reading was
//! acknowledged until every reading is readable in objects.
//!
//! `cargo bench -p sluice-cli --bench pipeline` (builds the release providers first, as `cargo
//! xtask par` does). `PIPELINE_BENCH_RECORDS` (default 20000) readings per pipeline;
//! `PIPELINE_BENCH_CASES` a comma-separated subset of `mqtt-s3,mqtt-kafka,kafka-s3,http-kafka`;
//! `PIPELINE_BENCH_SOURCE_CONFIG` extra source config for every case (`key=value,key=value`), to
//! try settings other than the defaults.
//!
//! Every rate counts from the first reading sent to the last one acknowledged (raw: received),
//! after the pipeline has moved one warm-up reading, so deploying is not part of it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixtures::{example, Lang};
use futures::StreamExt as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sluice_compose::compose::{compose, ComposeOptions};
use sluice_deploy::children;
use sluice_deploy::local::LocalLattice;
use sluice_deploy::pipeline::Deployment;
use sluice_deploy::secrets::SecretEntry;
use sluice_deploy::spec::PipelineSpec;
use sluice_integration::procfs;
use sluice_integration::seaweedfs::S3Server;
use sluice_integration::servers::{free_port, temp_dir, KafkaBroker, Mosquitto};
use xtask::par::{package_all, Keys, Profile, Workspace};

/// Bytes per reading.
const RECORD: usize = 1024;
const WAIT: Duration = Duration::from_secs(300);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `PIPELINE_BENCH_SOURCE_CONFIG` as lines of a spec's `config:` map.
fn source_config_overrides() -> String {
    let extra = std::env::var("PIPELINE_BENCH_SOURCE_CONFIG").unwrap_or_default();
    extra
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| format!("    {}: \"{}\"\n", key.trim(), value.trim()))
        .collect()
}

/// A 1 KiB JSON reading the example logic keeps, for device `device`.
fn reading(device: &str) -> String {
    let mut line = format!(r#"{{"device":"{device}","temp":21.5,"site":"plant-1","pad":""#);
    line.push_str(&"x".repeat(RECORD.saturating_sub(line.len() + 2)));
    line.push_str("\"}");
    line
}

fn readings(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| reading(&format!("{prefix}{i}"))).collect()
}

/// The latency of readings produced straight to a topic by rdkafka and read back by the same
/// reader as the pipeline's, at `rate`: what the pipeline's latency is compared with.
async fn raw_latency(bootstrap: &str, rate: f64) -> (Duration, Duration) {
    create_topic(bootstrap, "bench.lat", 1).await;
    let producer = producer(bootstrap);
    latency(bootstrap, "bench.lat", rate, 5, |lines| {
        let producer = producer.clone();
        async move {
            let sends = lines.iter().map(|line| {
                producer.send(
                    FutureRecord::<(), _>::to("bench.lat").payload(line),
                    Duration::from_secs(60),
                )
            });
            for sent in futures::future::join_all(sends).await {
                sent.map_err(|(e, _)| e).unwrap();
            }
        }
    })
    .await
}

/// One pipeline's figures.
#[derive(Debug, Default)]
struct Row {
    pipeline: &'static str,
    records: usize,
    rate: f64,
    raw_rate: f64,
    latency: Option<(Duration, Duration)>,
    /// The same reader's latency for readings produced straight to a topic: the floor.
    raw_latency: Option<(Duration, Duration)>,
    /// Into S3: how long after the last acknowledgement every reading was readable, and in how
    /// many objects.
    visible_after: Option<(Duration, usize)>,
    /// Per provider: CPU ms per 1,000 records, peak RSS in MiB.
    providers: Vec<(String, f64, f64)>,
    host_cpu_ms_per_k: f64,
    host_rss_mib: f64,
}

/// CPU time of a process in ms (user + system).
fn cpu_ms(pid: u32) -> f64 {
    procfs::cpu_time(pid).unwrap_or_default().as_secs_f64() * 1000.0
}

/// A `/proc/<pid>/status` size field (`VmHWM`, `VmRSS`) in MiB.
fn memory_mib(pid: u32, field: &str) -> f64 {
    procfs::memory_kib(pid, field).unwrap_or(0) as f64 / 1024.0
}

/// The providers the host `host` runs, by package name, with their pids.
fn providers(host: &str) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for child in children::running() {
        for package in ["mqtt", "kafka", "s3", "http-inproc"] {
            let package = format!("sluice-provider-{package}");
            if child.is_provider(host, &package) {
                found.push((package, child.pid));
            }
        }
    }
    found
}

/// CPU of every provider and of this process, read at the start and the end of a run.
struct CpuWindow {
    providers: Vec<(String, u32, f64)>,
    own: f64,
}

impl CpuWindow {
    fn start(host: &str) -> Self {
        Self {
            providers: providers(host)
                .into_iter()
                .map(|(name, pid)| (name, pid, cpu_ms(pid)))
                .collect(),
            own: cpu_ms(std::process::id()),
        }
    }

    fn finish(self, row: &mut Row) {
        let per_k = 1000.0 / row.records as f64;
        for (name, pid, before) in &self.providers {
            row.providers
                .push((name.clone(), (cpu_ms(*pid) - before) * per_k, memory_mib(*pid, "VmHWM")));
        }
        row.host_cpu_ms_per_k = (cpu_ms(std::process::id()) - self.own) * per_k;
        row.host_rss_mib = memory_mib(std::process::id(), "VmRSS");
    }
}

/// Waits until the pipeline's source has acknowledged (`acked`, or `delivered` for HTTP, whose
/// answer is its acknowledgement) `n` records.
async fn wait_acknowledged(deployment: &Deployment, n: u64, http: bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let progress = deployment.progress().await;
        let done = progress
            .source
            .as_ref()
            .map_or(0, |l| if http { l.metrics.delivered } else { l.metrics.acked });
        if done >= n {
            return;
        }
        assert!(Instant::now() < deadline, "the pipeline stalled: {progress}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `mosquitto_pub` publishing each line of its stdin to `topic` with QoS 1.
fn mosquitto_pub(port: u16, topic: &str) -> std::process::Child {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub")
}

fn publish_mqtt(port: u16, topic: &str, lines: &[String]) {
    let mut child = mosquitto_pub(port, topic);
    let mut stdin = std::io::BufWriter::new(child.stdin.take().unwrap());
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// Raw MQTT: `mosquitto_pub` to a QoS 1 `mosquitto_sub` of the same broker, until it has all.
fn raw_mqtt(mqtt: &Mosquitto, lines: &[String]) -> f64 {
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt.port.to_string(),
            "-q",
            "1",
            "-t",
            "raw/#",
        ])
        .args(["-C", &lines.len().to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    publish_mqtt(mqtt.port, "raw/line-1", lines);
    assert!(sub.wait().unwrap().success());
    lines.len() as f64 / start.elapsed().as_secs_f64()
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

/// Produces `lines` to `topic`, keyed by index, all in flight at once.
async fn produce(bootstrap: &str, topic: &str, lines: &[String]) {
    let producer = producer(bootstrap);
    let sends = lines.iter().enumerate().map(|(i, line)| {
        let producer = producer.clone();
        let key = format!("k{}", i % 64);
        async move {
            producer
                .send(FutureRecord::to(topic).key(&key).payload(line), Duration::from_secs(60))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
    futures::future::join_all(sends).await;
}

/// Raw Kafka: rdkafka producing `lines` to a new `partitions`-partition topic `topic` while a
/// consumer of every partition reads them as they arrive; records/s until it has all.
async fn raw_kafka(bootstrap: &str, topic: &str, partitions: i32, lines: &[String]) -> f64 {
    create_topic(bootstrap, topic, partitions).await;
    let reader = consume(bootstrap, topic, partitions, lines.len());
    let start = Instant::now();
    tokio::join!(produce(bootstrap, topic, lines), reader);
    lines.len() as f64 / start.elapsed().as_secs_f64()
}

/// Reads `n` records of every partition of `topic` from the start (assigned, no group).
async fn consume(bootstrap: &str, topic: &str, partitions: i32, n: usize) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    for _ in 0..n {
        tokio::time::timeout(WAIT, consumer.recv()).await.unwrap().unwrap();
    }
}

/// Sends readings at `rate` per second for `seconds` to `send`, each naming its send time in µs
/// since `epoch`, and reads them back from the pipeline's output topic: latency p50 and p99.
async fn latency<F, Fut>(bootstrap: &str, out_topic: &str, rate: f64, seconds: u64, send: F) -> (Duration, Duration)
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-latency")
        .set("enable.auto.commit", "false")
        // Fetch as soon as anything is there: the reader is not what is measured.
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(out_topic, 0, Offset::End).unwrap();
    consumer.assign(&list).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let epoch = Instant::now();
    let tick = Duration::from_millis(20);
    let per_tick = (rate * tick.as_secs_f64()).max(1.0) as usize;
    let total = per_tick * (seconds * 1000 / tick.as_millis() as u64) as usize;
    let reader = async {
        let mut latencies = Vec::with_capacity(total);
        while latencies.len() < total {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await else {
                break;
            };
            let payload: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
            // The example logic renames `device` to `device_id`; the raw path keeps it.
            let device = payload["device_id"]
                .as_str()
                .or(payload["device"].as_str())
                .unwrap_or_default();
            if let Some(sent) = device.strip_prefix("lat-").and_then(|d| d.split('-').next()) {
                let sent = Duration::from_micros(sent.parse().unwrap());
                latencies.push(epoch.elapsed().saturating_sub(sent));
            }
        }
        latencies
    };
    let sender = async {
        let mut interval = tokio::time::interval(tick);
        for batch in 0..total / per_tick {
            interval.tick().await;
            let sent = epoch.elapsed().as_micros();
            let lines = (0..per_tick)
                .map(|i| reading(&format!("lat-{sent}-{batch}-{i}")))
                .collect();
            send(lines).await;
        }
    };
    let ((), mut latencies) = tokio::join!(sender, reader);
    assert!(
        latencies.len() >= total * 99 / 100,
        "{} of {total} came back",
        latencies.len()
    );
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.5), at(0.99))
}

/// Every JSON line of every object in `bucket`.
/// The objects in `bucket` and the lines they hold.
async fn s3_lines(client: &aws_sdk_s3::Client, bucket: &str) -> (usize, usize) {
    let (mut objects, mut lines) = (0, 0);
    let mut token = None;
    loop {
        let listed = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for object in listed.contents() {
            let body = sluice_integration::seaweedfs::object(client, bucket, object.key().unwrap())
                .await
                .unwrap();
            objects += 1;
            lines += body.iter().filter(|b| **b == b'\n').count();
        }
        token = listed.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return (objects, lines);
        }
    }
}

/// How long until `bucket` holds `n` readings, and in how many objects.
async fn wait_s3_visible(s3: &S3Server, bucket: &str, n: usize) -> (Duration, usize) {
    let client = s3.client();
    let start = Instant::now();
    loop {
        let (objects, lines) = s3_lines(&client, bucket).await;
        if lines >= n {
            return (start.elapsed(), objects);
        }
        assert!(start.elapsed() < WAIT, "readings never all visible in S3");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The lattice, the archives and the step: what every case deploys with.
struct Env {
    par: PathBuf,
    dir: PathBuf,
}

impl Env {
    async fn lattice(&self, lattice: &str, app: &str, s3: Option<&S3Server>) -> (LocalLattice, String) {
        let mut local = LocalLattice::start(None).await.unwrap();
        let host = local.add_host(lattice).await.unwrap();
        let mut secrets = std::collections::HashMap::new();
        if let Some(s3) = s3 {
            let entry = |v: &str| SecretEntry {
                value: v.to_string(),
                application: Some(app.to_string()),
            };
            secrets.insert("s3-access-key-id".to_string(), entry(&s3.access_key_id));
            secrets.insert("s3-secret-access-key".to_string(), entry(&s3.secret_access_key));
        }
        local.serve_secrets("nats-kv", secrets).await.unwrap();
        (local, host)
    }

    async fn deploy(&self, local: &LocalLattice, yaml: &str) -> Deployment {
        let spec = PipelineSpec::parse(yaml).unwrap();
        let deployment = Deployment::start(local.nats(), &spec, &self.par, &self.dir)
            .await
            .unwrap();
        deployment.wait_linked(WAIT).await.unwrap();
        deployment
    }
}

fn s3_sink(s3: &S3Server, bucket: &str) -> String {
    format!(
        "sink:\n  provider: s3\n  config:\n    endpoint: \"{}\"\n    bucket: {bucket}\n  secrets:\n    access_key_id: s3-access-key-id\n    secret_access_key: s3-secret-access-key\n",
        s3.endpoint()
    )
}

fn kafka_sink(bootstrap: &str, topic: &str) -> String {
    format!("sink:\n  provider: kafka\n  config:\n    bootstrap_servers: \"{bootstrap}\"\n    topic: {topic}\n")
}

fn head(name: &str, lattice: &str, source: &str) -> String {
    format!("name: {name}\nlattice: {lattice}\nsource:\n{source}step:\n  component: steps/sensors.wasm\n")
}

async fn mqtt_to(env: &Env, n: usize, into_kafka: bool) -> Row {
    let mqtt = Mosquitto::start().unwrap();
    let lines = readings("m-", n);
    let mut raw_rate = tokio::task::block_in_place(|| raw_mqtt(&mqtt, &lines));
    let (s3, kafka) = if into_kafka {
        (None, Some(KafkaBroker::start().unwrap()))
    } else {
        (Some(S3Server::start().unwrap()), None)
    };
    if let Some(kafka) = &kafka {
        // Two servers in a row: the raw path is as fast as the slower of them.
        raw_rate = raw_rate.min(raw_kafka(&kafka.bootstrap(), "bench.raw", 1, &lines).await);
    }
    let name = if into_kafka { "mqtt-to-kafka" } else { "mqtt-to-s3" };
    let sink = match (&s3, &kafka) {
        (Some(s3), _) => {
            s3.create_bucket("bench").await.unwrap();
            s3_sink(s3, "bench")
        }
        (_, Some(kafka)) => {
            create_topic(&kafka.bootstrap(), "bench.out", 1).await;
            kafka_sink(&kafka.bootstrap(), "bench.out")
        }
        _ => unreachable!(),
    };
    let source = format!(
        "  provider: mqtt\n  config:\n    url: \"{}\"\n    topics: \"bench/#\"\n{}",
        mqtt.url(),
        source_config_overrides()
    );
    let (local, host) = env.lattice("bench", name, s3.as_ref()).await;
    let deployment = env
        .deploy(&local, &format!("{}{sink}", head(name, "bench", &source)))
        .await;
    let port = mqtt.port;
    tokio::task::block_in_place(|| publish_mqtt(port, "bench/line-1", &readings("warm-", 1)));
    wait_acknowledged(&deployment, 1, false).await;
    let cpu = CpuWindow::start(&host);
    let start = Instant::now();
    tokio::task::block_in_place(|| publish_mqtt(port, "bench/line-1", &lines));
    wait_acknowledged(&deployment, n as u64 + 1, false).await;
    let elapsed = start.elapsed();
    let mut row = Row {
        pipeline: if into_kafka { "MQTT -> Kafka" } else { "MQTT -> S3" },
        records: n,
        rate: n as f64 / elapsed.as_secs_f64(),
        raw_rate,
        ..Row::default()
    };
    cpu.finish(&mut row);
    match (&s3, &kafka) {
        (Some(s3), _) => row.visible_after = Some(wait_s3_visible(s3, "bench", n + 1).await),
        (_, Some(kafka)) => {
            // One publisher fed through a pipe: a process per tick would be slower than the rate
            // and hold up the reader.
            let mut publisher = mosquitto_pub(port, "bench/line-2");
            let stdin = std::sync::Mutex::new(publisher.stdin.take().unwrap());
            let rate = row.rate / 2.0;
            row.latency = Some(
                latency(&kafka.bootstrap(), "bench.out", rate, 5, |lines| {
                    let mut stdin = stdin.lock().unwrap();
                    let mut chunk = lines.join("\n");
                    chunk.push('\n');
                    stdin.write_all(chunk.as_bytes()).unwrap();
                    stdin.flush().unwrap();
                    std::future::ready(())
                })
                .await,
            );
            drop(stdin);
            publisher.wait().unwrap();
            row.raw_latency = Some(raw_latency(&kafka.bootstrap(), rate).await);
        }
        _ => {}
    }
    deployment.undeploy().await.unwrap();
    local.stop().await.unwrap();
    row
}

async fn kafka_to_s3(env: &Env, n: usize) -> Row {
    let (kafka, s3) = (KafkaBroker::start().unwrap(), S3Server::start().unwrap());
    let bootstrap = kafka.bootstrap();
    s3.create_bucket("bench").await.unwrap();
    create_topic(&bootstrap, "bench.in", 6).await;
    let lines = readings("k-", n);
    let raw_rate = raw_kafka(&bootstrap, "bench.raw", 6, &lines).await;
    let source = format!(
        "  provider: kafka\n  config:\n    bootstrap_servers: \"{bootstrap}\"\n    topics: bench.in\n    group_id: bench\n{}",
        source_config_overrides()
    );
    let (local, host) = env.lattice("bench", "kafka-to-s3", Some(&s3)).await;
    let yaml = format!("{}{}", head("kafka-to-s3", "bench", &source), s3_sink(&s3, "bench"));
    let deployment = env.deploy(&local, &yaml).await;
    // One reading through first: the consumer group has its partitions before the clock starts.
    produce(&bootstrap, "bench.in", &readings("warm-", 1)).await;
    wait_acknowledged(&deployment, 1, false).await;
    let cpu = CpuWindow::start(&host);
    let start = Instant::now();
    produce(&bootstrap, "bench.in", &lines).await;
    wait_acknowledged(&deployment, n as u64 + 1, false).await;
    let elapsed = start.elapsed();
    let mut row = Row {
        pipeline: "Kafka -> S3",
        records: n,
        rate: n as f64 / elapsed.as_secs_f64(),
        raw_rate,
        ..Row::default()
    };
    cpu.finish(&mut row);
    row.visible_after = Some(wait_s3_visible(&s3, "bench", n + 1).await);
    deployment.undeploy().await.unwrap();
    local.stop().await.unwrap();
    row
}

async fn http_to_kafka(env: &Env, n: usize) -> Row {
    let kafka = KafkaBroker::start().unwrap();
    let bootstrap = kafka.bootstrap();
    create_topic(&bootstrap, "bench.out", 1).await;
    let lines = readings("h-", n);
    let raw_rate = raw_kafka(&bootstrap, "bench.raw", 1, &lines).await;
    let port = free_port();
    let source = format!(
        "  provider: http-inproc\n  provider_config:\n    address: \"127.0.0.1:{port}\"\n  config:\n    path: /ingest\n    methods: POST\n{}",
        source_config_overrides()
    );
    let (local, host) = env.lattice("bench", "http-to-kafka", None).await;
    let yaml = format!(
        "{}{}",
        head("http-to-kafka", "bench", &source),
        kafka_sink(&bootstrap, "bench.out")
    );
    let deployment = env.deploy(&local, &yaml).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/ingest");
    let post = |lines: Vec<String>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = lines.join("\n");
            loop {
                let response = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                if response.status().is_success() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    post(readings("warm-", 1)).await;
    let cpu = CpuWindow::start(&host);
    let start = Instant::now();
    let requests: Vec<Vec<String>> = lines.chunks(64).map(<[String]>::to_vec).collect();
    futures::stream::iter(requests.into_iter().map(&post))
        .buffer_unordered(16)
        .for_each(|()| async {})
        .await;
    let elapsed = start.elapsed();
    let mut row = Row {
        pipeline: "HTTP -> Kafka",
        records: n,
        rate: n as f64 / elapsed.as_secs_f64(),
        raw_rate,
        ..Row::default()
    };
    cpu.finish(&mut row);
    let rate = row.rate / 2.0;
    row.latency = Some(latency(&bootstrap, "bench.out", rate, 5, &post).await);
    row.raw_latency = Some(raw_latency(&bootstrap, rate).await);
    deployment.undeploy().await.unwrap();
    local.stop().await.unwrap();
    row
}

fn print(rows: &[Row]) {
    println!();
    println!("| pipeline | records | records/s | raw records/s | vs raw | latency p50 / p99 (raw) | visible in S3 after | providers: CPU ms per 1k records, peak RSS | host process: CPU ms per 1k, RSS |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
    for r in rows {
        let latency = match (r.latency, r.raw_latency) {
            (Some((p50, p99)), Some((raw50, raw99))) => format!(
                "{:.0} / {:.0} ms ({:.0} / {:.0} ms)",
                ms(p50),
                ms(p99),
                ms(raw50),
                ms(raw99)
            ),
            _ => "-".to_string(),
        };
        let visible = r.visible_after.map_or("-".to_string(), |(d, objects)| {
            format!("{:.1} s ({objects} objects)", d.as_secs_f64())
        });
        let providers: Vec<String> = r
            .providers
            .iter()
            .map(|(name, cpu, rss)| {
                format!(
                    "{}: {cpu:.0} ms, {rss:.0} MiB",
                    name.trim_start_matches("sluice-provider-")
                )
            })
            .collect();
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {latency} | {visible} | {} | {:.0} ms, {:.0} MiB |",
            r.pipeline,
            r.records,
            r.rate,
            r.raw_rate,
            r.rate / r.raw_rate,
            providers.join("; "),
            r.host_cpu_ms_per_k,
            r.host_rss_mib
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // The embedded host's and wadm's warnings (a provider that failed to start, a link put that
    // failed) go to stderr with the figures; `RUST_LOG` for more.
    sluice_integration::init_tracing();
    let n = env_number("PIPELINE_BENCH_RECORDS", 20_000) as usize;
    let cases =
        std::env::var("PIPELINE_BENCH_CASES").unwrap_or_else(|_| "mqtt-s3,mqtt-kafka,kafka-s3,http-kafka".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let workspace = Workspace::discover().unwrap();
    workspace.build(Profile::Release).expect("build the release providers");
    let par = temp_dir("bench-par").unwrap();
    // Throwaway keys, as in the tests: a bench run leaves the operator's keys alone.
    let keys = Keys::open(par.join("keys")).unwrap();
    runtime
        .block_on(package_all(&workspace, Profile::Release, &par, &keys))
        .expect("package the release providers");
    let dir = temp_dir("bench-pipeline").unwrap();
    std::fs::create_dir_all(dir.join("steps")).unwrap();
    let step = compose(&example(Lang::Rust), &ComposeOptions::default()).expect("compose the step");
    std::fs::write(dir.join("steps/sensors.wasm"), step.bytes).unwrap();
    let env = Env { par, dir };
    let mut rows = Vec::new();
    for case in cases.split(',') {
        eprintln!("pipeline bench: {case}, {n} readings");
        let row = runtime.block_on(async {
            match case.trim() {
                "mqtt-s3" => mqtt_to(&env, n, false).await,
                "mqtt-kafka" => mqtt_to(&env, n, true).await,
                "kafka-s3" => kafka_to_s3(&env, n).await,
                "http-kafka" => http_to_kafka(&env, n).await,
                other => panic!("unknown case `{other}`"),
            }
        });
        eprintln!("{row:?}");
        rows.push(row);
    }
    print(&rows);
}
