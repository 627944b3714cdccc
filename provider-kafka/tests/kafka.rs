//! provider-kafka against a real Kafka-protocol broker (Tansu), started as a wasmCloud host starts
//! a provider.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_integration::component::{payloads, FakeComponent, Reply};
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::servers::{KafkaBroker, NatsServer};
use sluice_provider_core::{Message, RunnerSettings};

const PROVIDER: &str = "sluice-provider-kafka";
const BINARY: &str = env!("CARGO_BIN_EXE_sluice-provider-kafka");

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces `n` records `"{prefix}-{i}"` with keys `k{i % keys}` and a `seq` header, enqueued in
/// order, awaiting delivery reports a thousand at a time.
async fn produce(bootstrap: &str, topic: &str, prefix: &str, n: usize, keys: usize) {
    produce_range(&producer(bootstrap), topic, prefix, 0..n, keys).await;
}

/// [`produce`] for the records numbered `range`, with a producer of the caller's.
async fn produce_range(
    producer: &FutureProducer,
    topic: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    keys: usize,
) {
    let mut pending = Vec::new();
    for i in range {
        let payload = format!("{prefix}-{i}");
        let key = format!("k{}", i % keys);
        let seq = i.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: "seq",
            value: Some(seq.as_bytes()),
        });
        let record = FutureRecord::to(topic).payload(&payload).key(&key).headers(headers);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        if pending.len() >= 1000 {
            for p in futures::future::join_all(pending.drain(..)).await {
                p.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for p in futures::future::join_all(pending).await {
        p.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The group's committed offsets per partition of `topic`.
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let offsets = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    offsets
        .elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            (e.partition(), o)
        })
        .collect()
}

/// `(partition, offset)` of a record from its origin `kafka:<topic>/<partition>@<offset>`.
fn position(m: &Message) -> (i32, i64) {
    let (_, rest) = m.origin.rsplit_once('/').unwrap();
    let (p, o) = rest.split_once('@').unwrap();
    (p.parse().unwrap(), o.parse().unwrap())
}

/// One Kafka test at a time: Tansu keeps everything in sqlite and two busy brokers on two cores
/// starve each other's group heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    _nats: NatsServer,
    client: async_nats::Client,
    kafka: KafkaBroker,
    provider: HostedProvider,
}

async fn setup() -> Setup {
    let serial = SERIAL.lock().await;
    sluice_integration::init_tracing();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let kafka = KafkaBroker::start().unwrap();
    let provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    Setup {
        _serial: serial,
        _nats: nats,
        client,
        kafka,
        provider,
    }
}

