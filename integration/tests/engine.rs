//! The delivery engine over a real nats-server: the in-memory test connectors on one side, a
//! native wRPC "component" on the other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use sluice_integration::component::{payloads, records, FakeComponent, Reply};
use sluice_integration::servers::NatsServer;
use sluice_provider_core::testing::{MemorySink, MemorySource};
use sluice_provider_core::wrpc::{nats, WrpcIngest};
use sluice_provider_core::{Engine, Failure, LinkError, LinkKey, LinkSpec, Message};

const LATTICE: &str = "default";

struct Setup {
    _nats: NatsServer,
    client: async_nats::Client,
    engine: Engine<MemorySource, MemorySink>,
    source: MemorySource,
    sink: MemorySink,
}

impl Setup {
    async fn new() -> Self {
        sluice_integration::init_tracing();
        let nats = NatsServer::start().expect("nats-server starts");
        let client = nats.connect().await.expect("connects");
        let source = MemorySource::default();
        let sink = MemorySink::default();
        Self {
            _nats: nats,
            client,
            engine: Engine::new(source.clone(), sink.clone()),
            source,
            sink,
        }
    }

    async fn component(&self, id: &str) -> FakeComponent {
        FakeComponent::serve(&self.client, LATTICE, id)
            .await
            .expect("component serves")
    }

    async fn put_source(&self, key: &LinkKey, config: &[(&str, &str)]) -> Result<(), LinkError> {
        let spec = LinkSpec::new(key.clone(), config_map(config));
        let client = self.client.clone();
        let prefix = format!("{LATTICE}.{}", key.component);
        self.engine
            .put_source_link(spec, || async move {
                Ok(WrpcIngest::new(nats::Client::new(client, prefix, None).await?))
            })
            .await
    }
}

