//! A multi-step pipeline with fan-out on the real host: the committed `sensors-fanout` example
//! (MQTT -> clean -> { S3 archive, enrich -> Kafka }, every edge through a JetStream hop on the
//! lattice's nats-server, each sink called by a relay step), deployed through wadm with only its
//! servers' addresses pointed at local ones. Readings published once reach both branches, counted
//! per branch (0 lost; duplicates reported); with the Kafka broker frozen for 30 s, the S3 branch
//! keeps moving while the Kafka branch's backlog waits in its hop, and once the broker is back it
//! drains with nothing lost.

use sluice_compose::compose::{relay, ComposeOptions};
use sluice_deploy::dag::{DagDeployment, DagSpec};
use sluice_deploy::progress::DagProgress;
use wadm_types::api::StatusType;

use super::*;

/// How long the fan-out test keeps the Kafka broker frozen (the issue: one branch's sink stopped
/// for 30 s), and when, midway, it checks that the other branch still moves.
const FROZEN_FOR: Duration = Duration::from_secs(30);
const FROZEN_MIDWAY: Duration = Duration::from_secs(15);

/// The committed fan-out example pointed at the test servers and the lattice's JetStream.
fn fanout_spec(mqtt: &Mosquitto, s3: &S3Server, kafka: &KafkaBroker, nats_url: &str) -> DagSpec {
    let yaml = std::fs::read_to_string(examples().join("sensors-fanout.yaml"))
        .unwrap()
        .replace("mqtt://127.0.0.1:1883", &mqtt.url())
        .replace("http://127.0.0.1:8333", &s3.endpoint())
        .replace("127.0.0.1:9092", &kafka.bootstrap())
        .replace("nats://127.0.0.1:4222", nats_url);
    DagSpec::parse(&yaml).unwrap()
}

