//! Source link leases over a real nats-server (JetStream KV): one holder at a time, renewed past
//! its TTL, released to a standby, taken over once a dead holder's TTL has passed, taken back at
//! once by the same instance after a restart; and in the engine: of two instances of a provider,
//! only the lease holder reads a single-reader link, and a holder that loses its lease stops
//! reading at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use sluice_integration::servers::NatsServer;
use sluice_provider_core::lease::{Held, Lease, LeaseValue, Leases};
use sluice_provider_core::testing::{MemoryIngest, MemorySink, MemorySource};
use sluice_provider_core::{Engine, LinkKey, LinkSpec, Message};
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "sluice-leases-test";
const TTL: Duration = Duration::from_secs(1);

async fn nats() -> (NatsServer, async_nats::Client) {
    sluice_integration::init_tracing();
    let server = NatsServer::start().expect("nats-server starts");
    let client = server.connect().await.expect("connects");
    (server, client)
}

fn leases(client: &async_nats::Client, holder: &str) -> Leases {
    Leases::new(jetstream::new(client.clone()), BUCKET, holder, "provider-a")
}

fn link() -> LinkKey {
    LinkKey::new("app-step", "default")
}

/// Tries to take `lease` for `within`; `None` if it did not get it.
async fn acquire_within(lease: &Lease, within: Duration) -> Option<Held> {
    let stop = CancellationToken::new();
    let cancel = stop.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(within).await;
        cancel.cancel();
    });
    let held = lease.acquire(&stop).await;
    timer.abort();
    held
}

async fn holder_of(client: &async_nats::Client, lease: &Lease) -> Option<String> {
    let kv = jetstream::new(client.clone()).get_key_value(BUCKET).await.unwrap();
    let entry = kv.entry(lease.key()).await.unwrap()?;
    (entry.operation == jetstream::kv::Operation::Put)
        .then(|| serde_json::from_slice::<LeaseValue>(&entry.value).unwrap().holder)
}

#[tokio::test]
async fn one_holder_at_a_time_renewed_past_its_ttl_then_released_to_the_standby() {
    let (_server, client) = nats().await;
    let a = leases(&client, "host-a").lease(&link(), TTL);
    let b = leases(&client, "host-b").lease(&link(), TTL);
    assert_eq!(a.key(), "provider-a.app-step.default");

    let held_a = acquire_within(&a, Duration::from_secs(5))
        .await
        .expect("a free lease is taken");
    assert_eq!(holder_of(&client, &a).await.as_deref(), Some("host-a"));
    // Renewed every TTL/3: for three TTLs the standby never gets it, and the holder keeps it.
    assert!(
        acquire_within(&b, TTL * 3).await.is_none(),
        "the standby took a lease that was being renewed"
    );
    assert!(!held_a.is_lost(), "the holder lost a lease it was renewing");
    assert_eq!(holder_of(&client, &a).await.as_deref(), Some("host-a"));

    // Released: the standby takes it without waiting for a TTL.
    held_a.release().await;
    let started = Instant::now();
    let held_b = acquire_within(&b, Duration::from_secs(10))
        .await
        .expect("the standby takes a released lease");
    eprintln!("released lease taken by the standby after {:?}", started.elapsed());
    assert_eq!(holder_of(&client, &b).await.as_deref(), Some("host-b"));
    held_b.release().await;
}

#[tokio::test]
async fn a_dead_holders_lease_is_taken_over_once_its_ttl_has_passed() {
    let (_server, client) = nats().await;
    let a = leases(&client, "host-a").lease(&link(), TTL);
    let b = leases(&client, "host-b").lease(&link(), TTL);
    let held_a = acquire_within(&a, Duration::from_secs(5)).await.expect("taken");
    // The holder dies: no more renewals, no release.
    drop(held_a);
    let died = Instant::now();
    let held_b = acquire_within(&b, Duration::from_secs(20))
        .await
        .expect("the standby takes over a dead holder's lease");
    let after = died.elapsed();
    eprintln!("dead holder's lease (TTL {TTL:?}) taken over after {after:?}");
    // Never before a whole TTL without renewal: the holder might still be reading.
    assert!(
        after >= TTL,
        "taken over after {after:?}, before the TTL {TTL:?} passed"
    );
    assert_eq!(holder_of(&client, &b).await.as_deref(), Some("host-b"));

    // The first instance restarted on the same host takes its own lease back at once; here
    // host-b's is alive, so host-a (a new process) stands by.
    assert!(
        acquire_within(&a, TTL * 2).await.is_none(),
        "took a live holder's lease"
    );
    // host-b restarted (its process died without releasing): it takes its lease back at once.
    drop(held_b);
    let restarted = Instant::now();
    let again = acquire_within(&leases(&client, "host-b").lease(&link(), TTL), Duration::from_secs(5))
        .await
        .expect("the same holder takes its lease back");
    assert!(
        restarted.elapsed() < TTL,
        "the same instance waited {:?} for its own lease",
        restarted.elapsed()
    );
    again.release().await;
}

