//! A source provider at two instances on two hosts (`source.instances: 2`): every instance gets
//! the link, only the one holding the link's lease (NATS KV) reads it, the other stands by. The
//! active instance is killed with SIGKILL: its host restarts it and the restarted process takes
//! its lease back at once (its predecessor is gone), or the standby takes over once the lease's
//! TTL has passed, whichever comes first. Frozen with SIGSTOP (alive, not renewing), the active
//! instance loses the lease to the standby after the TTL, and thawed it does not poll again.
//! Modbus: the device is polled by one instance at a time (the instances' counters and the
//! server's request log say so). S3, MQTT: records keep arriving across the kill; every one lands.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use sluice_integration::modbus::ModbusServer;
use sluice_provider_core::lease::LeaseValue;
use sluice_provider_core::Status;

use super::recovery::{moving, provider_pid, publish_paced};
use super::*;

/// The lease TTL the tests' links set: failover within about this.
const LEASE_TTL: Duration = Duration::from_secs(2);

/// Every instance's status reply to one request on the provider's status subject (each instance
/// subscribes to it), by instance (gathered for a second).
async fn statuses(nats: &async_nats::Client, lattice: &str, provider: &str) -> Vec<Status> {
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply(sluice_provider_status_subject(lattice, provider), inbox, "".into())
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        out.push(serde_json::from_slice(&msg.payload).unwrap());
    }
    out
}

/// How many records each instance has polled on its source link (one entry per instance that
/// answered).
async fn polled_by_instance(nats: &async_nats::Client, lattice: &str, provider: &str) -> Vec<u64> {
    statuses(nats, lattice, provider)
        .await
        .iter()
        .map(|s| {
            s.links
                .iter()
                .filter(|l| l.role == "source")
                .map(|l| l.metrics.polled)
                .sum()
        })
        .collect()
}

/// The one lease in the lattice's bucket: who holds it (`None` while nobody does).
async fn lease_holder(nats: &async_nats::Client, lattice: &str) -> Option<LeaseValue> {
    let js = jetstream::new(nats.clone());
    let kv = js
        .get_key_value(sluice_provider_core::lease::bucket_for_lattice(lattice))
        .await
        .ok()?;
    let keys: Vec<String> = kv.keys().await.ok()?.filter_map(|k| async { k.ok() }).collect().await;
    assert!(keys.len() <= 1, "one link, one lease: {keys:?}");
    let entry = kv.entry(keys.first()?).await.ok()??;
    (entry.operation == jetstream::kv::Operation::Put).then(|| serde_json::from_slice(&entry.value).unwrap())
}