/// The warehouse branch's backlog in the `enrich` hop, as JetStream reports it.
fn warehouse_backlog(progress: &DagProgress) -> Option<u64> {
    progress
        .hops
        .iter()
        .find(|h| h.step == "enrich")?
        .consumers
        .iter()
        .find(|c| c.name == "warehouse")?
        .backlog()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_gives_both_branches_every_record_and_a_stalled_branch_does_not_stop_the_other() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    // `clean` is the example Rust logic (steps/sensors.wasm); `enrich` here passes records on as
    // they are (the relay's composition), so both branches carry the same mapped readings.
    let relay_step = relay(&ComposeOptions::default()).expect("compose the relay");
    std::fs::write(dir.join("steps/relay.wasm"), &relay_step.bytes).unwrap();
    std::fs::write(dir.join("steps/enrich.wasm"), &relay_step.bytes).unwrap();
    let (mqtt, s3, kafka) = (
        Mosquitto::start().unwrap(),
        S3Server::start().unwrap(),
        KafkaBroker::start().unwrap(),
    );
    let client = s3.client();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("customer-a").await.unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("sensors-fanout", &s3, "customer-a"))
        .await
        .unwrap();
    let spec = fanout_spec(&mqtt, &s3, &kafka, lattice.nats_url());
    s3.create_bucket("sensors-archive").await.unwrap();
    create_topic(&kafka.bootstrap(), "readings.enriched").await;

    let started = tokio::time::Instant::now();
    let deployment = DagDeployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    eprintln!("fan-out deployed and linked in {:?}", started.elapsed());

    // Every reading reaches both branches.
    let n = 300;
    let first = expected("a-", n);
    publish(&mqtt, "sensors/plant-a", "a-", n);
    let archived = wait_s3(&client, "sensors-archive", &first).await;
    let archive_dups = assert_landed(
        "fan-out, S3 archive branch",
        &archived,
        &first,
        deployment.progress().await,
    );
    let warehoused = kafka_records(&kafka.bootstrap(), "readings.enriched", &first).await;
    let warehouse_dups = assert_landed(
        "fan-out, enrich -> Kafka branch",
        &warehoused,
        &first,
        deployment.progress().await,
    );
    let progress = deployment.progress().await;
    eprintln!("after {n} readings:\n{progress}");
    let clean = &deployment.ids.steps["clean"];
    let into_clean = progress.link(&deployment.ids.source, clean).expect("source -> clean");
    assert!(into_clean.metrics.delivered >= n as u64, "{progress}");
    let hop = progress.hops.iter().find(|h| h.step == "clean").unwrap();
    assert!(
        hop.messages.unwrap_or(0) >= n as u64,
        "the clean hop holds every record: {progress}"
    );

    // The Kafka broker frozen: the archive branch keeps moving, the warehouse branch's records
    // wait in its hop (held, not acknowledged).
    kafka.process().signal("STOP").unwrap();
    let frozen_at = tokio::time::Instant::now();
    let second = expected("b-", n);
    publish(&mqtt, "sensors/plant-a", "b-", n);
    let archived = wait_s3(&client, "sensors-archive", &second).await;
    let stalled = deployment.progress().await;
    assert_eq!(
        lost(&archived, &second),
        Vec::<String>::new(),
        "the archive branch stopped while Kafka was down:\n{stalled}"
    );
    let archive_while_frozen = frozen_at.elapsed();
    // The warehouse branch's records reach its hop and wait there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut stalled = stalled;
    while warehouse_backlog(&stalled).unwrap_or(0) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stalled = deployment.progress().await;
    }
    let backlog = warehouse_backlog(&stalled);
    assert!(
        backlog.is_some_and(|b| b > 0),
        "the warehouse branch holds its records in its hop while Kafka is down:\n{stalled}"
    );
    eprintln!(
        "Kafka frozen: {n} readings archived in S3 within {archive_while_frozen:?}; warehouse backlog {backlog:?}\n{stalled}"
    );
    // Still down 15 s in: the archive branch keeps moving (a third batch lands in S3 while the
    // broker is frozen), the warehouse backlog grows.
    tokio::time::sleep(FROZEN_MIDWAY.saturating_sub(frozen_at.elapsed())).await;
    let third = expected("c-", n);
    publish(&mqtt, "sensors/plant-a", "c-", n);
    let archived = wait_s3(&client, "sensors-archive", &third).await;
    let midway = deployment.progress().await;
    assert_eq!(
        lost(&archived, &third),
        Vec::<String>::new(),
        "the archive branch stopped while Kafka was down:\n{midway}"
    );
    let archived_third_at = frozen_at.elapsed();
    assert!(
        archived_third_at < FROZEN_FOR,
        "the third batch is archived while Kafka is still frozen (after {archived_third_at:?})"
    );
    eprintln!(
        "Kafka frozen {archived_third_at:?}: a third batch of {n} archived; warehouse backlog {:?}",
        warehouse_backlog(&midway)
    );
    // Down for 30 s in all, then back: the warehouse backlog drains, nothing lost.
    tokio::time::sleep(FROZEN_FOR.saturating_sub(frozen_at.elapsed())).await;
    kafka.process().signal("CONT").unwrap();
    let down_for = frozen_at.elapsed();
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    all.extend(third.iter().cloned());
    all.sort();
    let warehoused = kafka_records(&kafka.bootstrap(), "readings.enriched", &all).await;
    let drained_dups = assert_landed(
        "fan-out, Kafka branch after the broker was back",
        &warehoused,
        &all,
        deployment.progress().await,
    );
    let archived = s3_records(&client, "sensors-archive").await;
    let archive_all_dups = assert_landed("fan-out, S3 archive branch, all", &archived, &all, "");
    // The last acknowledgements follow the writes: the backlog reaches 0.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut end = deployment.progress().await;
    while warehouse_backlog(&end) != Some(0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        end = deployment.progress().await;
    }
    assert_eq!(
        warehouse_backlog(&end),
        Some(0),
        "the warehouse backlog drained:\n{end}"
    );
    eprintln!(
        "fan-out: {} readings, both branches 0 lost; duplicates: archive {archive_dups} then {archive_all_dups}, warehouse {warehouse_dups} then {drained_dups}; Kafka down {down_for:?}; total {:?}\n{end}",
        3 * n,
        started.elapsed()
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipeline_reading_another_pipelines_output_gets_every_record() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let relay_step = relay(&ComposeOptions::default()).expect("compose the relay");
    std::fs::write(dir.join("steps/relay.wasm"), &relay_step.bytes).unwrap();
    std::fs::write(dir.join("steps/alerts.wasm"), &relay_step.bytes).unwrap();
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("alerts").await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("customer-a").await.unwrap();
    lattice
        .serve_secrets("nats-kv", secrets("readings-alerts", &s3, "customer-a"))
        .await
        .unwrap();
    // Both pipelines run on one host: their hops go through one shared JetStream provider (a
    // wasmCloud 1.x host cannot run two providers from one archive).
    let hops = sluice_deploy::pipeline::SharedProviders::start(
        lattice.nats(),
        "hop-providers",
        "customer-a",
        &["jetstream"],
        &par,
    )
    .await
    .unwrap();
    let nats_url = lattice.nats_url().to_string();
    let upstream = DagSpec::parse(&format!(
        "name: cleaned-readings
lattice: customer-a
source: {{ provider: mqtt, config: {{ url: '{}', topics: 'plant/#', qos: 1 }} }}
steps:
  clean: {{ component: steps/sensors.wasm }}
hops: {{ shared: hop-providers, config: {{ url: '{nats_url}' }} }}
",
        mqtt.url()
    ))
    .unwrap();
    let downstream = DagSpec::parse(&format!(
        "name: readings-alerts
lattice: customer-a
source: {{ pipeline: cleaned-readings, output: clean }}
steps:
  alerts: {{ component: steps/alerts.wasm, to: [archive] }}
sinks:
  archive:
    provider: s3
    config: {{ endpoint: '{}', bucket: alerts, payload_encoding: utf8, max_object_age: 1s }}
    secrets: {{ access_key_id: customer-a-s3-access-key-id, secret_access_key: customer-a-s3-secret-access-key }}
hops: {{ shared: hop-providers, config: {{ url: '{nats_url}' }} }}
",
        s3.endpoint()
    ))
    .unwrap();
    let a = DagDeployment::start(lattice.nats(), &upstream, &par, &dir)
        .await
        .unwrap();
    let b = DagDeployment::start(lattice.nats(), &downstream, &par, &dir)
        .await
        .unwrap();
    a.wait_linked(WAIT).await.unwrap();
    b.wait_linked(WAIT).await.unwrap();

    let n = 200;
    let wanted = expected("sub-", n);
    publish(&mqtt, "plant/line-1", "sub-", n);
    let got = wait_s3(&client, "alerts", &wanted).await;
    let progress = b.progress().await;
    let duplicated = assert_landed(
        "sub-pipeline, readings-alerts <- cleaned-readings",
        &got,
        &wanted,
        &progress,
    );
    assert_eq!(got.len(), n, "only the published records: {got:?}");
    // The downstream pipeline read the upstream's hop through a consumer of its own.
    let upstream_hop = progress
        .hops
        .iter()
        .find(|h| h.stream == "sluice_customer-a_cleaned-readings_clean")
        .expect("the upstream hop is watched");
    assert!(upstream_hop.messages.unwrap_or(0) >= n as u64, "{progress}");
    eprintln!("sub-pipeline: {n} records, 0 lost, {duplicated} duplicated\n{progress}");

    b.undeploy().await.unwrap();
    a.undeploy().await.unwrap();
    hops.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

/// The components (id -> instances) a host runs, from its inventory on the control interface.
async fn host_components(nats: &async_nats::Client, lattice: &str, host: &str) -> BTreeMap<String, u64> {
    let reply = nats
        .request(format!("wasmbus.ctl.v1.{lattice}.host.get.{host}"), "".into())
        .await
        .expect("the host answers its inventory");
    let inventory: Value = serde_json::from_slice(&reply.payload).expect("inventory is JSON");
    inventory["response"]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["id"].as_str()?.to_string(), c["max_instances"].as_u64()?)))
        .collect()
}

