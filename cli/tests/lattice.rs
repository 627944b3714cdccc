//! Lattice tests: a real wasmCloud 1.x host (embedded `wasmcloud-host` 0.27.1) and wadm (0.21.1) on
//! a real nats-server, providers started from their `.par.gz`, the composed step (trusted in +
//! the Rust example logic + trusted out) from its file, pipelines deployed from rendered manifests.
//! Records go in through plain clients (mosquitto_pub) and are read back with plain clients
//! (aws-sdk-s3, rdkafka).

#[path = "lattice/buffer.rs"]
mod buffer;
mod common;
#[path = "lattice/dag.rs"]
mod dag;
#[path = "lattice/deploy.rs"]
mod deploy;
#[path = "lattice/dev.rs"]
mod dev;
#[path = "lattice/examples.rs"]
mod examples;
#[path = "lattice/instances.rs"]
mod instances;
#[path = "lattice/recovery.rs"]
mod recovery;
#[path = "lattice/tap.rs"]
mod tap;
#[path = "lattice/tenants.rs"]
mod tenants;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::lattice::{archives, pipeline_dir};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::Value;
use sluice_deploy::local::LocalLattice;
use sluice_deploy::pipeline::Deployment;
use sluice_deploy::secrets::SecretEntry;
use sluice_deploy::spec::PipelineSpec;
use sluice_integration::seaweedfs::S3Server;
use sluice_integration::servers::{KafkaBroker, Mosquitto};

const WAIT: Duration = Duration::from_secs(90);

/// Two lattices at a time at most: each is a wasmCloud host, wadm and four servers, and CI has
/// two cores.
static LATTICES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines")
}

/// The committed MQTT -> S3 example pointed at the test servers, under another name and lattice.
fn mqtt_to_s3(name: &str, lattice: &str, mqtt: &Mosquitto, s3: &S3Server, topic: &str, bucket: &str) -> String {
    std::fs::read_to_string(examples().join("mqtt-to-s3.yaml"))
        .unwrap()
        .replace("name: sensors-to-s3", &format!("name: {name}"))
        .replace("lattice: customer-a", &format!("lattice: {lattice}"))
        .replace("mqtt://127.0.0.1:1883", &mqtt.url())
        .replace("\"sensors/#\"", &format!("\"{topic}\""))
        .replace("http://127.0.0.1:8333", &s3.endpoint())
        .replace("bucket: sensors", &format!("bucket: {bucket}"))
}

/// The same spec with its sink block swapped for Kafka: the one change a customer makes.
fn swap_sink_to_kafka(spec: &str, bootstrap: &str, topic: &str) -> String {
    let head = &spec[..spec.find("\nsink:\n").expect("sink block")];
    format!("{head}\nsink:\n  provider: kafka\n  config:\n    bootstrap_servers: {bootstrap}\n    topic: {topic}\n")
}

/// Every JSON line of every object in `bucket`: the mapped records, by device id (with counts,
/// so duplicates show).
async fn s3_records(client: &aws_sdk_s3::Client, bucket: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let listed = client.list_objects_v2().bucket(bucket).send().await.unwrap();
    for object in listed.contents() {
        let key = object.key().unwrap();
        let body = sluice_integration::seaweedfs::object(client, bucket, key)
            .await
            .unwrap();
        for line in std::str::from_utf8(&body).unwrap().lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            let payload: Value = serde_json::from_str(line["payload"].as_str().unwrap()).unwrap();
            *out.entry(payload["device_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    out
}

/// Publishes `n` sensor readings with devices `{prefix}{i}` to `topic` with QoS 1 (mosquitto_pub).
fn publish(mqtt: &Mosquitto, topic: &str, prefix: &str, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"device":"{prefix}{i}","temp":{},"site":"plant-a"}}"#,
                20.0 + i as f64 / 100.0
            )
        })
        .collect();
    publish_lines(mqtt.port, topic, &lines);
}

