//! provider-jetstream against a real nats-server with JetStream, driven through the delivery
//! engine: the sink and source connectors on one side, a native wRPC step on the other.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt as _;
use sluice_integration::component::{payloads, FakeComponent, Reply};
use sluice_integration::servers::NatsServer;
use sluice_provider_core::wrpc::{nats, WrpcIngest};
use sluice_provider_core::{Engine, Failure, LinkError, LinkKey, LinkSpec, Message, Secret};
use sluice_provider_jetstream::record;
use sluice_provider_jetstream::{JetStreamSink, JetStreamSource};

const LATTICE: &str = "default";

type JsEngine = Engine<JetStreamSource, JetStreamSink>;

struct Setup {
    nats: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    engine: JsEngine,
}

impl Setup {
    async fn new() -> Self {
        sluice_integration::init_tracing();
        let nats = NatsServer::start().expect("nats-server starts");
        let client = nats.connect().await.expect("connects");
        Self {
            js: jetstream::new(client.clone()),
            nats,
            client,
            engine: Engine::new(JetStreamSource, JetStreamSink),
        }
    }

    fn url(&self) -> String {
        self.nats.url()
    }

    async fn component(&self, id: &str) -> FakeComponent {
        FakeComponent::serve(&self.client, LATTICE, id)
            .await
            .expect("component serves")
    }

    async fn put_sink(&self, component: &str, config: &[(&str, &str)]) -> Result<(), LinkError> {
        let mut config = config.to_vec();
        let url = self.url();
        config.push(("url", &url));
        let spec = LinkSpec::new(LinkKey::new(component, "default"), map(&config));
        self.engine.put_sink_link(spec).await
    }

    async fn put_source(&self, component: &str, config: &[(&str, &str)]) -> Result<(), LinkError> {
        put_source(
            &self.engine,
            &self.client,
            &self.url(),
            component,
            config,
            HashMap::new(),
        )
        .await
    }

    async fn messages_in(&self, stream: &str) -> u64 {
        let mut stream = self.js.get_stream(stream).await.expect("stream exists");
        stream.info().await.expect("stream info").state.messages
    }

    async fn consumer(&self, stream: &str, durable: &str) -> jetstream::consumer::Info {
        let stream = self.js.get_stream(stream).await.expect("stream exists");
        stream.consumer_info(durable).await.expect("consumer info")
    }
}

async fn put_source(
    engine: &JsEngine,
    client: &async_nats::Client,
    url: &str,
    component: &str,
    config: &[(&str, &str)],
    secrets: HashMap<String, Secret>,
) -> Result<(), LinkError> {
    let mut config = config.to_vec();
    config.push(("url", url));
    let mut spec = LinkSpec::new(LinkKey::new(component, "default"), map(&config));
    spec.secrets = secrets;
    let client = client.clone();
    let prefix = format!("{LATTICE}.{component}");
    engine
        .put_source_link(spec, || async move {
            Ok(WrpcIngest::new(nats::Client::new(client, prefix, None).await?))
        })
        .await
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `n` records with payloads `"{prefix}-{i}"`, distinct origins, and every field set on most.
fn rich(prefix: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let mut m = Message::new(format!("{prefix}-{i}").into_bytes(), format!("test:{prefix} @{i}"));
            if i % 5 != 0 {
                m.key = Some(Bytes::from(vec![b'k', (i % 256) as u8, b'\n', 0xff]));
            }
            if i % 3 != 0 {
                m.timestamp_ms = Some(1_700_000_000_000 + i as u64);
            }
            m.headers = vec![
                ("site".into(), Bytes::from(format!("s{}", i % 4))),
                ("bin ary=".into(), Bytes::from(vec![0, 1, 2, 0xfe, b'%', b'='])),
                ("site".into(), Bytes::from_static(b"second value, same name")),
            ];
            m
        })
        .collect()
}