/// The fan-out example as pipeline `name` on `lattice`, with its own bucket and topic, `enrich`
/// at `enrich` (its instances, and its spread when given).
fn scaled_spec(
    name: &str,
    lattice: &str,
    enrich: &str,
    servers: (&Mosquitto, &S3Server, &KafkaBroker),
    nats_url: &str,
) -> DagSpec {
    let (mqtt, s3, kafka) = servers;
    let yaml = std::fs::read_to_string(examples().join("sensors-fanout.yaml"))
        .unwrap()
        .replace("name: sensors-fanout", &format!("name: {name}"))
        .replace("lattice: customer-a", &format!("lattice: {lattice}"))
        .replace("customer-a-s3-", &format!("{name}-s3-"))
        .replace("bucket: sensors-archive", &format!("bucket: {name}"))
        .replace("topic: readings.enriched", &format!("topic: {name}"))
        .replace("    instances: 4\n", &format!("    {enrich}\n"))
        .replace("mqtt://127.0.0.1:1883", &mqtt.url())
        .replace("http://127.0.0.1:8333", &s3.endpoint())
        .replace("127.0.0.1:9092", &kafka.bootstrap())
        .replace("nats://127.0.0.1:4222", nats_url);
    DagSpec::parse(&yaml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_middle_step_at_three_instances_over_two_hosts_moves_the_same_records_as_at_one() {
    sluice_integration::init_tracing();
    // Three hosts: this test runs alone.
    let _permit = LATTICES.acquire_many(2).await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let relay_step = relay(&ComposeOptions::default()).expect("compose the relay");
    std::fs::write(dir.join("steps/relay.wasm"), &relay_step.bytes).unwrap();
    std::fs::write(dir.join("steps/enrich.wasm"), &relay_step.bytes).unwrap();
    let (mqtt, s3, kafka) = (
        Mosquitto::start().unwrap(),
        S3Server::start().unwrap(),
        KafkaBroker::start().unwrap(),
    );
    let client = s3.client();
    // One NATS server and wadm: lattice `scale-one` with one host, lattice `scale-spread` with two
    // hosts labelled by zone.
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let single = lattice.add_host("scale-one").await.unwrap();
    let mut zones = Vec::new();
    for zone in ["a", "b"] {
        let options = sluice_deploy::host::HostOptions {
            labels: BTreeMap::from([("zone".to_string(), zone.to_string())]),
            ..Default::default()
        };
        zones.push(lattice.add_host_with("scale-spread", &options).await.unwrap());
    }
    let mut served = secrets("fanout-one", &s3, "fanout-one");
    served.extend(secrets("fanout-spread", &s3, "fanout-spread"));
    lattice.serve_secrets("nats-kv", served).await.unwrap();
    let servers = (&mqtt, &s3, &kafka);
    let one = scaled_spec("fanout-one", "scale-one", "instances: 1", servers, lattice.nats_url());
    let spread = scaled_spec(
        "fanout-spread",
        "scale-spread",
        "instances: 3\n    spread: [{ name: zone-a, requirements: { zone: a } }, { name: zone-b, requirements: { zone: b } }]",
        servers,
        lattice.nats_url(),
    );
    for name in ["fanout-one", "fanout-spread"] {
        s3.create_bucket(name).await.unwrap();
        create_topic(&kafka.bootstrap(), name).await;
    }
    let started = tokio::time::Instant::now();
    let (at_one, at_three) = tokio::join!(
        DagDeployment::start(lattice.nats(), &one, &par, &dir),
        DagDeployment::start(lattice.nats(), &spread, &par, &dir)
    );
    let (at_one, at_three) = (at_one.unwrap(), at_three.unwrap());
    let (linked_one, linked_three) = tokio::join!(at_one.wait_linked(WAIT), at_three.wait_linked(WAIT));
    linked_one.unwrap();
    linked_three.unwrap();

    // wadm spreads `enrich` over both zones: 2 + 1 instances.
    let enrich = at_three.ids.steps["enrich"].clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let placed = loop {
        let mut placed = Vec::new();
        for host in &zones {
            placed.push(
                host_components(lattice.nats(), "scale-spread", host)
                    .await
                    .get(&enrich)
                    .copied(),
            );
        }
        if placed.iter().all(Option::is_some) || tokio::time::Instant::now() > deadline {
            break placed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut counts: Vec<u64> = placed.iter().map(|p| p.unwrap_or(0)).collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 2], "`{enrich}` on the zone a and b hosts: {placed:?}");
    let one_enrich = &at_one.ids.steps["enrich"];
    eprintln!(
        "deployed in {:?}: `{enrich}` instances per host {placed:?}; at one: {:?}",
        started.elapsed(),
        host_components(lattice.nats(), "scale-one", &single)
            .await
            .get(one_enrich)
    );

    // The same readings, published once, reach both pipelines and both branches of each.
    let n = 300;
    let wanted = expected("s-", n);
    publish(&mqtt, "sensors/plant-a", "s-", n);
    let mut moved = Vec::new();
    for (name, deployment) in [("fanout-one", &at_one), ("fanout-spread", &at_three)] {
        let archived = wait_s3(&client, name, &wanted).await;
        let archive_dups = assert_landed(
            &format!("{name}, archive"),
            &archived,
            &wanted,
            deployment.progress().await,
        );
        let warehoused = kafka_records(&kafka.bootstrap(), name, &wanted).await;
        let warehouse_dups = assert_landed(
            &format!("{name}, warehouse"),
            &warehoused,
            &wanted,
            deployment.progress().await,
        );
        let keys = |m: &BTreeMap<String, usize>| m.keys().cloned().collect::<Vec<_>>();
        eprintln!(
            "{name}: archive {} records ({archive_dups} duplicated), warehouse {} ({warehouse_dups} duplicated)\n{}",
            archived.len(),
            warehoused.len(),
            deployment.progress().await
        );
        moved.push((keys(&archived), keys(&warehoused)));
    }
    assert_eq!(
        moved[0], moved[1],
        "three instances over two hosts move the same records as one"
    );
    assert_eq!(moved[0].0, wanted, "only the published readings");
    eprintln!(
        "scaling: {n} readings per branch at 1 and at 3 instances over two hosts, 0 lost; total {:?}",
        started.elapsed()
    );
    at_three.undeploy().await.unwrap();
    at_one.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

/// A multi-step spec for `sluice deploy`: MQTT -> clean -> JetStream hop -> relay -> S3 `bucket`.
fn deployed_dag_spec(mqtt: &Mosquitto, s3: &S3Server, nats_url: &str, bucket: &str) -> String {
    format!(
        "name: dag-deployed
lattice: customer-e
source: {{ provider: mqtt, config: {{ url: '{}', topics: 'dagdeploy/#', qos: 1 }} }}
steps:
  clean: {{ component: steps/sensors.wasm, to: [archive] }}
sinks:
  archive:
    provider: s3
    config: {{ endpoint: '{}', bucket: {bucket}, payload_encoding: utf8, max_object_age: 1s }}
    secrets: {{ access_key_id: customer-e-s3-access-key-id, secret_access_key: customer-e-s3-secret-access-key }}
hops: {{ config: {{ url: '{nats_url}' }} }}
",
        mqtt.url(),
        s3.endpoint()
    )
}

/// The JSON `sluice status --json` prints for a multi-step spec, and the entry of its link
/// `from -> to`.
fn dag_link<'a>(report: &'a Value, from: &str, to: &str) -> &'a Value {
    report["links"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["from"] == from && l["to"] == to))
        .unwrap_or_else(|| panic!("no link {from} -> {to} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sluice_deploy_of_a_multi_step_spec_shows_each_link_and_hop_redeploys_a_change_and_undeploys() {
    use super::deploy::{deployed_version, sluice};
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let started = tokio::time::Instant::now();
    let (par, dir) = (archives().await, pipeline_dir());
    let relay_step = relay(&ComposeOptions::default()).expect("compose the relay");
    std::fs::write(dir.join("steps/relay.wasm"), &relay_step.bytes).unwrap();
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    for bucket in ["first", "second"] {
        s3.create_bucket(bucket).await.unwrap();
    }
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("customer-e").await.unwrap();
    let name = "dag-deployed";
    lattice
        .serve_secrets("nats-kv", secrets(name, &s3, "customer-e"))
        .await
        .unwrap();
    let url = lattice.nats_url().to_string();
    let spec = dir.join("dag-deployed.yaml");
    let (spec_arg, par_arg) = (spec.to_str().unwrap(), par.to_str().unwrap());
    let write_spec = |bucket: &str| std::fs::write(&spec, deployed_dag_spec(&mqtt, &s3, &url, bucket)).unwrap();
    let (source, clean, relay_archive, sink) = (
        "dag-deployed-mqtt",
        "dag-deployed-step-clean",
        "dag-deployed-relay-archive",
        "dag-deployed-s3",
    );

    // First deploy: the pipeline's own provider copies (the hop provider's too), on the spec's
    // lattice only, every link live.
    write_spec("first");
    let out = sluice(&url, &["deploy", spec_arg, "--par-dir", par_arg]);
    assert!(out.contains("(first version)") && out.contains("links live"), "{out}");
    for provider in ["mqtt", "s3", "jetstream"] {
        assert!(
            out.contains(&format!(
                "pipelines/customer-e/{name}/sluice-provider-{provider}.par.gz"
            )),
            "{provider} is not run from the pipeline's own copy: {out}"
        );
    }
    let v1 = deployed_version(&out);
    assert!(matches!(
        lattice.wadm("customer-e").status(name).await.unwrap(),
        Some((StatusType::Deployed, _))
    ));
    assert!(lattice.wadm("default").versions(name).await.unwrap().is_empty());
    let n = 50;
    probe_until_landed(&mqtt, "dagdeploy/plant-e", &s3, "first", String::new).await;
    let wanted = expected("first-", n);
    publish(&mqtt, "dagdeploy/plant-e", "first-", n);
    assert_landed("DAG deploy v1", &wait_s3(&client, "first", &wanted).await, &wanted, "");

    // Status: each link's counters and the hop's stream and backlog, as JSON and as text.
    let status_of = || serde_json::from_str::<Value>(&sluice(&url, &["status", spec_arg, "--json"])).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let report = loop {
        let report = status_of();
        let written = dag_link(&report, relay_archive, sink)["status"]["metrics"]["written"]
            .as_u64()
            .unwrap_or(0);
        let hop = &report["hops"][0];
        let backlog = hop["consumers"][0]["pending"]
            .as_u64()
            .zip(hop["consumers"][0]["unacked"].as_u64());
        if written >= n as u64 && backlog == Some((0, 0)) {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all written and acknowledged: {report}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(report["status"], "deployed", "{report}");
    assert_eq!(report["deployed_version"], v1.as_str(), "{report}");
    assert!(report["refused"].as_array().unwrap().is_empty(), "{report}");
    let into_clean = &dag_link(&report, source, clean)["status"]["metrics"];
    assert!(into_clean["acked"].as_u64().unwrap() >= n as u64, "{report}");
    let from_hop = &dag_link(&report, "dag-deployed-jetstream", relay_archive)["status"]["metrics"];
    assert!(from_hop["acked"].as_u64().unwrap() >= n as u64, "{report}");
    let hop = &report["hops"][0];
    assert_eq!(hop["stream"], "sluice_customer-e_dag-deployed_clean", "{report}");
    assert!(hop["messages"].as_u64().unwrap() >= n as u64, "{report}");
    assert_eq!(hop["consumers"][0]["name"], "archive", "{report}");
    let text = sluice(&url, &["status", spec_arg]);
    assert!(
        text.contains(&format!("{clean} -> dag-deployed-jetstream: out"))
            && text.contains("hop clean (sluice_customer-e_dag-deployed_clean)")
            && text.contains("archive: backlog 0"),
        "{text}"
    );
    eprintln!("sluice status after {n} readings:\n{text}");

    // The same spec again: nothing to do.
    let out = sluice(&url, &["deploy", spec_arg, "--par-dir", par_arg]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(deployed_version(&out), v1);

    // Another bucket: a new version, the relay's sink link put again with its new config.
    write_spec("second");
    let out = sluice(&url, &["deploy", spec_arg, "--par-dir", par_arg]);
    assert!(out.contains("(new version)"), "{out}");
    let v2 = deployed_version(&out);
    assert_ne!(v2, v1);
    assert!(
        out.contains(&format!("replaced link {relay_archive} -> {sink}")),
        "{out}"
    );
    probe_until_landed(&mqtt, "dagdeploy/plant-e", &s3, "second", String::new).await;
    let wanted = expected("second-", n);
    publish(&mqtt, "dagdeploy/plant-e", "second-", n);
    assert_landed("DAG deploy v2", &wait_s3(&client, "second", &wanted).await, &wanted, "");
    let first = s3_records(&client, "first").await;
    assert!(
        !first.keys().any(|k| k.starts_with("second-")),
        "the old config kept writing: {first:?}"
    );
    let report = status_of();
    assert_eq!(report["deployed_version"], v2.as_str(), "{report}");
    assert_eq!(report["versions"].as_array().unwrap().len(), 2, "{report}");

    // Undeploy, then delete: its providers stop answering, wadm forgets it.
    let out = sluice(&url, &["undeploy", spec_arg, "--delete"]);
    assert!(out.contains("undeployed") && out.contains("deleted"), "{out}");
    assert!(lattice.wadm("customer-e").versions(name).await.unwrap().is_empty());
    for provider in [source, sink, "dag-deployed-jetstream"] {
        let subject = sluice_provider_status_subject("customer-e", provider);
        let deadline = tokio::time::Instant::now() + WAIT;
        while lattice.nats().request(subject.clone(), "".into()).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "{provider} still answers");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!("DAG deploy, status, redeploy, undeploy in {:?}", started.elapsed());
    lattice.stop().await.unwrap();
}
