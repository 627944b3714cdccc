//! The assembled pipeline on the real host through failures: providers killed with SIGKILL
//! mid-stream (the host restarts them), and the S3 endpoint unreachable at deploy and for a minute
//! while records flow. Records are counted: none lost, duplicates reported.

use std::time::{Duration, Instant};

use sluice_deploy::children;
use sluice_integration::procfs;
use sluice_integration::proxy::Proxy;
use sluice_provider_core::RunnerSettings;

use super::*;

/// How soon a restarted provider must be moving records again.
const RESUME: Duration = Duration::from_secs(10);

/// The pid of the provider the host `host` started from `package`'s archive.
pub(super) fn provider_pid(host: &str, package: &str) -> Option<u32> {
    children::running()
        .into_iter()
        .find(|c| c.is_provider(host, package))
        .map(|c| c.pid)
}

/// Waits for a provider of `package` whose pid is not `old`; returns it.
pub(super) async fn restarted(host: &str, package: &str, old: u32) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        match provider_pid(host, package) {
            Some(pid) if pid != old => return pid,
            _ if Instant::now() > deadline => panic!("the host did not restart {package}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Publishes `n` readings `{prefix}{i}` in `chunks` parts, `pause` apart, from a blocking thread.
pub(super) fn publish_paced(
    mqtt: &Mosquitto,
    topic: &str,
    prefix: &'static str,
    n: usize,
    chunks: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let (port, topic) = (mqtt.port, topic.to_string());
    tokio::task::spawn_blocking(move || {
        let per = n.div_ceil(chunks);
        for chunk in 0..chunks {
            let lines: Vec<String> = (chunk * per..((chunk + 1) * per).min(n))
                .map(|i| {
                    format!(
                        r#"{{"device":"{prefix}{i}","temp":{},"site":"plant-k"}}"#,
                        20.0 + i as f64 / 100.0
                    )
                })
                .collect();
            publish_lines(port, &topic, &lines);
            std::thread::sleep(pause);
        }
    })
}

/// Waits until the pipeline's `end` link (`source` or `sink`) has counted more than `at_least`
/// records (delivered at the source, written at the sink).
pub(super) async fn moving(deployment: &Deployment, end: &str, at_least: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let progress = deployment.progress().await;
        let count = match end {
            "source" => progress.source.map(|l| l.metrics.delivered),
            _ => progress.sink.map(|l| l.metrics.written),
        };
        if count.unwrap_or(0) > at_least {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Kills the provider of `package` with SIGKILL once the pipeline's `end` moves records, waits for
/// the host to restart it, and asserts that the restarted provider moves records within
/// [`RESUME`].
async fn kill_and_resume(deployment: &Deployment, host: &str, package: &str, end: &str) {
    assert!(
        moving(deployment, end, 0, WAIT).await,
        "{package}: nothing moved before the kill"
    );
    let pid = provider_pid(host, package).expect("the provider runs");
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let killed = Instant::now();
    let new = restarted(host, package, pid).await;
    let restarted_after = killed.elapsed();
    // The restarted provider counts from zero: moving again means its own counter grows.
    assert!(
        moving(deployment, end, 0, RESUME).await,
        "{package} (pid {new}, restarted {restarted_after:?} after the kill) moved nothing within {RESUME:?}: {}",
        deployment.progress().await
    );
    eprintln!(
        "{package}: killed, restarted after {restarted_after:?}, moving again after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_source_and_sink_providers_are_restarted_and_nothing_is_lost() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("killed").await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice.add_host("plant-k").await.unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("killed-to-s3", &s3, "customer-a"))
        .await
        .unwrap();
    let spec = PipelineSpec::parse(&mqtt_to_s3("killed-to-s3", "plant-k", &mqtt, &s3, "killed/#", "killed")).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();

    let n = 4000;
    let publisher = publish_paced(&mqtt, "killed/line-1", "k-", n, 40, Duration::from_millis(150));
    kill_and_resume(&deployment, &host, "sluice-provider-mqtt", "source").await;
    kill_and_resume(&deployment, &host, "sluice-provider-s3", "sink").await;
    publisher.await.unwrap();
    let wanted = expected("k-", n);
    let got = wait_s3(&client, "killed", &wanted).await;
    let log = format!("seaweedfs log ends:\n{}", s3.process().log_tail(30));
    let duplicated = assert_landed("killed MQTT source and S3 sink", &got, &wanted, log);
    // At most what was read and not yet acknowledged comes again: the source's unacknowledged
    // bound (max_in_flight * max_batch_records) per kill.
    let window = RunnerSettings::default().max_unacknowledged();
    assert!(duplicated <= 2 * window, "{duplicated} readings duplicated");
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_kafka_provider_serving_both_ends_is_restarted_and_nothing_is_lost() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let kafka = KafkaBroker::start().unwrap();
    let bootstrap = kafka.bootstrap();
    for topic in ["orders", "orders.dlq", "orders.enriched"] {
        create_topic(&bootstrap, topic).await;
    }
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice.add_host("customer-b").await.unwrap();
    lattice.serve_secrets("nats-kv", HashMap::new()).await.unwrap();
    // The committed example: one Kafka provider reads `orders` and writes `orders.enriched`. With
    // static group membership the restarted provider takes its partitions back at once, instead
    // of waiting `session_timeout` (30 s) for the group to give up on the killed member.
    let yaml = std::fs::read_to_string(examples().join("kafka-to-kafka.yaml"))
        .unwrap()
        .replace("127.0.0.1:9092", &bootstrap)
        .replace(
            "    group_id: orders-enrich\n",
            "    group_id: orders-enrich\n    group_instance_id: edge-gw-1\n",
        );
    assert!(yaml.contains("group_instance_id"), "{yaml}");
    let spec = PipelineSpec::parse(&yaml).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();

    let n = 3000;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let feed = tokio::spawn(async move {
        for chunk in 0..30 {
            let sends = (chunk * 100..(chunk + 1) * 100).map(|i| {
                let producer = producer.clone();
                async move {
                    let line = format!(r#"{{"device":"o-{i}","temp":1,"site":"b"}}"#);
                    producer
                        .send(
                            FutureRecord::<(), _>::to("orders").payload(&line),
                            Duration::from_secs(30),
                        )
                        .await
                        .map_err(|(e, _)| e)
                        .unwrap();
                }
            });
            futures::future::join_all(sends).await;
            // Paced over about 24 s: the group gives the first member its partition only after
            // a join of several seconds, and the restarted one after another: orders must still
            // arrive then, or the restarted provider has nothing left to move.
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
    });
    kill_and_resume(&deployment, &host, "sluice-provider-kafka", "sink").await;
    feed.await.unwrap();
    let wanted: Vec<String> = (0..n).map(|i| format!("o-{i}")).collect();
    let got = kafka_records(&bootstrap, "orders.enriched", &wanted).await;
    let duplicated = assert_landed("killed Kafka provider", &got, &wanted, deployment.progress().await);
    let window = RunnerSettings::default().max_unacknowledged();
    assert!(duplicated <= window, "{duplicated} orders duplicated");
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

/// An S3 -> S3 pipeline (one provider serves both ends) on the test server, reading `in/` of
/// `inbox` line by line and writing to `outbox`.
fn s3_to_s3(name: &str, lattice: &str, s3: &S3Server) -> String {
    format!(
        "name: {name}
lattice: {lattice}
source:
  provider: s3
  config:
    endpoint: {endpoint}
    bucket: inbox
    prefix: in/
    split: lines
    poll_interval: 200ms
  secrets:
    access_key_id: customer-a-s3-access-key-id
    secret_access_key: customer-a-s3-secret-access-key
step:
  component: steps/sensors.wasm
sink:
  provider: s3
  config:
    endpoint: {endpoint}
    bucket: outbox
    key_template: \"readings/{{unique}}.jsonl\"
    payload_encoding: utf8
    max_object_age: 1s
  secrets:
    access_key_id: customer-a-s3-access-key-id
    secret_access_key: customer-a-s3-secret-access-key
",
        endpoint = s3.endpoint()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_s3_provider_serving_both_ends_is_restarted_and_nothing_is_lost() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let s3 = S3Server::start().unwrap();
    let client = s3.client();
    for bucket in ["inbox", "outbox"] {
        s3.create_bucket(bucket).await.unwrap();
    }
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice.add_host("plant-s").await.unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("s3-killed", &s3, "customer-a"))
        .await
        .unwrap();
    let spec = PipelineSpec::parse(&s3_to_s3("s3-killed", "plant-s", &s3)).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();

    // Objects of 100 readings arrive while the pipeline runs; the provider is killed mid-stream.
    let (objects, per) = (40, 100);
    let feed = tokio::spawn({
        let client = client.clone();
        async move {
            for object in 0..objects {
                let body: String = (object * per..(object + 1) * per)
                    .map(|i| format!("{{\"device\":\"s-{i}\",\"temp\":1,\"site\":\"s\"}}\n"))
                    .collect();
                client
                    .put_object()
                    .bucket("inbox")
                    .key(format!("in/{object:03}.jsonl"))
                    .body(body.into_bytes().into())
                    .send()
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    });
    kill_and_resume(&deployment, &host, "sluice-provider-s3", "source").await;
    feed.await.unwrap();
    let wanted = expected("s-", objects * per);
    let got = wait_s3(&client, "outbox", &wanted).await;
    assert_landed("killed S3 provider", &got, &wanted, deployment.progress().await);
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_http_source_is_restarted_and_every_answered_request_is_kept() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let s3 = S3Server::start().unwrap();
    let client = s3.client();
    s3.create_bucket("posted").await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice.add_host("plant-h").await.unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("http-killed", &s3, "customer-a"))
        .await
        .unwrap();
    let port = sluice_integration::servers::free_port();
    let head = format!(
        "name: http-killed\nlattice: plant-h\nsource:\n  provider: http-inproc\n  provider_config:\n    address: 127.0.0.1:{port}\n  config:\n    path: /ingest/k\n    methods: POST\n"
    );
    let s3_spec = s3_to_s3("x", "x", &s3).replace("bucket: outbox", "bucket: posted");
    let step_and_sink = &s3_spec[s3_spec.find("step:").unwrap()..];
    let spec = PipelineSpec::parse(&format!("{head}{step_and_sink}")).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();

    // 40 requests of 100 readings, one after another; a request that is not answered 200 (the
    // listener is gone, or the pipeline says 503) is sent again, as a device would.
    let (requests, per) = (40, 100);
    let url = format!("http://127.0.0.1:{port}/ingest/k");
    let poster = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut failed = 0;
        for request in 0..requests {
            let body: String = (request * per..(request + 1) * per)
                .map(|i| format!("{{\"device\":\"h-{i}\",\"temp\":1,\"site\":\"h\"}}\n"))
                .collect();
            loop {
                match http
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => break,
                    _ => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        failed
    });
    kill_and_resume(&deployment, &host, "sluice-provider-http-inproc", "source").await;
    let failed = poster.await.unwrap();
    let wanted = expected("h-", requests * per);
    let got = wait_s3(&client, "posted", &wanted).await;
    assert_landed("killed HTTP source", &got, &wanted, deployment.progress().await);
    eprintln!("killed HTTP source: {failed} requests sent again");
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_unreachable_at_deploy_and_for_a_minute_loses_nothing_and_idles() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("outage").await.unwrap();
    // The providers reach S3 only through a proxy, down at deploy.
    let proxy = Proxy::start(s3.port(), false).await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice.add_host("plant-o").await.unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("outage-to-s3", &s3, "customer-a"))
        .await
        .unwrap();
    let yaml = mqtt_to_s3("outage-to-s3", "plant-o", &mqtt, &s3, "outage/#", "outage")
        .replace(&s3.endpoint(), &format!("http://127.0.0.1:{}", proxy.port()));
    let spec = PipelineSpec::parse(&yaml).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();

    // Unreachable at deploy: degraded and retrying, never refused.
    let deadline = Instant::now() + WAIT;
    let degraded = loop {
        let progress = deployment.progress().await;
        assert!(progress.refused.is_empty(), "the sink link was refused: {progress}");
        if let Some(reason) = progress.sink.as_ref().and_then(|l| l.degraded.clone()) {
            break reason;
        }
        assert!(
            Instant::now() < deadline,
            "the sink link never showed as degraded: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("sink degraded at deploy: {degraded}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(deployment.progress().await.refused.is_empty());
    let first = 200;
    publish(&mqtt, "outage/line-1", "before-", first);
    proxy.set_up(true);
    let before = expected("before-", first);
    let got = wait_s3(&client, "outage", &before).await;
    assert_landed("S3 unreachable at deploy", &got, &before, deployment.progress().await);
    assert_eq!(deployment.progress().await.sink.unwrap().degraded, None);

    // A minute without S3 while readings keep coming: the providers wait without spinning.
    proxy.set_up(false);
    let during = 500;
    publish(&mqtt, "outage/line-1", "during-", during);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let window = Duration::from_secs(30);
    let shares = futures::future::join_all(["sluice-provider-mqtt", "sluice-provider-s3"].map(|package| {
        let pid = provider_pid(&host, package).expect("the provider runs");
        async move { (package, procfs::core_share(pid, window).await) }
    }))
    .await;
    for (package, share) in shares {
        eprintln!("{package} during the outage: {:.1}% of a core", share * 100.0);
        assert!(
            share < 0.05,
            "{package} used {:.1}% of a core waiting for S3",
            share * 100.0
        );
    }
    proxy.set_up(true);
    let mut wanted = expected("before-", first);
    wanted.extend(expected("during-", during));
    let got = wait_s3(&client, "outage", &wanted).await;
    assert_landed(
        "S3 outage at deploy and for 60 s",
        &got,
        &wanted,
        deployment.progress().await,
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

/// `sluice run` of an MQTT -> S3 pipeline on a lattice of its own, once it has deployed.
async fn sluice_run(name: &str, mqtt: &Mosquitto, s3: &S3Server, bucket: &str) -> std::process::Child {
    let (par, dir) = (archives().await, pipeline_dir());
    let spec = dir.join(format!("{name}.yaml"));
    std::fs::write(&spec, mqtt_to_s3(name, name, mqtt, s3, &format!("{name}/#"), bucket)).unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env("SLUICE_KEYS_DIR", crate::common::lattice::keys_dir())
        .arg("run")
        .arg(&spec)
        .arg("--par-dir")
        .arg(&par)
        .arg("--secret")
        .arg(format!("customer-a-s3-access-key-id={}", s3.access_key_id))
        .arg("--secret")
        .arg(format!("customer-a-s3-secret-access-key={}", s3.secret_access_key))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(run.stderr.take().unwrap());
    let deployed = tokio::task::spawn_blocking(move || {
        let mut seen = String::new();
        let mut lines = std::io::BufRead::lines(stderr);
        while let Some(line) = lines.next() {
            let line = line.unwrap_or_default();
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("deployed") {
                // Keep reading its stderr, so it never blocks on a full pipe or loses it.
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(seen);
            }
        }
        Err(seen)
    });
    let seen = tokio::time::timeout(WAIT, deployed).await.unwrap().unwrap();
    assert!(seen.is_ok(), "sluice run did not deploy: {seen:?}");
    run
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(") ")
                        .map(|(_, rest)| rest.split_whitespace().nth(1) == Some(&pid.to_string()))
                })
                .unwrap_or(false)
        })
        .collect()
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_sluice_run_started_outlives_it_after_sigterm_or_sigkill() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    s3.create_bucket("owned").await.unwrap();
    for signal in ["-TERM", "-KILL"] {
        let mut run = sluice_run(&format!("owned{}", signal.to_lowercase()), &mqtt, &s3, "owned").await;
        let pid = run.id();
        // Its nats-server and the two providers the host started.
        let deadline = Instant::now() + WAIT;
        let started = loop {
            let started = children_of(pid);
            if started.len() >= 3 {
                break started;
            }
            assert!(Instant::now() < deadline, "sluice run started {started:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success());
        let stopped = Instant::now();
        tokio::task::spawn_blocking(move || run.wait()).await.unwrap().unwrap();
        // SIGTERM: sluice run ends them before it exits. SIGKILL (as good as a crash): its
        // nats-server dies with it (PDEATHSIG) and each provider, seeing its host gone, drains
        // and exits by itself within its drain timeout (30 s by default) plus 10 s.
        let limit = match signal {
            "-TERM" => Duration::from_secs(1),
            _ => Duration::from_secs(45),
        };
        loop {
            let left: Vec<u32> = started.iter().copied().filter(|p| running(*p)).collect();
            if left.is_empty() {
                break;
            }
            if stopped.elapsed() >= limit {
                let describe = |p: &u32| {
                    let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                    let field = |name: &str| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix(name))
                            .unwrap_or_default()
                            .trim()
                            .to_string()
                    };
                    let exe = std::fs::read_link(format!("/proc/{p}/exe")).unwrap_or_default();
                    format!(
                        "{p} ({}, {}, state {}, parent {}, {} threads)",
                        field("Name:"),
                        exe.display(),
                        field("State:"),
                        field("PPid:"),
                        field("Threads:")
                    )
                };
                panic!(
                    "after kill {signal}, {:?} of {started:?} still run {:?} later",
                    left.iter().map(describe).collect::<Vec<_>>(),
                    stopped.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "sluice run, kill {signal}: its {} processes gone {:?} after the signal",
            started.len(),
            stopped.elapsed()
        );
    }
}

/// A host configured as a stock one gives a provider 300 ms to shut down, then kills it: the
/// pipeline undeployed mid-stream (links deleted, providers stopped) and deployed again loses no
/// reading, and what comes twice is at most what was read and not yet acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undeployed_mid_stream_on_a_stock_host_and_redeployed_nothing_is_lost() {
    use sluice_deploy::host::{HostOptions, STOCK_PROVIDER_SHUTDOWN_DELAY};
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("stock").await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice
        .add_host_with(
            "stock-u",
            &HostOptions {
                provider_shutdown_delay: STOCK_PROVIDER_SHUTDOWN_DELAY,
                ..HostOptions::default()
            },
        )
        .await
        .unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("stock-to-s3", &s3, "customer-a"))
        .await
        .unwrap();
    let spec = PipelineSpec::parse(&mqtt_to_s3("stock-to-s3", "stock-u", &mqtt, &s3, "stock/#", "stock")).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();

    let n = 4000;
    let publisher = publish_paced(&mqtt, "stock/line-1", "u-", n, 40, Duration::from_millis(150));
    assert!(
        moving(&deployment, "sink", 200, WAIT).await,
        "nothing moved before the undeploy"
    );
    let undeploying = Instant::now();
    let before = deployment.progress().await;
    deployment.undeploy().await.unwrap();
    let undeployed_after = undeploying.elapsed();
    // Readings keep arriving while nothing runs: the broker keeps them for the MQTT session.
    let deadline = Instant::now() + WAIT;
    while ["sluice-provider-mqtt", "sluice-provider-s3"]
        .iter()
        .any(|p| provider_pid(&host, p).is_some())
    {
        assert!(Instant::now() < deadline, "the providers still run after the undeploy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    publisher.await.unwrap();
    let wanted = expected("u-", n);
    let got = wait_s3(&client, "stock", &wanted).await;
    let context = format!(
        "before the undeploy: {before}; now: {}; seaweedfs log ends:\n{}",
        deployment.progress().await,
        s3.process().log_tail(30)
    );
    let duplicated = assert_landed(
        "undeployed mid-stream on a stock host (300 ms shutdown delay) and redeployed",
        &got,
        &wanted,
        context,
    );
    eprintln!("undeploy took {undeployed_after:?}; before it: {before}");
    let window = RunnerSettings::default().max_unacknowledged();
    assert!(duplicated <= window, "{duplicated} readings duplicated");
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}