/// Publishes each of `lines` as one message to `topic` with QoS 1 (mosquitto_pub).
fn publish_lines(port: u16, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

fn expected(prefix: &str, n: usize) -> Vec<String> {
    let mut v: Vec<_> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    v.sort();
    v
}

/// Waits until `bucket` holds every one of `wanted`; returns what it holds.
async fn wait_s3(client: &aws_sdk_s3::Client, bucket: &str, wanted: &[String]) -> BTreeMap<String, usize> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = s3_records(client, bucket).await;
        if wanted.iter().all(|w| got.contains_key(w)) || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Publishes a reading `probe-N` to `topic` every 2 s until one lands in `bucket`: the links are
/// live (an MQTT subscription made after a publish does not get it). Fails after [`WAIT`] with
/// the S3 server's log and `context()`.
async fn probe_until_landed(mqtt: &Mosquitto, topic: &str, s3: &S3Server, bucket: &str, context: impl Fn() -> String) {
    let client = s3.client();
    let deadline = tokio::time::Instant::now() + WAIT;
    for n in 0.. {
        if s3_records(&client, bucket)
            .await
            .keys()
            .any(|k| k.starts_with("probe-"))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing reached S3 bucket {bucket} through the pipeline; seaweedfs log ends:\n{}\n{}",
            s3.process().log_tail(30),
            context()
        );
        publish(mqtt, topic, &format!("probe-{n}-"), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn create_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// Reads `topic` (one partition, made by [`create_topic`]) from the start until every one of
/// `wanted` arrived (or time runs out). Assigned, not subscribed: no consumer group to join.
async fn kafka_records(bootstrap: &str, topic: &str, wanted: &[String]) -> BTreeMap<String, usize> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "lattice-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&partitions).unwrap();
    let mut got = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !wanted.iter().all(|w| got.contains_key(w)) && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            let payload: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            *got.entry(payload["device_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    got
}

fn secrets(app: &str, s3: &S3Server, prefix: &str) -> HashMap<String, SecretEntry> {
    let entry = |value: &str| SecretEntry {
        value: value.to_string(),
        application: Some(app.to_string()),
    };
    HashMap::from([
        (format!("{prefix}-s3-access-key-id"), entry(&s3.access_key_id)),
        (format!("{prefix}-s3-secret-access-key"), entry(&s3.secret_access_key)),
    ])
}

fn lost(got: &BTreeMap<String, usize>, wanted: &[String]) -> Vec<String> {
    wanted.iter().filter(|w| !got.contains_key(*w)).cloned().collect()
}

/// Asserts that `got` holds every one of `wanted`, showing `context` (the pipeline's progress, a
/// server's log) when it does not; prints the count under `what` and returns how many records
/// came more than once.
fn assert_landed(
    what: &str,
    got: &BTreeMap<String, usize>,
    wanted: &[String],
    context: impl std::fmt::Display,
) -> usize {
    assert_eq!(
        lost(got, wanted),
        Vec::<String>::new(),
        "{what}: records lost; {context}"
    );
    let duplicated = got.values().filter(|c| **c > 1).count();
    eprintln!("{what}: {} records, 0 lost, {duplicated} duplicated", wanted.len());
    duplicated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mqtt_to_s3_then_the_sink_swapped_to_kafka_with_the_same_step() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3, kafka) = (
        Mosquitto::start().unwrap(),
        S3Server::start().unwrap(),
        KafkaBroker::start().unwrap(),
    );
    let client = s3.client();
    s3.create_bucket("sensors").await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("customer-a").await.unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("sensors-to-s3", &s3, "customer-a"))
        .await
        .unwrap();

    // MQTT -> step -> S3.
    let yaml = mqtt_to_s3("sensors-to-s3", "customer-a", &mqtt, &s3, "sensors/#", "sensors");
    let spec = PipelineSpec::parse(&yaml).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    // The same 300 readings go through both legs.
    let n = 300;
    let wanted = expected("reading-", n);
    publish(&mqtt, "sensors/plant-a", "reading-", n);
    let got = wait_s3(&client, "sensors", &wanted).await;
    assert_eq!(
        lost(&got, &wanted),
        Vec::<String>::new(),
        "records lost on the way to S3; seaweedfs log ends:\n{}",
        s3.process().log_tail(30)
    );
    assert_eq!(got.len(), n, "only the published records: {got:?}");
    let progress = deployment.progress().await;
    eprintln!(
        "MQTT -> S3: {progress}; duplicates {}",
        got.values().filter(|c| **c > 1).count()
    );
    assert!(
        progress.sink.as_ref().unwrap().metrics.written >= n as u64,
        "{progress}"
    );
    deployment.undeploy().await.unwrap();

    // The same spec with the sink swapped to Kafka, the same step file.
    create_topic(&kafka.bootstrap(), "sensors.mapped").await;
    let spec = PipelineSpec::parse(&swap_sink_to_kafka(&yaml, &kafka.bootstrap(), "sensors.mapped")).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    publish(&mqtt, "sensors/plant-a", "reading-", n);
    let got = kafka_records(&kafka.bootstrap(), "sensors.mapped", &wanted).await;
    assert_eq!(
        lost(&got, &wanted),
        Vec::<String>::new(),
        "records lost on the way to Kafka"
    );
    assert_eq!(got.len(), n, "only the records published after the swap: {got:?}");
    eprintln!("MQTT -> Kafka: {}", deployment.progress().await);
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

/// An MQTT -> S3 spec whose source and sink are the providers of shared application `shared`.
fn shared_spec(
    name: &str,
    lattice: &str,
    mqtt: &Mosquitto,
    s3: &S3Server,
    topic: &str,
    bucket: &str,
    shared: &str,
) -> String {
    mqtt_to_s3(name, lattice, mqtt, s3, topic, bucket)
        .replace("  provider: mqtt\n", &format!("  provider: mqtt\n  shared: {shared}\n"))
        .replace("  provider: s3\n", &format!("  provider: s3\n  shared: {shared}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_customers_on_two_lattices_are_isolated() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("bucket-a").await.unwrap();
    s3.create_bucket("bucket-b").await.unwrap();
    // One nats-server, one wadm, one process; a host per lattice.
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("customer-a").await.unwrap();
    lattice.add_host("customer-b").await.unwrap();
    let mut all = secrets("pipeline-a", &s3, "customer-a");
    all.extend(secrets("pipeline-b", &s3, "customer-b"));
    lattice.serve_secrets("nats-kv", all).await.unwrap();

    let a = PipelineSpec::parse(&mqtt_to_s3("pipeline-a", "customer-a", &mqtt, &s3, "a/#", "bucket-a")).unwrap();
    let b = PipelineSpec::parse(
        &mqtt_to_s3("pipeline-b", "customer-b", &mqtt, &s3, "b/#", "bucket-b")
            .replace("customer-a-s3", "customer-b-s3"),
    )
    .unwrap();
    let (da, db) = tokio::join!(
        Deployment::start(lattice.nats(), &a, &par, &dir),
        Deployment::start(lattice.nats(), &b, &par, &dir)
    );
    let (da, db) = (da.unwrap(), db.unwrap());
    da.wait_linked(WAIT).await.unwrap();
    db.wait_linked(WAIT).await.unwrap();

    let n = 100;
    publish(&mqtt, "a/line-1", "a-", n);
    publish(&mqtt, "b/line-1", "b-", n);
    let (want_a, want_b) = (expected("a-", n), expected("b-", n));
    let (got_a, got_b) = tokio::join!(
        wait_s3(&client, "bucket-a", &want_a),
        wait_s3(&client, "bucket-b", &want_b)
    );
    assert_eq!(
        got_a.keys().cloned().collect::<Vec<_>>(),
        expected("a-", n),
        "bucket-a holds A's records only; seaweedfs log ends:\n{}",
        s3.process().log_tail(30)
    );
    assert_eq!(
        got_b.keys().cloned().collect::<Vec<_>>(),
        expected("b-", n),
        "bucket-b holds B's records only"
    );

    // Neither lattice reaches the other's providers: A's sink provider does not exist on lattice B.
    let nats = lattice.nats();
    let cross = nats
        .request(sluice_provider_status_subject("customer-b", &da.ids.sink), "".into())
        .await;
    assert!(cross.is_err(), "A's sink answered on lattice customer-b");
    let own = nats
        .request(sluice_provider_status_subject("customer-a", &da.ids.sink), "".into())
        .await;
    assert!(own.is_ok(), "A's sink answers on its own lattice");
    // A's sink provider serves A's step only.
    let status: Value = serde_json::from_slice(&own.unwrap().payload).unwrap();
    let components: Vec<_> = status["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["component"].clone())
        .collect();
    assert_eq!(components, vec![Value::String(da.ids.step.clone())]);

    da.undeploy().await.unwrap();
    db.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

fn sluice_provider_status_subject(lattice: &str, provider: &str) -> String {
    format!("sluice.{lattice}.{provider}.status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undeploying_a_pipeline_drains_its_links_while_the_shared_provider_serves_the_other() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("first").await.unwrap();
    s3.create_bucket("second").await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("plant").await.unwrap();
    // The credentials are the shared S3 provider's, so not tied to one pipeline.
    let all = secrets("any", &s3, "customer-a")
        .into_iter()
        .map(|(k, mut v)| {
            v.application = None;
            (k, v)
        })
        .collect();
    lattice.serve_secrets("nats-kv", all).await.unwrap();
    let shared = sluice_deploy::pipeline::SharedProviders::start(
        lattice.nats(),
        "plant-providers",
        "plant",
        &["mqtt", "s3"],
        &par,
    )
    .await
    .unwrap();

    let first = PipelineSpec::parse(&shared_spec(
        "first",
        "plant",
        &mqtt,
        &s3,
        "first/#",
        "first",
        "plant-providers",
    ))
    .unwrap();
    let second = PipelineSpec::parse(&shared_spec(
        "second",
        "plant",
        &mqtt,
        &s3,
        "second/#",
        "second",
        "plant-providers",
    ))
    .unwrap();
    let d1 = Deployment::start(lattice.nats(), &first, &par, &dir).await.unwrap();
    let d2 = Deployment::start(lattice.nats(), &second, &par, &dir).await.unwrap();
    assert_eq!(d1.ids.source, d2.ids.source, "one MQTT provider serves both pipelines");
    d1.wait_linked(WAIT).await.unwrap();
    d2.wait_linked(WAIT).await.unwrap();

    // Records in flight when the first pipeline is undeployed are drained: all land.
    let n = 200;
    publish(&mqtt, "first/x", "f-", n);
    publish(&mqtt, "second/x", "s-", n);
    let got = wait_s3(&client, "first", &expected("f-", n)).await;
    assert_eq!(
        lost(&got, &expected("f-", n)),
        Vec::<String>::new(),
        "seaweedfs log ends:\n{}",
        s3.process().log_tail(30)
    );
    let source = d1.ids.source.clone();
    let step1 = d1.ids.step.clone();
    d1.undeploy().await.unwrap();

    // The first pipeline's links are gone from the shared providers; the second's remain. wadm
    // reports the undeploy once the host has the link deleted; the provider lists a deleted link
    // until its drain has finished, so it is asked again for a few seconds.
    let link_components = || async {
        let status: Value = serde_json::from_slice(
            &lattice
                .nats()
                .request(sluice_provider_status_subject("plant", &source), "".into())
                .await
                .unwrap()
                .payload,
        )
        .unwrap();
        status["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["component"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut components = link_components().await;
    while components.contains(&step1) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        components = link_components().await;
    }
    assert!(!components.contains(&step1), "{components:?}");
    assert!(components.contains(&d2.ids.step), "{components:?}");

    // The shared provider keeps serving the second pipeline; the first gets nothing more.
    publish(&mqtt, "second/x", "t-", n);
    publish(&mqtt, "first/x", "late-", 10);
    let mut wanted = expected("s-", n);
    wanted.extend(expected("t-", n));
    let got = wait_s3(&client, "second", &wanted).await;
    assert_eq!(lost(&got, &wanted), Vec::<String>::new());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first_bucket = s3_records(&client, "first").await;
    assert!(
        first_bucket.keys().all(|k| k.starts_with("f-")),
        "undeployed pipeline still wrote"
    );

    d2.undeploy().await.unwrap();
    shared.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_run_deploys_to_an_existing_lattice_and_undeploys_on_ctrl_c() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("existing").await.unwrap();
    // Someone else's lattice: a host, wadm and a secrets backend already running.
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("customer-e").await.unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("existing-to-s3", &s3, "customer-a"))
        .await
        .unwrap();
    let spec = dir.join("existing.yaml");
    std::fs::write(
        &spec,
        mqtt_to_s3("existing-to-s3", "customer-e", &mqtt, &s3, "existing/#", "existing"),
    )
    .unwrap();

    let mut run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env("SLUICE_KEYS_DIR", common::lattice::keys_dir())
        .arg("run")
        .arg(&spec)
        .args(["--lattice-url", lattice.nats_url()])
        .arg("--par-dir")
        .arg(&par)
        .stdout(std::fs::File::create(dir.join("run.out")).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(run.stderr.take().unwrap());
    let deployed = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let mut seen = String::new();
        while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0) > 0 {
            seen.push_str(&line);
            if line.starts_with("deployed") {
                return (true, seen, stderr);
            }
            line.clear();
        }
        (false, seen, stderr)
    });
    let (ok, seen, mut stderr) = tokio::time::timeout(WAIT, deployed).await.unwrap().unwrap();
    assert!(ok, "sluice run did not deploy: {seen}");
    assert!(!seen.contains("starting wadm"), "it used the existing lattice: {seen}");

    // The links go live once wadm has reconciled and the host has put them: probe until a
    // reading comes through, then every reading published must land.
    probe_until_landed(&mqtt, "existing/plant-e", &s3, "existing", || {
        let out = std::fs::read_to_string(dir.join("run.out")).unwrap_or_default();
        let tail: String = out.chars().skip(out.chars().count().saturating_sub(600)).collect();
        format!("sluice run: {tail}")
    })
    .await;
    let n = 100;
    let wanted = expected("existing-", n);
    publish(&mqtt, "existing/plant-e", "existing-", n);
    let got = wait_s3(&client, "existing", &wanted).await;
    assert_eq!(
        lost(&got, &wanted),
        Vec::<String>::new(),
        "records lost: {got:?}; seaweedfs log ends:\n{}",
        s3.process().log_tail(30)
    );

    // Ctrl-C: the CLI undeploys and exits cleanly; the lattice it did not start keeps running.
    let pid = run.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || run.wait()).await.unwrap().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "sluice run exited with {status}: {rest}");
    assert!(rest.contains("undeploying `existing-to-s3`"), "{rest}");
    assert!(
        !rest.contains("stopping the host"),
        "it leaves the lattice running: {rest}"
    );
    lattice.stop().await.unwrap();
}
