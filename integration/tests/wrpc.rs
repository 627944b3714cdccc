//! Sluice's wRPC-over-NATS transport against a real nats-server: many concurrent calls on one
//! client all answered (the reply race of `wrpc-transport-nats` 0.29 lost some of these), and
//! parameters and results larger than one NATS message arriving whole.

use std::sync::Arc;
use std::time::Duration;

use sluice_integration::component::{FakeComponent, Reply};
use sluice_integration::servers::NatsServer;
use sluice_provider_core::bindings::sluice::pipeline::ingest;
use sluice_provider_core::wire::to_wire;
use sluice_provider_core::wrpc::nats;
use sluice_provider_core::{Failure, Message};

const LATTICE: &str = "default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_client_are_all_answered() {
    sluice_integration::init_tracing();
    let server = NatsServer::start().expect("nats-server starts");
    let component = FakeComponent::serve(&server.connect().await.unwrap(), LATTICE, "step")
        .await
        .unwrap();
    component.keep_records(false);
    let client = nats::Client::new(server.connect().await.unwrap(), format!("{LATTICE}.step"), None)
        .await
        .unwrap();

    const TASKS: usize = 64;
    const CALLS: usize = 100;
    let client = Arc::new(client);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let client = Arc::clone(&client);
        tasks.spawn(async move {
            let mut unanswered = 0;
            for c in 0..CALLS {
                let batch = to_wire(&[Message::new(vec![b'x'; 512], format!("test:{t}@{c}"))]);
                let call = ingest::deliver(&*client, None, &batch);
                match tokio::time::timeout(Duration::from_secs(10), call).await {
                    Ok(answer) => assert_eq!(answer.expect("transport"), Ok(())),
                    Err(_) => unanswered += 1,
                }
            }
            unanswered
        });
    }
    let mut unanswered = 0;
    while let Some(task) = tasks.join_next().await {
        unanswered += task.unwrap();
    }
    assert_eq!(unanswered, 0, "calls left unanswered");
    assert_eq!(component.accepted_count(), TASKS * CALLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_and_results_larger_than_one_message_arrive_whole() {
    sluice_integration::init_tracing();
    let server = NatsServer::start().expect("nats-server starts");
    let nats_client = server.connect().await.unwrap();
    let max_payload = nats_client.server_info().max_payload;
    let component = FakeComponent::serve(&nats_client, LATTICE, "step").await.unwrap();
    let client = nats::Client::new(nats_client, format!("{LATTICE}.step"), None)
        .await
        .unwrap();

    // Three records of 1.5 max_payload each: the parameters span several messages.
    let batch: Vec<Message> = (0..3u8)
        .map(|i| Message::new(vec![i; max_payload * 3 / 2], format!("test:big@{i}")))
        .collect();
    assert_eq!(ingest::deliver(&client, None, &to_wire(&batch)).await.unwrap(), Ok(()));
    assert_eq!(component.accepted(), batch);

    // A rejection reason of 2 max_payload: the results span several messages.
    let reason = "r".repeat(max_payload * 2);
    component.behave({
        let reason = reason.clone();
        move |_| Reply::Reject(vec![(1, reason.clone())])
    });
    match ingest::deliver(&client, None, &to_wire(&batch)).await.unwrap() {
        Err(Failure::Reject(rejected)) => {
            assert_eq!(rejected.len(), 1);
            assert_eq!(rejected[0].index, 1);
            assert!(rejected[0].reason == reason, "the long reason arrived changed");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_call_nobody_serves_fails_at_once() {
    sluice_integration::init_tracing();
    let server = NatsServer::start().expect("nats-server starts");
    let client = nats::Client::new(server.connect().await.unwrap(), format!("{LATTICE}.nobody"), None)
        .await
        .unwrap();
    let batch = [Message::new(b"x".to_vec(), "test:x@0")];
    let answer = tokio::time::timeout(Duration::from_secs(5), ingest::deliver(&client, None, &to_wire(&batch)))
        .await
        .expect("answered before the deadline");
    let err = answer.expect_err("no responders is an error");
    assert!(format!("{err:#}").contains("no one serves"), "{err:#}");
}

/// A wasmCloud 1.x host calls a provider's `sink.write` with `wrpc-transport-nats` 0.29, which
/// may drop the server's handshake answer when it arrives before the call's subscription is
/// registered; the host then waits for it until the component's execution deadline. A server
/// repeats its handshake until the caller sends on its parameter subject, so a dropped one is
/// followed by another.
#[tokio::test]
async fn a_server_repeats_its_handshake_until_the_caller_is_heard() {
    use futures::StreamExt as _;
    sluice_integration::init_tracing();
    let server = NatsServer::start().expect("nats-server starts");
    let raw = server.connect().await.unwrap();
    let component = FakeComponent::serve(&raw, LATTICE, "step").await.unwrap();

    // The encoded parameters of a real call, captured on a subject nobody else serves.
    let batch = vec![Message::new(b"one".to_vec(), "test:x@0")];
    let instance = "sluice:pipeline/ingest@0.1.0";
    let mut capture = raw
        .subscribe(nats::invocation_subject(
            &format!("{LATTICE}.capture"),
            instance,
            "deliver",
        ))
        .await
        .unwrap();
    let caller = nats::Client::new(server.connect().await.unwrap(), format!("{LATTICE}.capture"), None)
        .await
        .unwrap();
    let call = tokio::spawn({
        let batch = batch.clone();
        async move { ingest::deliver(&caller, None, &to_wire(&batch)).await }
    });
    let params = capture.next().await.expect("the invocation is published").payload;
    call.abort();

    // A caller that loses the first handshake: it sends nothing until it sees a second one.
    let reply = raw.new_inbox();
    let mut handshakes = raw.subscribe(reply.clone()).await.unwrap();
    let mut results = raw.subscribe(format!("{reply}.results")).await.unwrap();
    raw.publish_with_reply(
        nats::invocation_subject(&format!("{LATTICE}.step"), instance, "deliver"),
        reply,
        params,
    )
    .await
    .unwrap();
    let first = handshakes
        .next()
        .await
        .expect("a handshake")
        .reply
        .expect("with the server's subject");
    let again = tokio::time::timeout(Duration::from_secs(2), handshakes.next())
        .await
        .expect("the handshake is repeated while the caller is silent")
        .expect("a handshake");
    assert_eq!(
        again.reply.as_ref(),
        Some(&first),
        "the repeat names the same server subject"
    );
    raw.publish(format!("{first}.params"), bytes::Bytes::new())
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), results.next())
        .await
        .expect("results arrive")
        .expect("a result message");
    assert!(!answer.payload.is_empty(), "the results carry the outcome");
    assert_eq!(component.accepted(), batch);

    // Heard: no more repeats.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), handshakes.next()).await {}
    let late = tokio::time::timeout(Duration::from_millis(1500), handshakes.next()).await;
    assert!(
        late.is_err(),
        "the handshake is still repeated after the caller was heard"
    );
}
