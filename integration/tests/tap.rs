//! Taps on a hosted provider (`sluice-test-provider`, started as a wasmCloud 1.x host starts it)
//! over a real nats-server: the records a source link delivers and a sink link is given, sampled
//! and bounded, sent to the tap's inbox with origin and payload; nothing is sent without a tap or
//! after it ended; a sensitive link refuses.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use sluice_integration::component::{records, FakeComponent};
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::servers::NatsServer;
use sluice_provider_core::link::Role;
use sluice_provider_core::tap::{TapEvent, TapRecord, TapRequest};
use sluice_provider_core::wasmcloud::tap_subject;

const PROVIDER: &str = "sluice-test-provider";
const BINARY: &str = env!("CARGO_BIN_EXE_sluice-test-provider");
const WITHIN: Duration = Duration::from_secs(20);

fn write_lines(path: &Path, range: std::ops::Range<usize>) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in range {
        writeln!(file, "line-{i}").unwrap();
    }
}

/// Sends `request` with reply inbox `inbox` (already subscribed by `events`).
async fn ask(client: &async_nats::Client, inbox: &str, request: &TapRequest) {
    client
        .publish_with_reply(
            tap_subject("default", PROVIDER),
            inbox.to_string(),
            serde_json::to_vec(request).unwrap().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
}

async fn next_event(events: &mut async_nats::Subscriber) -> TapEvent {
    let message = tokio::time::timeout(WITHIN, events.next())
        .await
        .expect("an event on the tap inbox")
        .unwrap();
    serde_json::from_slice(&message.payload).unwrap()
}

/// Reads an open tap to its end: its records and its end (records, reason).
async fn read_tap(events: &mut async_nats::Subscriber) -> (Vec<TapRecord>, usize, String) {
    let mut got = Vec::new();
    loop {
        match next_event(events).await {
            TapEvent::Record(record) => got.push(record),
            TapEvent::Ended { records, reason } => return (got, records, reason),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Nothing arrives on `events` for a while.
async fn quiet(events: &mut async_nats::Subscriber) -> bool {
    tokio::time::timeout(Duration::from_millis(500), events.next())
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_send_sampled_records_end_after_n_and_refuse_sensitive_links() {
    sluice_integration::init_tracing();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "step-a").await.unwrap();
    let secret_step = FakeComponent::serve(&client, "default", "step-s").await.unwrap();
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    let dir = provider.dir().to_path_buf();
    let input = dir.join("input.txt");
    write_lines(&input, 0..10);
    provider
        .put_link(Link::source(
            PROVIDER,
            "step-a",
            "default",
            &[
                ("input", input.to_str().unwrap()),
                ("checkpoint", dir.join("a.checkpoint").to_str().unwrap()),
                ("linger", "5ms"),
            ],
        ))
        .await
        .unwrap();
    let output = dir.join("a.out");
    for (component, extra) in [("step-a", None), ("step-s", Some(("sensitive", "true")))] {
        let mut config = vec![("output", output.to_str().unwrap())];
        config.extend(extra);
        provider
            .put_link(Link::sink(component, PROVIDER, "default", &config))
            .await
            .unwrap();
    }
    assert!(step.wait_for(WITHIN, |c| c.accepted().len() == 10).await);

    let inbox = client.new_inbox();
    let mut events = client.subscribe(inbox.clone()).await.unwrap();
    // No tap: records flow, nothing reaches the inbox.
    write_lines(&input, 10..20);
    step.write(PROVIDER, "default", &records("quiet", 3))
        .await
        .unwrap()
        .unwrap();
    assert!(step.wait_for(WITHIN, |c| c.accepted().len() == 20).await);
    assert!(quiet(&mut events).await, "something was sent without a tap");

    // A source tap: 5 records of a burst of 100, as delivered, then it ends by itself.
    ask(
        &client,
        &inbox,
        &TapRequest::new(Role::Source, Some("step-a".into()), 5),
    )
    .await;
    match next_event(&mut events).await {
        TapEvent::Started { links } => assert_eq!(links, ["link `default` of component `step-a`"]),
        other => panic!("expected the tap to start, got {other:?}"),
    }
    write_lines(&input, 20..120);
    let (got, records_sent, reason) = read_tap(&mut events).await;
    assert_eq!((got.len(), records_sent, reason.as_str()), (5, 5, "5 records"));
    for record in &got {
        assert_eq!((record.at, record.component.as_str()), (Role::Source, "step-a"));
        let line: usize = record.payload.strip_prefix("line-").unwrap().parse().unwrap();
        assert!((20..120).contains(&line), "{record:?}");
        assert_eq!(record.origin, format!("file:{}#{line}", input.display()));
        assert_eq!(record.payload_bytes, record.payload.len());
        assert!(!record.truncated);
    }
    assert!(step.wait_for(WITHIN, |c| c.accepted().len() == 120).await);
    // Ended: later records are not sent.
    write_lines(&input, 120..130);
    assert!(step.wait_for(WITHIN, |c| c.accepted().len() == 130).await);
    assert!(quiet(&mut events).await, "records were sent after the tap ended");

    // A sink tap: records as the step wrote them, previews cut at `preview_bytes`.
    let mut request = TapRequest::new(Role::Sink, Some("step-a".into()), 3);
    request.preview_bytes = 4;
    ask(&client, &inbox, &request).await;
    assert!(matches!(next_event(&mut events).await, TapEvent::Started { .. }));
    step.write(PROVIDER, "default", &records("written", 3))
        .await
        .unwrap()
        .unwrap();
    let (got, sent, reason) = read_tap(&mut events).await;
    assert_eq!((sent, reason.as_str()), (3, "3 records"));
    let shown: Vec<(&str, &str, bool)> = got
        .iter()
        .map(|r| (r.origin.as_str(), r.payload.as_str(), r.truncated))
        .collect();
    assert_eq!(
        shown,
        [
            ("test:written@0", "writ", true),
            ("test:written@1", "writ", true),
            ("test:written@2", "writ", true)
        ]
    );

    // The sensitive link refuses, naming it; nothing of its writes is sent.
    ask(&client, &inbox, &TapRequest::new(Role::Sink, Some("step-s".into()), 3)).await;
    match next_event(&mut events).await {
        TapEvent::Refused { error } => {
            assert!(
                error.contains("component `step-s`") && error.contains("sensitive"),
                "{error}"
            );
        }
        other => panic!("a sensitive link was tapped: {other:?}"),
    }
    secret_step
        .write(PROVIDER, "default", &records("secret", 2))
        .await
        .unwrap()
        .unwrap();
    assert!(quiet(&mut events).await);
    // A tap of every sink link covers the sensitive one too: refused.
    ask(&client, &inbox, &TapRequest::new(Role::Sink, None, 3)).await;
    assert!(matches!(next_event(&mut events).await, TapEvent::Refused { .. }));
    // A malformed request is refused with the reason.
    client
        .publish_with_reply(tap_subject("default", PROVIDER), inbox.clone(), "{}".into())
        .await
        .unwrap();
    match next_event(&mut events).await {
        TapEvent::Refused { error } => assert!(error.contains("bad tap request") && error.contains("at"), "{error}"),
        other => panic!("{other:?}"),
    }

    let exit = provider.terminate().await.unwrap();
    assert!(exit.success(), "SIGTERM exits cleanly: {exit}");
}