/// The record as it was written: the hop headers the source adds taken off.
fn without_hop_headers(mut m: Message) -> Message {
    m.headers
        .retain(|(k, _)| k != record::SUBJECT_HEADER && k != record::SEQUENCE_HEADER);
    m
}

fn distinct(c: &FakeComponent) -> usize {
    payloads(&c.accepted()).into_iter().collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_travel_exactly_from_sink_through_the_stream_to_the_source() {
    let s = Setup::new().await;
    s.put_sink(
        "writer",
        &[("subject_prefix", "acme.p1"), ("subject", "acme.p1.readings")],
    )
    .await
    .unwrap();
    let step = s.component("step").await;
    s.put_source(
        "step",
        &[
            ("subject_prefix", "acme.p1"),
            ("subject", "acme.p1.readings"),
            ("linger", "5ms"),
        ],
    )
    .await
    .unwrap();
    let sent = rich("r", 300);
    for chunk in sent.chunks(100) {
        s.engine.write("writer", "default", chunk.to_vec()).await.unwrap();
    }
    assert_eq!(s.messages_in("acme_p1").await, 300);
    assert!(
        step.wait_for(Duration::from_secs(20), |c| c.accepted().len() >= 300)
            .await,
        "got {}",
        step.accepted().len()
    );
    let got = step.accepted();
    assert_eq!(got.len(), 300, "each record once");
    for (i, (got, want)) in got.iter().zip(&sent).enumerate() {
        let seq = got.headers.iter().find(|(k, _)| k == record::SEQUENCE_HEADER);
        assert_eq!(seq.map(|(_, v)| v.clone()), Some(Bytes::from((i + 1).to_string())));
        assert_eq!(&without_hop_headers(got.clone()), want, "record {i} changed on the way");
    }
    let floor = async {
        loop {
            let info = s.consumer("acme_p1", "sluice-step-default").await;
            if info.ack_floor.stream_sequence == 300 && info.num_ack_pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), floor)
        .await
        .expect("every record acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_puback_is_retry_and_a_too_large_record_is_rejected_by_index() {
    let s = Setup::new().await;
    s.put_sink(
        "writer",
        &[
            ("subject_prefix", "big"),
            ("subject", "big.out"),
            ("max_record_size", "4KiB"),
            ("publish_timeout", "1s"),
        ],
    )
    .await
    .unwrap();
    let mut batch = rich("b", 6);
    batch[1].payload = Bytes::from(vec![b'x'; 8 << 10]); // above the stream's limit
    batch[4].payload = Bytes::from(vec![b'y'; 2 << 20]); // above the server's max_payload
    match s.engine.write("writer", "default", batch).await {
        Err(Failure::Reject(rejected)) => {
            let indices: Vec<u32> = rejected.iter().map(|r| r.index).collect();
            assert_eq!(indices, [1, 4], "{rejected:?}");
            assert!(rejected[1].reason.contains("max_payload"), "{}", rejected[1].reason);
        }
        other => panic!("expected two rejects, got {other:?}"),
    }
    assert_eq!(s.messages_in("big").await, 4, "the other records are stored");

    // The server stops answering: no PubAck, so `retry`, never success.
    s.nats.process().signal("STOP").unwrap();
    let stalled = s.engine.write("writer", "default", rich("stalled", 3)).await;
    s.nats.process().signal("CONT").unwrap();
    assert!(matches!(stalled, Err(Failure::Retry(_))), "{stalled:?}");

    // The stream is gone: no PubAck either.
    s.js.delete_stream("big").await.unwrap();
    let gone = s.engine.write("writer", "default", rich("gone", 3)).await;
    match gone {
        Err(Failure::Retry(reason)) => assert!(reason.contains("big"), "{reason}"),
        other => panic!("expected retry, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_twice_with_dedup_is_stored_once() {
    let s = Setup::new().await;
    s.put_sink(
        "dedup",
        &[("subject_prefix", "d1"), ("subject", "d1.out"), ("dedup", "true")],
    )
    .await
    .unwrap();
    s.put_sink("plain", &[("subject_prefix", "d2"), ("subject", "d2.out")])
        .await
        .unwrap();
    let mut batch = rich("d", 50);
    // A step may emit several records from one input: they share its origin.
    for m in &mut batch[45..] {
        m.origin = "test:split@45".into();
    }
    for _ in 0..2 {
        s.engine.write("dedup", "default", batch.clone()).await.unwrap();
        s.engine.write("plain", "default", batch.clone()).await.unwrap();
    }
    assert_eq!(s.messages_in("d1").await, 50, "with dedup, stored once");
    assert_eq!(s.messages_in("d2").await, 100, "without, stored twice");
}

/// Publishes `n` records with payloads `"{prefix}-{i}"` to `subject` through a sink link.
async fn fill(s: &Setup, component: &str, prefix_config: &[(&str, &str)], prefix: &str, n: usize) {
    s.put_sink(component, prefix_config).await.unwrap();
    let records: Vec<Message> = (0..n)
        .map(|i| Message::new(format!("{prefix}-{i}").into_bytes(), format!("test:{prefix}@{i}")))
        .collect();
    for chunk in records.chunks(500) {
        s.engine.write(component, "default", chunk.to_vec()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_acks_only_after_delivery_and_redelivers_what_was_not_accepted() {
    let s = Setup::new().await;
    let config = [("subject_prefix", "a1"), ("subject", "a1.in")];
    fill(&s, "writer", &config, "a", 20).await;
    let step = s.component("step").await;
    step.behave(|_| Reply::Stall);
    s.put_source(
        "step",
        &[
            config[0],
            config[1],
            ("ack_wait", "1s"),
            ("linger", "5ms"),
            ("deliver_timeout", "30s"),
        ],
    )
    .await
    .unwrap();
    assert!(step.wait_for(Duration::from_secs(10), |c| c.in_flight() > 0).await);
    // Held by a stalled step well past `ack_wait`: nothing acknowledged, nothing sent again.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let info = s.consumer("a1", "sluice-step-default").await;
    assert_eq!(info.ack_floor.stream_sequence, 0, "{info:?}");
    assert_eq!(info.num_ack_pending, 20, "{info:?}");
    assert_eq!(info.num_redelivered, 0, "progress notices keep held records: {info:?}");

    // The step asks for the batch again twice, then accepts: every record arrives and is acked.
    let calls = std::sync::atomic::AtomicU32::new(0);
    step.behave(move |_| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Reply::Retry("not now".into())
        } else {
            Reply::Accept
        }
    });
    step.release();
    assert!(step.wait_for(Duration::from_secs(20), |c| distinct(c) == 20).await);
    let retried: usize = step.calls().iter().map(Vec::len).sum();
    assert!(
        retried >= 20 * 3,
        "the refused batches came again ({retried} records offered)"
    );
    let acked = async {
        loop {
            let info = s.consumer("a1", "sluice-step-default").await;
            if info.ack_floor.stream_sequence == 20 && info.num_ack_pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), acked)
        .await
        .expect("acked after delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_killed_mid_stream_loses_nothing_and_duplicates_stay_within_the_window() {
    let s = Setup::new().await;
    let config = [("subject_prefix", "k1"), ("subject", "k1.in")];
    let total = 3_000;
    fill(&s, "writer", &config, "k", total).await;
    let step = s.component("step").await;
    step.behave(|_| Reply::AcceptAfter(Duration::from_millis(5)));
    let source = [
        config[0],
        config[1],
        ("ack_wait", "1s"),
        ("max_in_flight", "2"),
        ("max_batch_records", "50"),
        ("linger", "5ms"),
    ];
    let window = 2 * 50;

    // The first reader runs on a runtime of its own, shut down mid-stream: its tasks and
    // connections vanish as in a crash, nothing is drained or acknowledged.
    let crashing = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = s.url();
    let first = crashing
        .spawn(async move {
            let engine = Engine::new(JetStreamSource, JetStreamSink);
            let own = async_nats::connect(url.as_str()).await.unwrap();
            put_source(&engine, &own, &url, "step", &source, HashMap::new())
                .await
                .unwrap();
            engine
        })
        .await
        .unwrap();
    assert!(
        step.wait_for(Duration::from_secs(60), |c| c.accepted().len() >= 800)
            .await
    );
    crashing.shutdown_background();
    let before = step.accepted().len();
    drop(first);

    s.put_source("step", &source).await.unwrap();
    assert!(
        step.wait_for(Duration::from_secs(90), |c| distinct(c) == total).await,
        "lost {} records",
        total - distinct(&step)
    );
    let duplicates = step.accepted().len() - total;
    eprintln!("jetstream reader killed after {before} of {total} records: 0 lost, {duplicates} delivered twice (window {window})");
    assert!(
        duplicates <= window,
        "{duplicates} duplicates, more than the unacknowledged window {window}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_are_terminated_and_dead_lettered_with_the_reason() {
    let s = Setup::new().await;
    let config = [("subject_prefix", "r1"), ("subject", "r1.in")];
    let sent: Vec<Message> = (0..20)
        .map(|i| {
            let payload = if i % 4 == 0 {
                format!("bad-{i}")
            } else {
                format!("ok-{i}")
            };
            Message::new(payload.into_bytes(), format!("test:r@{i}"))
        })
        .collect();
    s.put_sink("writer", &config).await.unwrap();
    s.engine.write("writer", "default", sent).await.unwrap();
    let mut terminated = s
        .client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.r1.>")
        .await
        .unwrap();
    s.client.flush().await.unwrap();
    let step = s.component("step").await;
    step.behave(|batch| {
        Reply::Reject(
            batch
                .iter()
                .enumerate()
                .filter(|(_, m)| m.payload.starts_with(b"bad"))
                .map(|(i, _)| (i as u32, "unparseable reading".to_string()))
                .collect(),
        )
    });
    s.put_source(
        "step",
        &[
            config[0],
            config[1],
            ("dead_letter_subject", "r1.dlq"),
            ("linger", "5ms"),
        ],
    )
    .await
    .unwrap();
    assert!(
        step.wait_for(Duration::from_secs(10), |c| c.accepted().len() == 15)
            .await
    );

    // Every rejected record is terminated, by stream sequence.
    let mut sequences = HashSet::new();
    while sequences.len() < 5 {
        let advisory = tokio::time::timeout(Duration::from_secs(10), terminated.next())
            .await
            .expect("a termination advisory")
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
        sequences.insert(json["stream_seq"].as_u64().unwrap());
    }
    assert_eq!(sequences, [1, 5, 9, 13, 17].into_iter().collect());

    // And on the dead-letter subject, with the reason and the original origin.
    let stream = s.js.get_stream("r1").await.unwrap();
    let reader = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "r1.dlq".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut dead = reader
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(m) = dead.next().await {
        let m = m.unwrap();
        let headers = m.headers.clone().unwrap();
        let reason = record::decode(headers.get(record::REASON).unwrap().as_str());
        let origin = record::decode(headers.get(record::ORIGIN).unwrap().as_str());
        got.push((
            String::from_utf8(m.payload.to_vec()).unwrap(),
            String::from_utf8(reason).unwrap(),
            String::from_utf8(origin).unwrap(),
        ));
    }
    let want: Vec<(String, String, String)> = (0..20)
        .step_by(4)
        .map(|i| (format!("bad-{i}"), "unparseable reading".into(), format!("test:r@{i}")))
        .collect();
    assert_eq!(got, want);
    let info = s.consumer("r1", "sluice-step-default").await;
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_outside_the_prefix_and_plain_credentials_are_refused_by_key_and_link() {
    let s = Setup::new().await;
    let err = s
        .put_sink("writer-out", &[("subject_prefix", "t1"), ("subject", "t2.out")])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`subject`") && err.contains("writer-out") && err.contains("`default`"),
        "{err}"
    );
    assert!(err.contains("outside `subject_prefix`"), "{err}");

    let err = s
        .put_source(
            "step-dlq",
            &[
                ("subject_prefix", "t1"),
                ("subject", "t1.in"),
                ("dead_letter_subject", "elsewhere.dlq"),
            ],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`dead_letter_subject`") && err.contains("step-dlq"),
        "{err}"
    );

    let err = s
        .put_source(
            "step-cred",
            &[("subject_prefix", "t1"), ("subject", "t1.in"), ("password", "hunter2")],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`password`") && err.contains("step-cred"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    // A stream of the link's name that reaches outside the prefix is not touched.
    s.js.create_stream(jetstream::stream::Config {
        name: "t3".into(),
        subjects: vec!["t3.in".into(), "other.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = s
        .put_sink("writer-t3", &[("subject_prefix", "t3"), ("subject", "t3.in")])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside `subject_prefix`") && err.contains("writer-t3"),
        "{err}"
    );

    // Secrets are how credentials come; a server without auth takes the link as it is.
    let secrets: HashMap<String, Secret> = [
        ("user".to_string(), Secret::new("u")),
        ("password".to_string(), Secret::new("p")),
    ]
    .into();
    put_source(
        &s.engine,
        &s.client,
        &s.url(),
        "step-ok",
        &[("subject_prefix", "t1"), ("subject", "t1.in")],
        secrets,
    )
    .await
    .unwrap();
    let status = s.engine.status();
    assert!(status.refusal("step-ok").is_none(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_put_again_with_a_stream_outside_its_prefix_keeps_running() {
    let s = Setup::new().await;
    s.js.create_stream(jetstream::stream::Config {
        name: "u2".into(),
        subjects: vec!["elsewhere.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let good = [("subject_prefix", "u1"), ("subject", "u1.in")];
    let outside = [("subject_prefix", "u2"), ("subject", "u2.in")];
    s.put_sink("writer", &good).await.unwrap();
    let step = s.component("step").await;
    s.put_source("step", &[good[0], good[1], ("linger", "5ms")])
        .await
        .unwrap();

    let err = s.put_sink("writer", &outside).await.unwrap_err().to_string();
    assert!(err.contains("stream `u2`") && err.contains("writer"), "{err}");
    let err = s.put_source("step", &outside).await.unwrap_err().to_string();
    assert!(err.contains("stream `u2`") && err.contains("step"), "{err}");

    // Both running links kept their old config.
    s.engine.write("writer", "default", rich("still", 10)).await.unwrap();
    assert!(
        step.wait_for(Duration::from_secs(10), |c| c.accepted().len() == 10)
            .await
    );
    assert_eq!(s.messages_in("u1").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_durable_consumer_is_made_again_and_reading_goes_on() {
    let s = Setup::new().await;
    let config = [("subject_prefix", "c1"), ("subject", "c1.in")];
    s.put_sink("writer", &config).await.unwrap();
    let step = s.component("step").await;
    s.put_source("step", &[config[0], config[1], ("linger", "5ms")])
        .await
        .unwrap();
    s.engine.write("writer", "default", rich("before", 10)).await.unwrap();
    assert!(
        step.wait_for(Duration::from_secs(10), |c| c.accepted().len() == 10)
            .await
    );

    let stream = s.js.get_stream("c1").await.unwrap();
    stream.delete_consumer("sluice-step-default").await.unwrap();
    s.engine.write("writer", "default", rich("after", 10)).await.unwrap();
    // The new consumer starts from the stream's first record: the first ten come again.
    assert!(
        step.wait_for(Duration::from_secs(30), |c| payloads(&c.accepted())
            .iter()
            .filter(|p| p.starts_with("after"))
            .count()
            == 10)
            .await,
        "got {:?}",
        payloads(&step.accepted())
    );
}