/// Waits until both hosts run an instance of `package` and one of them holds the lease; returns
/// (active host, its provider pid, standby host, its pid).
async fn active_and_standby(
    nats: &async_nats::Client,
    lattice: &str,
    hosts: &[String; 2],
    package: &str,
) -> (String, u32, String, u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let pids = hosts.each_ref().map(|h| provider_pid(h, package));
        let holder = lease_holder(nats, lattice).await;
        if let ([Some(a), Some(b)], Some(holder)) = (pids, holder) {
            let active = hosts
                .iter()
                .position(|h| *h == holder.holder)
                .expect("the lease holder is one of the hosts");
            let pid = [a, b];
            assert_eq!(pid[active], holder.pid, "the lease names the active instance's process");
            return (
                hosts[active].clone(),
                pid[active],
                hosts[1 - active].clone(),
                pid[1 - active],
            );
        }
        assert!(
            Instant::now() < deadline,
            "two instances of {package} and a lease holder: pids {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal(pid: u32, signal: &str) {
    assert!(Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

fn kill9(pid: u32) -> Instant {
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    Instant::now()
}

/// Waits until the lease is held by an instance other than `dead_pid`; returns its holder.
async fn taken_over(nats: &async_nats::Client, lattice: &str, dead_pid: u32) -> LeaseValue {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(holder) = lease_holder(nats, lattice).await.filter(|h| h.pid != dead_pid) {
            return holder;
        }
        assert!(Instant::now() < deadline, "nobody took the lease over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lines in every object of `bucket`.
async fn s3_lines(client: &aws_sdk_s3::Client, bucket: &str) -> usize {
    let mut lines = 0;
    let listed = client.list_objects_v2().bucket(bucket).send().await.unwrap();
    for object in listed.contents() {
        let body = sluice_integration::seaweedfs::object(client, bucket, object.key().unwrap())
            .await
            .unwrap();
        lines += std::str::from_utf8(&body).unwrap().lines().count();
    }
    lines
}

fn s3_sink(s3: &S3Server, bucket: &str) -> String {
    format!(
        "sink:
  provider: s3
  config:
    endpoint: {endpoint}
    bucket: {bucket}
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
async fn two_modbus_instances_poll_the_device_once_and_the_standby_takes_over_a_killed_one() {
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
    let lattice_name = "plant-m";
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let hosts = [
        lattice.add_host(lattice_name).await.unwrap(),
        lattice.add_host(lattice_name).await.unwrap(),
    ];
    lattice
        .serve_secrets("nats-kv", secrets("modbus-two", &s3, "customer-a"))
        .await
        .unwrap();
    // One device, one tag: one read request per poll, every 200 ms.
    let interval = Duration::from_millis(200);
    let yaml = format!(
        "name: modbus-two
lattice: {lattice_name}
source:
  provider: modbus
  instances: 2
  config:
    lease_ttl: {ttl}ms
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
{sink}",
        ttl = LEASE_TTL.as_millis(),
        address = modbus.address(),
        interval = interval.as_millis(),
        sink = s3_sink(&s3, "polls"),
    );
    let spec = PipelineSpec::parse(&yaml).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    let nats = lattice.nats().clone();
    let provider = deployment.ids.source.clone();
    let (active, active_pid, standby, standby_pid) =
        active_and_standby(&nats, lattice_name, &hosts, "sluice-provider-modbus").await;

    // While both live: both instances have the link, only the lease holder polls.
    assert!(
        moving(&deployment, "sink", 5, WAIT).await,
        "nothing polled reached the sink: {}",
        deployment.progress().await
    );
    let window = Duration::from_secs(3);
    let before = modbus.requests().len();
    tokio::time::sleep(window).await;
    let served = modbus.requests().len() - before;
    let polled = polled_by_instance(&nats, lattice_name, &provider).await;
    eprintln!(
        "modbus, both instances live: {served} requests served in {window:?} at one poll per {interval:?}; polled by instance {polled:?}"
    );
    assert_eq!(polled.len(), 2, "both instances answer: {polled:?}");
    assert_eq!(
        polled.iter().filter(|p| **p > 0).count(),
        1,
        "exactly one instance polls the device: {polled:?}"
    );
    // One poller at one request per interval serves at most window/interval (+1 for the edges);
    // two would serve twice that.
    let one_poller = (window.as_millis() / interval.as_millis()) as usize + 1;
    assert!(
        served <= one_poller,
        "{served} requests in {window:?}: more than one poller ({one_poller} at most)"
    );
    assert_eq!(lease_holder(&nats, lattice_name).await.unwrap().holder, active);

    // Kill the active instance: the standby takes the lease once its TTL has passed (or the host
    // restarts the killed one first, which takes its own lease back), and polling goes on.
    let at_kill = modbus.requests().len();
    let killed = kill9(active_pid);
    let holder = taken_over(&nats, lattice_name, active_pid).await;
    let failover = killed.elapsed();
    let resumed_from = modbus.requests().len();
    let deadline = Instant::now() + WAIT;
    while modbus.requests().len() <= resumed_from {
        assert!(Instant::now() < deadline, "polling did not resume after the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = killed.elapsed();
    let by = if holder.holder == standby {
        "the standby"
    } else {
        "the restarted instance"
    };
    eprintln!(
        "modbus: active instance (pid {active_pid} on {active}) killed; lease taken by {by} (pid {}) after {failover:?} (TTL {LEASE_TTL:?}); polling resumed after {resumed:?}; {} requests between the kill and the takeover",
        holder.pid,
        resumed_from - at_kill
    );
    if holder.holder == standby {
        assert_eq!(holder.pid, standby_pid);
        // The standby waits until the dead holder's last renewal is a TTL old (it renewed every
        // TTL/3); only the killed instance's own successor may take it sooner.
        assert!(
            failover >= LEASE_TTL - LEASE_TTL / 3,
            "the standby took the lease {failover:?} after the kill, before the holder's TTL could have run out"
        );
    }

    // Both live again (the host restarted the killed instance): still one poller.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = modbus.requests().len();
    tokio::time::sleep(window).await;
    let served = modbus.requests().len() - before;
    let polled = polled_by_instance(&nats, lattice_name, &provider).await;
    eprintln!("modbus, after the failover: {served} requests in {window:?}; polled by instance {polled:?}");
    assert!(
        served <= one_poller,
        "{served} requests in {window:?} after the failover: more than one poller"
    );
    assert!(
        polled.iter().filter(|p| **p > 0).count() <= 1,
        "one poller after the failover: {polled:?}"
    );

    // Freeze the active instance (alive, not renewing): the standby takes the lease after the
    // TTL and polls; thawed, the frozen one finds its lease gone and polls no more.
    let (frozen_host, frozen_pid, standby, standby_pid) =
        active_and_standby(&nats, lattice_name, &hosts, "sluice-provider-modbus").await;
    signal(frozen_pid, "STOP");
    let frozen = Instant::now();
    let holder = taken_over(&nats, lattice_name, frozen_pid).await;
    let takeover = frozen.elapsed();
    signal(frozen_pid, "CONT");
    assert_eq!((holder.holder.as_str(), holder.pid), (standby.as_str(), standby_pid));
    assert!(
        takeover >= LEASE_TTL - LEASE_TTL / 3,
        "the standby took a frozen holder's lease after {takeover:?}, before its TTL could have run out"
    );
    eprintln!("modbus: active instance (pid {frozen_pid} on {frozen_host}) frozen; the standby took the lease after {takeover:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = modbus.requests().len();
    tokio::time::sleep(window).await;
    let served = modbus.requests().len() - before;
    eprintln!("modbus, the frozen instance thawed: {served} requests in {window:?}");
    assert!(
        served <= one_poller,
        "{served} requests in {window:?} after the thaw: the old holder polls again"
    );
    assert_eq!(lease_holder(&nats, lattice_name).await.unwrap().pid, standby_pid);

    let lines = s3_lines(&client, "polls").await;
    eprintln!(
        "modbus: {} requests served in all, {lines} records at the sink",
        modbus.requests().len()
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_s3_source_instances_lose_nothing_when_the_active_one_is_killed() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let s3 = S3Server::start().unwrap();
    let kafka = KafkaBroker::start().unwrap();
    let client = s3.client();
    s3.create_bucket("inbox").await.unwrap();
    create_topic(&kafka.bootstrap(), "readings").await;
    let lattice_name = "plant-s2";
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let hosts = [
        lattice.add_host(lattice_name).await.unwrap(),
        lattice.add_host(lattice_name).await.unwrap(),
    ];
    lattice
        .serve_secrets("nats-kv", secrets("s3-two", &s3, "customer-a"))
        .await
        .unwrap();
    let yaml = format!(
        "name: s3-two
lattice: {lattice_name}
source:
  provider: s3
  instances: 2
  config:
    endpoint: {endpoint}
    bucket: inbox
    prefix: in/
    split: lines
    poll_interval: 200ms
    lease_ttl: {ttl}ms
  secrets:
    access_key_id: customer-a-s3-access-key-id
    secret_access_key: customer-a-s3-secret-access-key
step:
  component: steps/sensors.wasm
sink:
  provider: kafka
  config:
    bootstrap_servers: {bootstrap}
    topic: readings
",
        endpoint = s3.endpoint(),
        ttl = LEASE_TTL.as_millis(),
        bootstrap = kafka.bootstrap(),
    );
    let spec = PipelineSpec::parse(&yaml).unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    let nats = lattice.nats().clone();
    let provider = deployment.ids.source.clone();
    let (active, active_pid, standby, _) = active_and_standby(&nats, lattice_name, &hosts, "sluice-provider-s3").await;

    // Objects of 100 readings arrive while the pipeline runs; the active instance is killed
    // mid-stream.
    let (objects, per) = (30, 100);
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
    assert!(
        moving(&deployment, "sink", 300, WAIT).await,
        "nothing moved: {}",
        deployment.progress().await
    );
    let polled = polled_by_instance(&nats, lattice_name, &provider).await;
    eprintln!("s3, both instances live: polled by instance {polled:?}");
    assert_eq!(polled.len(), 2, "both instances answer: {polled:?}");
    assert_eq!(
        polled.iter().filter(|p| **p > 0).count(),
        1,
        "exactly one instance reads the prefix: {polled:?}"
    );
    let killed = kill9(active_pid);
    let holder = taken_over(&nats, lattice_name, active_pid).await;
    let by = if holder.holder == standby {
        "the standby"
    } else {
        "the restarted instance"
    };
    assert!(
        holder.holder != standby || killed.elapsed() >= LEASE_TTL - LEASE_TTL / 3,
        "the standby took the lease before the TTL could have run out"
    );
    eprintln!(
        "s3: active instance (pid {active_pid} on {active}) killed; lease taken by {by} (pid {}) after {:?} (TTL {LEASE_TTL:?})",
        holder.pid,
        killed.elapsed()
    );
    feed.await.unwrap();
    let wanted = expected("s-", objects * per);
    let got = kafka_records(&kafka.bootstrap(), "readings", &wanted).await;
    assert_landed(
        "S3 source at two instances, active one killed",
        &got,
        &wanted,
        deployment.progress().await,
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_mqtt_source_instances_share_one_session_and_lose_nothing_when_the_active_one_is_killed() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("two").await.unwrap();
    let lattice_name = "plant-q2";
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let hosts = [
        lattice.add_host(lattice_name).await.unwrap(),
        lattice.add_host(lattice_name).await.unwrap(),
    ];
    lattice
        .serve_secrets("nats-kv", secrets("mqtt-two", &s3, "customer-a"))
        .await
        .unwrap();
    let yaml = mqtt_to_s3("mqtt-two", lattice_name, &mqtt, &s3, "two/#", "two").replace(
        "  provider: mqtt\n  config:\n",
        &format!(
            "  provider: mqtt\n  instances: 2\n  config:\n    lease_ttl: {}ms\n",
            LEASE_TTL.as_millis()
        ),
    );
    let spec = PipelineSpec::parse(&yaml).unwrap();
    assert_eq!(spec.source.instances, Some(2));
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    let nats = lattice.nats().clone();
    let provider = deployment.ids.source.clone();
    let (active, active_pid, standby, _) =
        active_and_standby(&nats, lattice_name, &hosts, "sluice-provider-mqtt").await;
    // The link's session exists once a reading comes through; from then on the broker keeps what
    // arrives for it, whichever instance holds it.
    probe_until_landed(&mqtt, "two/line-1", &s3, "two", String::new).await;

    let n = 3000;
    let publisher = publish_paced(&mqtt, "two/line-1", "q-", n, 30, Duration::from_millis(150));
    assert!(
        moving(&deployment, "source", 300, WAIT).await,
        "nothing moved: {}",
        deployment.progress().await
    );
    let polled = polled_by_instance(&nats, lattice_name, &provider).await;
    eprintln!("mqtt, both instances live: polled by instance {polled:?}");
    assert_eq!(polled.len(), 2, "both instances answer: {polled:?}");
    assert_eq!(
        polled.iter().filter(|p| **p > 0).count(),
        1,
        "exactly one instance holds the session: {polled:?}"
    );
    let killed = kill9(active_pid);
    let holder = taken_over(&nats, lattice_name, active_pid).await;
    let failover = killed.elapsed();
    let by = if holder.holder == standby {
        "the standby"
    } else {
        "the restarted instance"
    };
    assert!(
        holder.holder != standby || failover >= LEASE_TTL - LEASE_TTL / 3,
        "the standby took the lease {failover:?} after the kill, before the TTL could have run out"
    );
    eprintln!(
        "mqtt: active instance (pid {active_pid} on {active}) killed; lease taken by {by} (pid {}) after {failover:?} (TTL {LEASE_TTL:?})",
        holder.pid
    );
    publisher.await.unwrap();
    let wanted = expected("q-", n);
    let got = wait_s3(&client, "two", &wanted).await;
    let log = format!("seaweedfs log ends:\n{}", s3.process().log_tail(30));
    let duplicated = assert_landed("MQTT source at two instances, active one killed", &got, &wanted, log);
    // What the dead holder had read and not acknowledged comes again: at most its window.
    let window = sluice_provider_core::RunnerSettings::default().max_unacknowledged();
    assert!(duplicated <= window, "{duplicated} readings duplicated");
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}