fn config_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn keyed(n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let mut m = Message::new(format!("r{i}").into_bytes(), format!("test@{i}"));
            m.key = Some(format!("k{}", i % keys).into_bytes().into());
            m
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_record_once_in_order_per_key_and_acks_them_all() {
    let s = Setup::new().await;
    let component = s.component("step-a").await;
    // Batches take turns finishing out of order; per-key order must hold anyway.
    let n = AtomicU32::new(0);
    component.behave(move |_| Reply::AcceptAfter(Duration::from_millis(u64::from(n.fetch_add(7, SeqCst) % 13))));
    let key = LinkKey::new("step-a", "default");
    let stream = s.source.stream(&key);
    s.put_source(
        &key,
        &[
            ("ordered", "true"),
            ("max_batch_records", "16"),
            ("max_in_flight", "4"),
            ("linger", "5ms"),
        ],
    )
    .await
    .unwrap();
    let sent = keyed(1000, 8);
    stream.push(sent.clone());
    assert!(
        stream
            .wait_for(Duration::from_secs(30), |s| s.acked().len() == 1000)
            .await,
        "acked {}",
        stream.acked().len()
    );

    let accepted = component.accepted();
    let mut got = payloads(&accepted);
    got.sort();
    let mut want = payloads(&sent);
    want.sort();
    assert_eq!(got, want, "exactly the records sent, each once");
    for k in 0..8 {
        let key = format!("k{k}");
        let order: Vec<usize> = accepted
            .iter()
            .filter(|m| m.key.as_deref() == Some(key.as_bytes()))
            .map(|m| String::from_utf8_lossy(&m.payload)[1..].parse().unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {order:?}"
        );
        assert_eq!(order.len(), 125);
    }
    assert_eq!(stream.acked(), (0..1000).collect::<Vec<u64>>(), "acked in read order");
    assert!(component.max_in_flight() > 1, "batches ran concurrently");
    assert!(component.max_in_flight() <= 4);
    assert!(stream.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_reach_the_component_unchanged() {
    let s = Setup::new().await;
    let component = s.component("step-bin").await;
    let key = LinkKey::new("step-bin", "default");
    let stream = s.source.stream(&key);
    // Every byte value, an ASCII record and an empty one, in one batch and over the wire form.
    let all: Vec<u8> = (0..=255).collect();
    let mut high = all.clone();
    high.reverse();
    let sent = vec![
        Message::new(all, "test:bin@0"),
        Message::new(&b"{\"json\":true}"[..], "test:bin@1"),
        Message::new(Vec::new(), "test:bin@2"),
        Message::new(high, "test:bin@3"),
    ];
    stream.push(sent.clone());
    s.put_source(&key, &[("linger", "5ms")]).await.unwrap();
    let within = Duration::from_secs(20);
    assert!(component.wait_for(within, |c| c.accepted().len() == sent.len()).await);
    assert_eq!(component.accepted(), sent);
    assert!(stream.wait_for(within, |st| st.acked_count() == sent.len()).await);
    assert!(stream.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_answers_and_deadlines_are_retried_with_backoff() {
    let s = Setup::new().await;
    let component = s.component("step-r").await;
    let attempts = AtomicU32::new(0);
    // retry, retry, no answer within the deadline, then accept.
    component.behave(move |_| match attempts.fetch_add(1, SeqCst) {
        0 | 1 => Reply::Retry("warming up".into()),
        2 => Reply::AcceptAfter(Duration::from_secs(5)),
        _ => Reply::Accept,
    });
    let key = LinkKey::new("step-r", "default");
    let stream = s.source.stream(&key);
    stream.push(records("r", 10));
    let started = Instant::now();
    s.put_source(
        &key,
        &[
            ("max_batch_records", "10"),
            ("linger", "1s"),
            ("retry_initial", "200ms"),
            ("deliver_timeout", "300ms"),
        ],
    )
    .await
    .unwrap();
    assert!(
        stream
            .wait_for(Duration::from_secs(10), |s| s.acked().len() == 10)
            .await
    );
    let elapsed = started.elapsed();
    assert_eq!(component.call_count(), 4, "2 retries + 1 timeout + success");
    // backoff: >= 100ms + 200ms + 400ms (each at least half its window), plus the 300ms deadline.
    assert!(elapsed >= Duration::from_millis(100 + 200 + 400 + 300), "{elapsed:?}");
    let status = s.engine.status();
    assert_eq!(status.links[0].metrics.retried, 3);
    assert_eq!(status.links[0].metrics.delivered, 10);
    assert_eq!(stream.acked(), (0..10).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_failing_component_never_gets_records_acked() {
    let s = Setup::new().await;
    let component = s.component("step-f").await;
    component.behave(|_| Reply::Retry("database down".into()));
    let key = LinkKey::new("step-f", "default");
    let stream = s.source.stream(&key);
    stream.push(records("f", 50));
    s.put_source(&key, &[("retry_initial", "10ms"), ("retry_max", "50ms")])
        .await
        .unwrap();
    assert!(
        component
            .wait_for(Duration::from_secs(10), |c| c.call_count() >= 20)
            .await
    );
    assert!(stream.acked().is_empty(), "nothing acked: {:?}", stream.acked());
    assert!(stream.dead_letters().is_empty());
    assert!(component.accepted().is_empty());
    // Once it recovers, everything goes through and only then is acked.
    component.behave(|_| Reply::Accept);
    assert!(
        stream
            .wait_for(Duration::from_secs(10), |s| s.acked().len() == 50)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_are_dead_lettered_and_the_rest_acked() {
    let s = Setup::new().await;
    let component = s.component("step-x").await;
    component.behave(|_| Reply::Reject(vec![(3, "bad unit".into()), (7, "negative reading".into())]));
    let key = LinkKey::new("step-x", "default");
    let stream = s.source.stream(&key);
    stream.push(records("x", 10));
    s.put_source(&key, &[("max_batch_records", "10"), ("linger", "1s")])
        .await
        .unwrap();
    assert!(
        stream
            .wait_for(Duration::from_secs(10), |s| s.acked().len() == 10)
            .await
    );
    let dead = stream.dead_letters();
    let dead: Vec<(String, String)> = dead
        .iter()
        .map(|(m, r)| (String::from_utf8_lossy(&m.payload).into_owned(), r.clone()))
        .collect();
    assert_eq!(
        dead,
        vec![
            ("x-3".into(), "bad unit".into()),
            ("x-7".into(), "negative reading".into())
        ]
    );
    assert_eq!(stream.acked(), (0..10).collect::<Vec<u64>>());
    assert_eq!(component.call_count(), 1, "a reject is final, not retried");
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.engine.status().links[0].metrics.acked < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = s.engine.status().links[0].metrics;
    assert_eq!((m.delivered, m.rejected, m.dead_lettered, m.acked), (8, 2, 2, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_component_bounds_in_flight_and_polling() {
    let s = Setup::new().await;
    let component = s.component("step-s").await;
    component.behave(|_| Reply::Stall);
    let key = LinkKey::new("step-s", "default");
    let stream = s.source.stream(&key);
    s.put_source(
        &key,
        &[
            ("max_in_flight", "2"),
            ("max_batch_records", "10"),
            ("deliver_timeout", "1h"),
            ("linger", "1ms"),
        ],
    )
    .await
    .unwrap();
    // 20 MiB waiting in the source system.
    let big: Vec<Message> = (0..20_000)
        .map(|i| Message::new(vec![b'x'; 1024], format!("big@{i}")))
        .collect();
    stream.push(big);
    assert!(
        component
            .wait_for(Duration::from_secs(10), |c| c.in_flight() == 2)
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let polled = stream.polled();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(component.in_flight(), 2, "never more than max_in_flight");
    assert_eq!(component.max_in_flight(), 2);
    assert_eq!(stream.polled(), polled, "the source stopped polling");
    assert_eq!(
        polled,
        2 * 10,
        "read exactly the unacknowledged bound, max_in_flight * max_batch_records"
    );
    assert!(stream.acked().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_acknowledgement_does_not_hold_up_delivery_and_the_next_call_takes_what_piled_up() {
    let s = Setup::new().await;
    let component = s.component("step-c").await;
    let key = LinkKey::new("step-c", "default");
    let stream = s.source.stream(&key);
    // The first acknowledgement call hangs, as a commit to a slow broker would.
    stream.hold_acks(true);
    s.put_source(
        &key,
        &[("max_in_flight", "4"), ("max_batch_records", "10"), ("linger", "1ms")],
    )
    .await
    .unwrap();
    stream.push((0..100).map(|i| Message::new(format!("r{i}").into_bytes(), format!("test@{i}"))));
    // The runner keeps delivering while that call waits, up to the unacknowledged bound
    // (4 x 10 records): records whose acknowledgement is in flight count against it.
    assert!(
        component
            .wait_for(Duration::from_secs(10), |c| c.accepted_count() >= 40)
            .await
    );
    let delivered = || s.engine.status().links[0].metrics.delivered;
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered() < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivered(), 40, "delivery stops at the bound");
    assert!(
        stream.polled() < 50,
        "read at most the bound and one batch: {}",
        stream.polled()
    );
    assert_eq!(stream.ack_calls(), Vec::<usize>::new());
    assert_eq!(
        stream.released(),
        (0..40).collect::<Vec<u64>>(),
        "the reader is told of every finished record while their acknowledgement waits"
    );
    // Released, the hung call finishes and one more call acknowledges every batch that finished
    // meanwhile (a call per batch would make four), in read order; then the rest flows.
    stream.hold_acks(false);
    assert!(
        stream
            .wait_for(Duration::from_secs(10), |st| st.acked_count() >= 40)
            .await
    );
    assert_eq!(stream.acked()[..40], (0..40).collect::<Vec<u64>>()[..]);
    // The first call was issued for the first batch alone or, when the runner came to it only
    // after all four had finished, for all of them; either way the first 40 take at most two.
    let calls = stream.ack_calls();
    assert!(
        calls[0] == 40 || (calls.len() > 1 && calls[0] + calls[1] == 40),
        "the batches released during the first call share the second: {calls:?}"
    );
    assert!(
        stream
            .wait_for(Duration::from_secs(10), |st| st.acked_count() == 100)
            .await
    );
    assert_eq!(stream.acked(), (0..100).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_link_is_refused_by_name_while_a_good_one_keeps_delivering() {
    let s = Setup::new().await;
    let good = s.component("step-good").await;
    let good_key = LinkKey::new("step-good", "default");
    let good_stream = s.source.stream(&good_key);
    s.put_source(&good_key, &[]).await.unwrap();
    good_stream.push(records("g", 5));
    assert!(
        good_stream
            .wait_for(Duration::from_secs(10), |s| s.acked().len() == 5)
            .await
    );

    let bad_key = LinkKey::new("step-bad", "orders");
    let err = s
        .put_source(&bad_key, &[("max_in_flight", "abc")])
        .await
        .unwrap_err()
        .to_string();
    for needle in ["max_in_flight", "step-bad", "orders", "abc"] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    let status = s.engine.status();
    assert_eq!(status.refused.len(), 1);
    assert_eq!(status.refused[0].error, err);
    assert_eq!(status.links.len(), 1, "only the good link runs");

    good_stream.push(records("h", 5));
    assert!(
        good_stream
            .wait_for(Duration::from_secs(10), |s| s.acked().len() == 10)
            .await
    );
    assert_eq!(good.accepted().len(), 10);

    // Fixing the config clears the refusal.
    s.put_source(&bad_key, &[("max_in_flight", "2")]).await.unwrap();
    assert!(s.engine.status().refused.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_writes_reach_only_the_callers_own_link_and_are_bounded() {
    let s = Setup::new().await;
    for (component, label) in [("comp-a", "a"), ("comp-b", "b")] {
        let spec = LinkSpec::new(
            LinkKey::new(component, "default"),
            config_map(&[
                ("label", label),
                ("write_delay", "300ms"),
                ("max_concurrent_writes", "1"),
            ]),
        );
        s.engine.put_sink_link(spec).await.unwrap();
    }
    let (a, b) = tokio::join!(
        s.engine.write("comp-a", "default", records("a", 2)),
        s.engine.write("comp-b", "default", records("b", 3)),
    );
    a.unwrap();
    b.unwrap();
    let mut written: Vec<(String, Vec<String>)> =
        s.sink.written().into_iter().map(|(l, m)| (l, payloads(&m))).collect();
    written.sort();
    assert_eq!(
        written,
        vec![
            ("a".into(), vec!["a-0".into(), "a-1".into()]),
            ("b".into(), payloads(&records("b", 3)))
        ]
    );

    match s.engine.write("comp-c", "default", records("c", 1)).await {
        Err(Failure::Retry(reason)) => assert!(reason.contains("comp-c"), "{reason}"),
        other => panic!("a component with no link got {other:?}"),
    }
    assert!(
        s.engine.write("comp-a", "other", records("c", 1)).await.is_err(),
        "another link name is another link"
    );

    // One write at a time per link: a second concurrent one waits for the slot (up to
    // `slot_wait`, then `retry`: see provider-core's engine tests) and runs after the first.
    let start = std::time::Instant::now();
    let (first, second) = tokio::join!(s.engine.write("comp-a", "default", records("a", 1)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.engine.write("comp-a", "default", records("a", 1)).await
    });
    first.unwrap();
    second.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "two 300 ms writes of one link overlapped: both done after {:?}",
        start.elapsed()
    );
    assert_eq!(s.sink.written().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_link_drains_and_acks_in_flight_work() {
    let s = Setup::new().await;
    let component = s.component("step-d").await;
    component.behave(|_| Reply::AcceptAfter(Duration::from_millis(400)));
    let key = LinkKey::new("step-d", "default");
    let stream = s.source.stream(&key);
    s.put_source(
        &key,
        &[("max_batch_records", "10"), ("max_in_flight", "3"), ("linger", "1ms")],
    )
    .await
    .unwrap();
    stream.push(records("d", 200));
    assert!(
        component
            .wait_for(Duration::from_secs(10), |c| c.in_flight() == 3)
            .await
    );
    let (deleted, listed_while_draining) = tokio::join!(s.engine.delete_source_link(&key), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.engine.status().links.len()
    });
    assert!(deleted);
    assert_eq!(
        listed_while_draining, 1,
        "the status lists a draining link: its runner still delivers"
    );
    assert_eq!(
        component.in_flight(),
        0,
        "delete returned after in-flight work finished"
    );
    let polled = stream.polled() as usize;
    assert!(polled >= 30);
    assert_eq!(component.accepted().len(), polled, "everything read was delivered");
    assert_eq!(
        stream.acked(),
        (0..polled as u64).collect::<Vec<u64>>(),
        "and acknowledged"
    );
    assert_eq!(stream.closed(), 1);
    assert!(s.engine.status().links.is_empty());
    let calls = component.call_count();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(component.call_count(), calls, "nothing delivered after delete");
}