#[tokio::test]
async fn a_holder_whose_lease_is_taken_learns_it_within_a_renewal() {
    let (_server, client) = nats().await;
    let a = leases(&client, "host-a").lease(&link(), TTL);
    let held = acquire_within(&a, Duration::from_secs(5)).await.expect("taken");
    // Another instance overwrites the key (as one that took over during a partition would).
    let kv = jetstream::new(client.clone()).get_key_value(BUCKET).await.unwrap();
    let other = serde_json::to_vec(&LeaseValue {
        holder: "host-z".into(),
        pid: 1,
        ttl_ms: 60_000,
    })
    .unwrap();
    kv.put(a.key(), other.into()).await.unwrap();
    let taken = Instant::now();
    tokio::time::timeout(TTL * 2, held.lost())
        .await
        .expect("the holder learns that its lease is gone");
    eprintln!("holder learned of the loss after {:?}", taken.elapsed());
    held.release().await;
    // It does not delete the other instance's lease.
    assert_eq!(holder_of(&client, &a).await.as_deref(), Some("host-z"));
}

/// A provider instance: an engine whose single-reader links take leases as `holder`, reading
/// the shared in-memory source system and delivering to its own ingest.
struct Instance {
    engine: Engine<MemorySource, MemorySink>,
    ingest: MemoryIngest,
}

impl Instance {
    async fn start(client: &async_nats::Client, holder: &str, source: &MemorySource) -> Self {
        let engine = Engine::new(source.clone(), MemorySink::default());
        engine.use_leases(|| leases(client, holder));
        let ingest = MemoryIngest::default();
        let config = HashMap::from([
            ("single_reader".to_string(), "true".to_string()),
            ("lease_ttl".to_string(), "1s".to_string()),
            ("linger".to_string(), "5ms".to_string()),
        ]);
        let made = ingest.clone();
        engine
            .put_source_link(LinkSpec::new(link(), config), || async move { Ok(made) })
            .await
            .expect("link put");
        Self { engine, ingest }
    }
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn records(prefix: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::new(format!("{prefix}{i}"), "memory")).collect()
}

/// A source whose system sends only while someone listens (MQTT without a session yet) must
/// be listening when its put is answered, lease or not.
#[tokio::test]
async fn a_free_lease_is_taken_and_the_reader_open_when_the_put_is_answered_the_other_stands_by() {
    let (_server, client) = nats().await;
    let source = MemorySource::default();
    let stream = source.stream(&link());
    let a = Instance::start(&client, "host-a", &source).await;
    assert_eq!(
        stream.opened(),
        1,
        "the holder's reader was not open when its put returned"
    );
    let b = Instance::start(&client, "host-b", &source).await;
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(
        stream.opened(),
        1,
        "the standby opened a reader while the lease was held"
    );
    // Their statuses say which one reads, and merge into one link that is not standing by.
    let (status_a, status_b) = (a.engine.status(), b.engine.status());
    assert_eq!(status_a.links[0].standby_for, None, "{status_a:?}");
    let holder = status_b.links[0].standby_for.as_deref().unwrap_or_default();
    assert!(holder.starts_with("host-a (pid "), "{status_b:?}");
    let merged = sluice_provider_core::Status::merge([status_a, status_b]);
    assert_eq!(merged.links.len(), 1);
    assert_eq!(merged.links[0].standby_for, None);
    a.engine.shutdown().await;
    b.engine.shutdown().await;
}

