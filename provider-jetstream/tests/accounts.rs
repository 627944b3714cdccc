//! Runtime isolation between customers: a real nats-server configured as an operator would, with
//! one NATS account per customer (JetStream enabled in each), and hop links logging in with their
//! customer's credentials from secrets. Customer B's links, even when configured with customer A's
//! stream and subjects, never see, read or write A's records; wrong credentials refuse the link
//! with an error naming it (and not the secret).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt as _;
use sluice_integration::component::{payloads, FakeComponent};
use sluice_integration::servers::{NatsAccount, NatsServer};
use sluice_provider_core::wrpc::{nats, WrpcIngest};
use sluice_provider_core::{Engine, LinkKey, LinkSpec, Message, Secret};
use sluice_provider_jetstream::{JetStreamSink, JetStreamSource};

const LATTICE: &str = "default";
/// Customer A's hop: the prefix and stream a rendered pipeline `readings` of lattice
/// `customer-a` uses for its step `clean`.
const A_PREFIX: &str = "sluice.customer-a.readings.clean";
const A_SUBJECT: &str = "sluice.customer-a.readings.clean.records";
const A_STREAM: &str = "sluice_customer-a_readings_clean";

type JsEngine = Engine<JetStreamSource, JetStreamSink>;

fn credentials(user: &str, password: &str) -> HashMap<String, Secret> {
    [
        ("user".to_string(), Secret::new(user)),
        ("password".to_string(), Secret::new(password)),
    ]
    .into()
}

fn spec(component: &str, url: &str, secrets: HashMap<String, Secret>) -> LinkSpec {
    let config = [
        ("url", url),
        ("subject_prefix", A_PREFIX),
        ("subject", A_SUBJECT),
        ("linger", "5ms"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut spec = LinkSpec::new(LinkKey::new(component, "default"), config);
    spec.secrets = secrets;
    spec
}

async fn put_source(
    engine: &JsEngine,
    lattice: &async_nats::Client,
    spec: LinkSpec,
) -> Result<(), sluice_provider_core::LinkError> {
    let client = lattice.clone();
    let prefix = format!("{LATTICE}.{}", spec.key.component);
    engine
        .put_source_link(spec, || async move {
            Ok(WrpcIngest::new(nats::Client::new(client, prefix, None).await?))
        })
        .await
}

fn records(prefix: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(format!("{prefix}-{i}").into_bytes(), format!("test:{prefix}@{i}")))
        .collect()
}

/// The streams an account's client sees, with their message counts.
async fn streams_seen(client: &async_nats::Client) -> Vec<(String, u64)> {
    let js = jetstream::new(client.clone());
    let infos: Vec<_> = js.streams().try_collect().await.expect("list streams");
    let mut seen: Vec<(String, u64)> = infos.into_iter().map(|i| (i.config.name, i.state.messages)).collect();
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_b_links_never_reach_customer_a_streams() {
    sluice_integration::init_tracing();
    let nats = NatsServer::start_with_accounts(&[
        NatsAccount::new("customer-a", "customer-a-hops", "a-hops-password"),
        NatsAccount::new("customer-b", "customer-b-hops", "b-hops-password"),
        // The lattice (wRPC between the provider and the steps) in an account of its own.
        NatsAccount::new("lattice", "wasmcloud", "lattice-password"),
    ])
    .expect("nats-server with accounts starts");
    let url = nats.url();
    let lattice = nats.connect_as("wasmcloud", "lattice-password").await.unwrap();
    let as_a = nats.connect_as("customer-a-hops", "a-hops-password").await.unwrap();
    let as_b = nats.connect_as("customer-b-hops", "b-hops-password").await.unwrap();
    let engine = Engine::new(JetStreamSource, JetStreamSink);
    let a_secrets = || credentials("customer-a-hops", "a-hops-password");
    let b_secrets = || credentials("customer-b-hops", "b-hops-password");

    // Customer A's hop works with A's credentials: written, stored, read.
    engine.put_sink_link(spec("a-writer", &url, a_secrets())).await.unwrap();
    let a_step = FakeComponent::serve(&lattice, LATTICE, "a-step").await.unwrap();
    put_source(&engine, &lattice, spec("a-step", &url, a_secrets()))
        .await
        .unwrap();
    let first = records("a", 100);
    engine.write("a-writer", "default", first.clone()).await.unwrap();

    // Customer B's links, with B's credentials but A's prefix, subject and stream name (what a
    // hand-written manifest could try; `sluice render` refuses such a spec): they come up in B's
    // own account, where A's stream does not exist.
    let b_step = FakeComponent::serve(&lattice, LATTICE, "b-step").await.unwrap();
    put_source(&engine, &lattice, spec("b-step", &url, b_secrets()))
        .await
        .unwrap();
    engine.put_sink_link(spec("b-writer", &url, b_secrets())).await.unwrap();
    let from_b = records("b", 30);
    engine.write("b-writer", "default", from_b.clone()).await.unwrap();
    let second = records("a2", 100);
    engine.write("a-writer", "default", second.clone()).await.unwrap();

    assert!(
        a_step
            .wait_for(Duration::from_secs(20), |c| c.accepted_count() >= 200)
            .await,
        "customer A's step got {} of 200",
        a_step.accepted_count()
    );
    assert!(
        b_step
            .wait_for(Duration::from_secs(20), |c| c.accepted_count() >= 30)
            .await,
        "customer B's step got {} of its own 30",
        b_step.accepted_count()
    );
    // Time for anything of A's to leak into B's link, were it reachable.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a_got = payloads(&a_step.accepted());
    let b_got = payloads(&b_step.accepted());
    let want_a: Vec<String> = first.iter().chain(&second).map(text).collect();
    let want_b: Vec<String> = from_b.iter().map(text).collect();
    assert_eq!(sorted(&a_got), sorted(&want_a), "A reads exactly A's records");
    assert_eq!(sorted(&b_got), sorted(&want_b), "B never reads one of A's records");

    // Each account sees its own stream of that name, with its own records only.
    assert_eq!(streams_seen(&as_a).await, [(A_STREAM.to_string(), 200)]);
    assert_eq!(streams_seen(&as_b).await, [(A_STREAM.to_string(), 30)]);

    // B's user with A's password, or A's user with B's password: refused, naming the link, never
    // showing the secret.
    for (component, user, password) in [
        ("b-step-guess", "customer-b-hops", "a-hops-password"),
        ("b-step-as-a", "customer-a-hops", "b-hops-password"),
    ] {
        let err = put_source(&engine, &lattice, spec(component, &url, credentials(user, password)))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(component) && err.contains("authentication"), "{err}");
        assert!(!err.contains(password), "the secret is not shown: {err}");
        let status = engine.status();
        assert!(status.refusal(component).is_some(), "{status:?}");
    }
    let err = engine
        .put_sink_link(spec(
            "b-writer-as-a",
            &url,
            credentials("customer-a-hops", "b-hops-password"),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("b-writer-as-a") && err.contains("authentication"), "{err}");
    assert_eq!(streams_seen(&as_a).await, [(A_STREAM.to_string(), 200)]);
    eprintln!(
        "accounts: A read {} of A's 200, B read {} (its own 30, 0 of A's); B's stream of the same name holds 30, A's 200",
        a_got.len(),
        b_got.len()
    );
}

fn text(m: &Message) -> String {
    String::from_utf8(m.payload.to_vec()).unwrap()
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}