/// Puts a sink link from component `id` with `config`, and serves `id` as a fake component.
async fn sink_writer(s: &mut Setup, id: &str, config: &[(&str, &str)]) -> FakeComponent {
    s.provider
        .put_link(Link::sink(id, PROVIDER, "default", config))
        .await
        .unwrap();
    FakeComponent::serve(&s.client, "default", id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_exactly_and_in_order_per_partition() {
    let mut s = setup().await;
    let bootstrap = s.kafka.bootstrap();
    create_topic(&bootstrap, "orders", 3).await;
    produce(&bootstrap, "orders", "o", 300, 10).await;
    let step = FakeComponent::serve(&s.client, "default", "step-o").await.unwrap();
    let config = [
        ("bootstrap_servers", bootstrap.as_str()),
        ("topics", "orders"),
        ("linger", "5ms"),
    ];
    s.provider
        .put_link(Link::source(PROVIDER, "step-o", "default", &config))
        .await
        .unwrap();
    assert!(
        step.wait_for(Duration::from_secs(60), |c| c.accepted().len() >= 300)
            .await
    );
    let accepted = step.accepted();
    let mut got = payloads(&accepted);
    got.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("o-{i}")).collect();
    want.sort();
    assert_eq!(got, want, "every record exactly once");
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for m in &accepted {
        let i: usize = String::from_utf8_lossy(&m.payload)[2..].parse().unwrap();
        assert_eq!(m.key.as_deref(), Some(format!("k{}", i % 10).as_bytes()));
        let seq = m.headers.iter().find(|(k, _)| k == "seq").map(|(_, v)| v.clone());
        assert_eq!(seq.as_deref(), Some(i.to_string().as_bytes()));
        assert!(m.timestamp_ms.is_some());
        let (p, o) = position(m);
        assert!(last.get(&p).is_none_or(|prev| *prev < o), "partition {p} out of order");
        last.insert(p, o);
    }
    assert_eq!(last.len(), 3, "records came from all partitions");
    let group = "sluice-step-o-default";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = committed(&bootstrap, group, "orders", 3);
        if c.iter().all(|(p, o)| *o == last[p] + 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {c:?}, read up to {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_holds_the_commit_back() {
    let mut s = setup().await;
    let bootstrap = s.kafka.bootstrap();
    create_topic(&bootstrap, "gaps", 1).await;
    produce(&bootstrap, "gaps", "g", 50, 1).await;
    let step = FakeComponent::serve(&s.client, "default", "step-g").await.unwrap();
    // The batch holding g-10 is answered `retry` until released; later records pile up behind it.
    let hold = Arc::new(AtomicBool::new(true));
    let held = Arc::clone(&hold);
    step.behave(move |batch| {
        if held.load(SeqCst) && batch.iter().any(|m| m.payload.as_ref() == b"g-10") {
            Reply::Retry("not yet".into())
        } else {
            Reply::Accept
        }
    });
    let config = [
        ("bootstrap_servers", bootstrap.as_str()),
        ("topics", "gaps"),
        ("max_batch_records", "5"),
        ("linger", "1ms"),
        ("retry_initial", "50ms"),
        ("retry_max", "100ms"),
    ];
    s.provider
        .put_link(Link::source(PROVIDER, "step-g", "default", &config))
        .await
        .unwrap();
    assert!(step.wait_for(Duration::from_secs(30), |c| c.call_count() >= 10).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The producer sent concurrently: find g-10's offset from the batches the step saw.
    let held_offset = step
        .calls()
        .iter()
        .flatten()
        .find(|m| m.payload.as_ref() == b"g-10")
        .map(|m| position(m).1)
        .expect("g-10 was offered");
    let c = committed(&bootstrap, "sluice-step-g-default", "gaps", 1);
    assert!(
        c[&0] <= held_offset,
        "committed {} past the unaccepted offset {held_offset}",
        c[&0]
    );
    assert!(
        step.accepted().len() < 50,
        "records after the gap were delivered meanwhile"
    );
    hold.store(false, SeqCst);
    assert!(
        step.wait_for(Duration::from_secs(30), |c| c.accepted().len() >= 50)
            .await
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while committed(&bootstrap, "sluice-step-g-default", "gaps", 1)[&0] != 50 {
        assert!(tokio::time::Instant::now() < deadline, "never committed everything");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_records_stream_loses_nothing() {
    let mut s = setup().await;
    let bootstrap = s.kafka.bootstrap();
    create_topic(&bootstrap, "stream", 3).await;
    let total: usize = std::env::var("SLUICE_KAFKA_KILL_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let step = FakeComponent::serve(&s.client, "default", "step-k").await.unwrap();
    step.behave(|_| Reply::AcceptAfter(Duration::from_millis(1)));
    // A static member: the restarted provider takes its partitions back at once.
    let config = [
        ("bootstrap_servers", bootstrap.as_str()),
        ("topics", "stream"),
        ("group_instance_id", "provider-on-host-1"),
        // Small fetches keep Tansu answering heartbeats while it serves a backlog.
        ("kafka.max.partition.fetch.bytes", "65536"),
    ];
    s.provider
        .put_link(Link::source(PROVIDER, "step-k", "default", &config))
        .await
        .unwrap();
    // Records stream in while the provider runs, is killed and restarts: the producer stays at
    // most 10,000 records ahead of the step, so it is still producing at the kill.
    let producing = {
        let (bootstrap, step) = (bootstrap.clone(), step.clone());
        tokio::spawn(async move {
            let producer = producer(&bootstrap);
            for start in (0..total).step_by(2_000) {
                while start > step.accepted_count() + 10_000 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                produce_range(&producer, "stream", "s", start..total.min(start + 2_000), 30).await;
            }
        })
    };
    assert!(
        step.wait_for(Duration::from_secs(120), |c| c.accepted_count() >= total * 3 / 10)
            .await,
        "the provider delivered {} of {total} before the kill",
        step.accepted_count()
    );
    s.provider.kill().await.unwrap();
    let at_kill = step.accepted_count();
    s.provider.restart().await.unwrap();
    let distinct = |c: &FakeComponent| payloads(&c.accepted()).into_iter().collect::<HashSet<_>>().len();
    assert!(
        step.wait_for(Duration::from_secs(300), |c| c.accepted_count() >= total
            && distinct(c) == total)
            .await,
        "lost {} records",
        total - distinct(&step)
    );
    producing.await.unwrap();
    let duplicates = step.accepted_count() - total;
    // Redelivered: what was read but not committed at the kill, at most the unacknowledged window
    // (records under a commit in flight count against it).
    eprintln!("kafka kill -9 after {at_kill} of {total} records: 0 lost, {duplicates} redelivered");
    let window = RunnerSettings::default().max_unacknowledged();
    assert!(duplicates <= window, "{duplicates} duplicates, window {window}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_writes_are_read_back_with_keys_and_headers() {
    let mut s = setup().await;
    let bootstrap = s.kafka.bootstrap();
    create_topic(&bootstrap, "results", 2).await;
    let config = [("bootstrap_servers", bootstrap.as_str()), ("topic", "results")];
    let writer = sink_writer(&mut s, "writer", &config).await;
    let batch: Vec<Message> = (0..40)
        .map(|i| {
            let mut m = Message::new(format!("r{i}").into_bytes(), "test");
            m.key = Some(format!("key{}", i % 4).into_bytes().into());
            m.headers = vec![("unit".into(), "celsius".into())];
            m
        })
        .collect();
    writer.write(PROVIDER, "default", &batch).await.unwrap().unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["results"]).unwrap();
    let mut got = Vec::new();
    while got.len() < 40 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        let unit = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "unit")
                .and_then(|h| h.value.map(<[u8]>::to_vec))
        });
        got.push((
            String::from_utf8_lossy(m.key().unwrap()).into_owned(),
            String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
            unit,
        ));
    }
    got.sort();
    let mut want: Vec<(String, String, Option<Vec<u8>>)> = (0..40)
        .map(|i| (format!("key{}", i % 4), format!("r{i}"), Some(b"celsius".to_vec())))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

/// Every record of partition 0 of `topic` (a topic made by [`create_topic`] with one partition):
/// payload and `kafka.topic` header, sorted. The high watermark says how many there are, so an
/// empty topic reads as empty at once.
fn read_topic(bootstrap: &str, topic: &str) -> Vec<(String, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "read-topic")
        .create()
        .unwrap();
    let (_, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
    let mut partition = TopicPartitionList::new();
    partition.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&partition).unwrap();
    let mut records = Vec::new();
    while records.len() < usize::try_from(high).unwrap() {
        let Some(m) = consumer.poll(Duration::from_secs(10)) else {
            panic!("{topic}: read {} of {high} records", records.len());
        };
        let m = m.unwrap();
        let header = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "kafka.topic")
                .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
        });
        records.push((String::from_utf8_lossy(m.payload().unwrap()).into_owned(), header));
    }
    records.sort();
    records
}

/// A record with payload `payload` whose `kafka.topic` header names `topic`.
fn aimed_at(payload: &str, topic: Option<&str>) -> Message {
    let mut m = Message::new(payload.as_bytes().to_vec(), "test");
    m.headers = topic
        .map(|t| ("kafka.topic".to_string(), bytes::Bytes::from(t.to_string())))
        .into_iter()
        .collect();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_not_the_record_chooses_the_topic() {
    let mut s = setup().await;
    let bootstrap = s.kafka.bootstrap();
    for topic in ["linked", "elsewhere", "allowed", "denied"] {
        create_topic(&bootstrap, topic, 1).await;
    }
    // By default a `kafka.topic` header chooses nothing: the record lands in the link's topic.
    let plain = [("bootstrap_servers", bootstrap.as_str()), ("topic", "linked")];
    let writer = sink_writer(&mut s, "writer-plain", &plain).await;
    let batch = [aimed_at("p0", Some("elsewhere")), aimed_at("p1", None)];
    writer.write(PROVIDER, "default", &batch).await.unwrap().unwrap();

    // Opted in with an allow-list: an allowed topic is used, any other is rejected by index.
    let routed = [
        ("bootstrap_servers", bootstrap.as_str()),
        ("topic", "linked"),
        ("topic_from_header", "true"),
        ("allowed_topics", "allowed"),
    ];
    let writer = sink_writer(&mut s, "writer-routed", &routed).await;
    let batch = [
        aimed_at("r0", Some("allowed")),
        aimed_at("r1", Some("denied")),
        aimed_at("r2", Some("elsewhere")),
        aimed_at("r3", None),
    ];
    match writer.write(PROVIDER, "default", &batch).await.unwrap() {
        Err(sluice_provider_core::Failure::Reject(rejected)) => {
            let indices: Vec<u32> = rejected.iter().map(|r| r.index).collect();
            assert_eq!(indices, [1, 2], "{rejected:?}");
            for (r, topic) in rejected.iter().zip(["denied", "elsewhere"]) {
                assert!(
                    r.reason.contains("kafka.topic") && r.reason.contains(topic),
                    "{}",
                    r.reason
                );
            }
        }
        other => panic!("expected two rejects, got {other:?}"),
    }

    // Opting in without saying which topics a record may choose refuses the link by key.
    let open = [
        ("bootstrap_servers", bootstrap.as_str()),
        ("topic", "linked"),
        ("topic_from_header", "true"),
    ];
    s.provider
        .put_link(Link::sink("writer-open", PROVIDER, "default", &open))
        .await
        .unwrap();
    let status = s.provider.status().await.unwrap();
    let refused = status.refusal("writer-open").expect("refused");
    assert!(refused.contains("`topic_from_header`"), "{refused}");

    let some = |p: &str, h: Option<&str>| (p.to_string(), h.map(str::to_string));
    assert_eq!(
        read_topic(&bootstrap, "linked"),
        [some("p0", Some("elsewhere")), some("p1", None), some("r3", None)],
        "without the opt-in the header is an ordinary header"
    );
    assert_eq!(read_topic(&bootstrap, "allowed"), [some("r0", None)]);
    assert!(read_topic(&bootstrap, "elsewhere").is_empty());
    assert!(read_topic(&bootstrap, "denied").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_brokers_and_topics_are_refused_by_name_while_others_run() {
    let mut s = setup().await;
    let bootstrap = s.kafka.bootstrap();
    create_topic(&bootstrap, "fine", 1).await;
    let step = FakeComponent::serve(&s.client, "default", "step-fine").await.unwrap();
    let good = [("bootstrap_servers", bootstrap.as_str()), ("topics", "fine")];
    s.provider
        .put_link(Link::source(PROVIDER, "step-fine", "default", &good))
        .await
        .unwrap();
    // Brokers that cannot be reached may come up later: the link is degraded, not refused.
    let down = [
        ("bootstrap_servers", "127.0.0.1:1"),
        ("topics", "fine"),
        ("connect_timeout", "2s"),
    ];
    s.provider
        .put_link(Link::source(PROVIDER, "step-down", "default", &down))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = s.provider.status().await.unwrap();
        assert!(status.refusal("step-down").is_none(), "{status:?}");
        if let Some(reason) = status.degraded("step-down") {
            assert!(reason.contains("cannot reach"), "{reason}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never degraded: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case<'_>; 4] = [
        (
            "step-syntax",
            vec![("bootstrap_servers", "nohost"), ("topics", "fine")],
            "`bootstrap_servers`",
        ),
        (
            "step-missing",
            vec![("bootstrap_servers", bootstrap.as_str()), ("topics", "nope")],
            "`nope` does not exist",
        ),
        (
            "step-dlq",
            vec![
                ("bootstrap_servers", bootstrap.as_str()),
                ("topics", "fine"),
                ("dead_letter_topic", "no-dlq"),
            ],
            "`dead_letter_topic`: topic `no-dlq` does not exist",
        ),
        (
            "step-reserved",
            vec![
                ("bootstrap_servers", bootstrap.as_str()),
                ("topics", "fine"),
                ("kafka.group.id", "x"),
            ],
            "`kafka.group.id`",
        ),
    ];
    for (id, config, needle) in &cases {
        s.provider
            .put_link(Link::source(PROVIDER, id, "default", config))
            .await
            .unwrap();
        let status = s.provider.status().await.unwrap();
        let refused = status.refusal(id).expect("refused");
        assert!(refused.contains(needle) && refused.contains(id), "{refused}");
    }
    // A sink link to a missing topic is refused the same way.
    let sink = [("bootstrap_servers", bootstrap.as_str()), ("topic", "absent")];
    s.provider
        .put_link(Link::sink("writer-x", PROVIDER, "default", &sink))
        .await
        .unwrap();
    let status = s.provider.status().await.unwrap();
    let refused = status.refusal("writer-x").expect("sink refused");
    assert!(refused.contains("`absent` does not exist"), "{refused}");
    produce(&bootstrap, "fine", "f", 10, 1).await;
    assert!(
        step.wait_for(Duration::from_secs(30), |c| c.accepted().len() == 10)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_in_the_group_rebalances_without_loss() {
    let mut s = setup().await;
    let bootstrap = s.kafka.bootstrap();
    create_topic(&bootstrap, "shared", 4).await;
    let total = 20_000;
    produce(&bootstrap, "shared", "r", total, 40).await;
    let step = FakeComponent::serve(&s.client, "default", "step-r").await.unwrap();
    // Slow enough that the group is still busy when the second instance joins: 64-record
    // batches, 100 ms each (with the default 512 the first instance is done before it joins).
    step.behave(|_| Reply::AcceptAfter(Duration::from_millis(100)));
    let config_a = [
        ("bootstrap_servers", bootstrap.as_str()),
        ("topics", "shared"),
        ("group_instance_id", "instance-a"),
        ("max_batch_records", "64"),
    ];
    s.provider
        .put_link(Link::source(PROVIDER, "step-r", "default", &config_a))
        .await
        .unwrap();
    assert!(
        step.wait_for(Duration::from_secs(180), |c| c.accepted_count() >= 2_000)
            .await
    );
    // A second provider process (another host's instance) joins the same group and leaves again.
    let mut second = HostedProvider::start_on(&s.provider, BINARY, "sluice-provider-kafka-b")
        .await
        .unwrap();
    let config_b = [
        ("bootstrap_servers", bootstrap.as_str()),
        ("topics", "shared"),
        ("max_batch_records", "64"),
    ];
    second
        .put_link(Link::source("sluice-provider-kafka-b", "step-r", "default", &config_b))
        .await
        .unwrap();
    let b = second
        .wait_status(Duration::from_secs(60), |s| s.links[0].metrics.delivered > 0)
        .await
        .unwrap();
    let b_delivered = b.links[0].metrics.delivered;
    second.terminate().await.unwrap();
    let distinct = |c: &FakeComponent| payloads(&c.accepted()).into_iter().collect::<HashSet<_>>().len();
    assert!(
        step.wait_for(Duration::from_secs(180), |c| distinct(c) == total).await,
        "lost {} records",
        total - distinct(&step)
    );
    let redelivered = step.accepted_count() - total;
    eprintln!("rebalance: second instance delivered {b_delivered}; {redelivered} redelivered in all");
    assert!(b_delivered > 0, "the second instance got partitions");
    // Read twice only if it was still in flight at a revoke: at most each instance's
    // unacknowledged window at each of the two rebalances, join and leave.
    let window = RunnerSettings {
        max_batch_records: 64,
        ..RunnerSettings::default()
    }
    .max_unacknowledged();
    assert!(redelivered <= 2 * 2 * window, "{redelivered} records read twice");
    assert!(
        s.provider
            .logs()
            .contains("committed what was done of the revoked partitions"),
        "the first instance commits its finished records before its partitions go"
    );
}