#[tokio::test]
async fn of_two_instances_only_the_lease_holder_reads_and_one_that_loses_it_stops_at_once() {
    let (_server, client) = nats().await;
    // One source system, two instances of the provider, both given the link.
    let source = MemorySource::default();
    let a = Instance::start(&client, "host-a", &source).await;
    let b = Instance::start(&client, "host-b", &source).await;
    let stream = source.stream(&link());

    stream.push(records("first-", 200));
    wait_for("200 records delivered", Duration::from_secs(10), || {
        a.ingest.accepted().len() + b.ingest.accepted().len() >= 200
    })
    .await;
    let (got_a, got_b) = (a.ingest.accepted().len(), b.ingest.accepted().len());
    eprintln!("while both live: host-a read {got_a}, host-b read {got_b}");
    assert!(
        got_a == 0 || got_b == 0,
        "both instances read the link: {got_a} and {got_b}"
    );
    let (holder, standby) = if got_a > 0 { (&a, &b) } else { (&b, &a) };

    // The holder's lease is taken from it: it stops reading at once. Nothing is pushed meanwhile,
    // then records arrive while the key names a third instance that never renews: nobody reads
    // them until that "holder" has been silent for a TTL, then one of the two does.
    let kv = jetstream::new(client.clone()).get_key_value(BUCKET).await.unwrap();
    let key = leases(&client, "x").key(&link());
    let other = serde_json::to_vec(&LeaseValue {
        holder: "host-z".into(),
        pid: 1,
        ttl_ms: 3_000,
    })
    .unwrap();
    kv.put(&key, other.into()).await.unwrap();
    let taken = Instant::now();
    // Within a renewal (TTL/3) plus a margin the holder has stopped: wait past that, then push.
    tokio::time::sleep(TTL / 3 + Duration::from_millis(300)).await;
    let before = (holder.ingest.accepted().len(), standby.ingest.accepted().len());
    stream.push(records("second-", 100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read_meanwhile = holder.ingest.accepted().len() + standby.ingest.accepted().len() - before.0 - before.1;
    if taken.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            read_meanwhile, 0,
            "records were read while another instance held the lease"
        );
    }
    wait_for("the second 100 delivered", Duration::from_secs(10), || {
        holder.ingest.accepted().len() + standby.ingest.accepted().len() >= 300
    })
    .await;
    eprintln!("lease taken away, then read again after {:?}", taken.elapsed());
    let mut all: Vec<String> = a
        .ingest
        .accepted()
        .into_iter()
        .chain(b.ingest.accepted())
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 300, "every record delivered");
    a.engine.shutdown().await;
    b.engine.shutdown().await;
}

#[tokio::test]
async fn a_link_whose_lease_cannot_be_reached_shows_degraded_and_reads_nothing() {
    let (_server, client) = nats().await;
    let source = MemorySource::default();
    let engine = Engine::new(source.clone(), MemorySink::default());
    // A JetStream domain nobody serves: every lease request goes unanswered.
    engine.use_leases(|| {
        Leases::new(
            jetstream::with_domain(client.clone(), "nowhere"),
            BUCKET,
            "host-a",
            "provider-a",
        )
    });
    let ingest = MemoryIngest::default();
    let config = HashMap::from([("single_reader".to_string(), "true".to_string())]);
    let made = ingest.clone();
    engine
        .put_source_link(LinkSpec::new(link(), config), || async move { Ok(made) })
        .await
        .expect("link put");
    source.stream(&link()).push(records("r-", 10));
    let mut degraded = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while degraded.is_none() && Instant::now() < deadline {
        degraded = engine.status().degraded("app-step").map(str::to_string);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let degraded = degraded.expect("the link shows degraded");
    assert!(degraded.contains("lease"), "{degraded}");
    assert_eq!(source.stream(&link()).polled(), 0, "read without its lease");
    assert!(ingest.accepted().is_empty());
    engine.shutdown().await;
}

#[tokio::test]
async fn an_instance_restarted_after_its_process_died_takes_its_lease_back_at_once() {
    let (_server, client) = nats().await;
    let a = leases(&client, "host-a").lease(&link(), Duration::from_secs(30));
    // The lease as the previous process of host-a left it: held, never released, that process gone.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let kv = jetstream::new(client.clone())
        .create_key_value(jetstream::kv::Config {
            bucket: BUCKET.into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let value = |pid| {
        serde_json::to_vec(&LeaseValue {
            holder: "host-a".into(),
            pid,
            ttl_ms: 30_000,
        })
        .unwrap()
    };
    kv.put(a.key(), value(dead_pid).into()).await.unwrap();
    let started = Instant::now();
    let held = acquire_within(&a, Duration::from_secs(5))
        .await
        .expect("host-a's new process takes the lease its dead process held");
    eprintln!("restarted instance took its lease back after {:?}", started.elapsed());
    held.release().await;
    // A live process of the same host (pid 1 here) is not taken from: the TTL applies.
    kv.put(a.key(), value(1).into()).await.unwrap();
    assert!(
        acquire_within(&a, Duration::from_secs(2)).await.is_none(),
        "took the lease of a live process"
    );
}
