//! provider-mqtt against a real Mosquitto, started as a wasmCloud host starts a provider.

use std::collections::HashSet;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_integration::component::{payloads, FakeComponent, Reply};
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::servers::{Mosquitto, NatsServer};
use sluice_provider_core::Message;

const PROVIDER: &str = "sluice-provider-mqtt";
const BINARY: &str = env!("CARGO_BIN_EXE_sluice-provider-mqtt");

/// Publishes `lines` with the plain `mosquitto_pub` client.
fn publish(port: u16, topic: &str, qos: u8, version: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            &qos.to_string(),
        ])
        .args(["-V", version, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

/// Starts the plain `mosquitto_sub` client for `count` messages of `topic` (`topic payload` lines).
fn subscribe(port: u16, topic: &str, count: usize) -> std::process::Child {
    let child = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic, "-q", "2", "-v"])
        .args(["-C", &count.to_string(), "-W", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs");
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

struct Setup {
    _nats: NatsServer,
    client: async_nats::Client,
    mqtt: Mosquitto,
    provider: HostedProvider,
}

async fn setup() -> Setup {
    sluice_integration::init_tracing();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    Setup {
        _nats: nats,
        client,
        mqtt,
        provider,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_exactly_for_v5_and_311_at_every_qos() {
    let mut s = setup().await;
    let url = s.mqtt.url();
    for (protocol, version) in [("5", "mqttv5"), ("3.1.1", "mqttv311")] {
        for qos in 0..=2u8 {
            let id = format!("step-v{}-q{qos}", protocol.replace('.', ""));
            let step = FakeComponent::serve(&s.client, "default", &id).await.unwrap();
            let filter = format!("plant/{id}/#");
            let config = [
                ("url", url.as_str()),
                ("topics", filter.as_str()),
                ("qos", &qos.to_string()),
                ("protocol", protocol),
                ("linger", "5ms"),
            ];
            s.provider
                .put_link(Link::source(PROVIDER, &id, "default", &config))
                .await
                .unwrap();
            let topic = format!("plant/{id}/line1");
            let sent = lines(&id, 50);
            publish(s.mqtt.port, &topic, qos, version, &sent);
            assert!(
                step.wait_for(Duration::from_secs(20), |c| c.accepted().len() >= 50)
                    .await,
                "{id}: got {}",
                step.accepted().len()
            );
            let accepted = step.accepted();
            assert_eq!(payloads(&accepted), sent, "{id}: exactly the records, in order");
            let m: &Message = &accepted[0];
            assert_eq!(m.key.as_deref(), Some(topic.as_bytes()));
            assert!(
                m.origin
                    .starts_with(&format!("mqtt:127.0.0.1:{}/{topic}#", s.mqtt.port)),
                "{}",
                m.origin
            );
            let qos_header = m.headers.iter().find(|(k, _)| k == "mqtt.qos").map(|(_, v)| v.clone());
            assert_eq!(qos_header.as_deref(), Some(qos.to_string().as_bytes()));
        }
    }
    let status = s.provider.status().await.unwrap();
    assert!(status.refused.is_empty(), "{status:?}");
    assert!(status.links.iter().all(|l| l.metrics.acked == 50), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_streaming_loses_nothing() {
    let mut s = setup().await;
    let step = FakeComponent::serve(&s.client, "default", "step-k").await.unwrap();
    step.behave(|_| Reply::AcceptAfter(Duration::from_millis(2)));
    let url = s.mqtt.url();
    let link = Link::source(
        PROVIDER,
        "step-k",
        "default",
        &[("url", &url), ("topics", "k/#"), ("qos", "1")],
    );
    s.provider.put_link(link).await.unwrap();
    let total = 10_000;
    let port = s.mqtt.port;
    let publisher = std::thread::spawn(move || publish(port, "k/stream", 1, "mqttv5", &lines("k", total)));
    assert!(
        step.wait_for(Duration::from_secs(60), |c| c.accepted().len() >= 3_000)
            .await
    );
    s.provider.kill().await.unwrap();
    s.provider.restart().await.unwrap();
    publisher.join().unwrap();
    let distinct = |c: &FakeComponent| payloads(&c.accepted()).into_iter().collect::<HashSet<_>>().len();
    assert!(
        step.wait_for(Duration::from_secs(120), |c| distinct(c) == total).await,
        "lost {} records",
        total - distinct(&step)
    );
    let duplicates = step.accepted().len() - total;
    eprintln!("mqtt kill -9 during {total} QoS 1 records: 0 lost, {duplicates} delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_qos1_record() {
    let mut s = setup().await;
    let step = FakeComponent::serve(&s.client, "default", "step-r").await.unwrap();
    step.behave(|_| Reply::AcceptAfter(Duration::from_millis(5)));
    let url = s.mqtt.url();
    let link = Link::source(
        PROVIDER,
        "step-r",
        "default",
        &[("url", &url), ("topics", "r/#"), ("qos", "1")],
    );
    s.provider.put_link(link).await.unwrap();
    publish(s.mqtt.port, "r/a", 1, "mqttv5", &lines("before", 2_000));
    assert!(
        step.wait_for(Duration::from_secs(30), |c| c.accepted().len() >= 300)
            .await
    );
    s.mqtt.restart().unwrap();
    publish(s.mqtt.port, "r/a", 1, "mqttv5", &lines("after", 500));
    let distinct = |c: &FakeComponent| payloads(&c.accepted()).into_iter().collect::<HashSet<_>>().len();
    assert!(
        step.wait_for(Duration::from_secs(90), |c| distinct(c) == 2_500).await,
        "lost {} records",
        2_500 - distinct(&step)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_land_on_the_dead_letter_topic() {
    let mut s = setup().await;
    let step = FakeComponent::serve(&s.client, "default", "step-d").await.unwrap();
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
    let url = s.mqtt.url();
    let config = [
        ("url", url.as_str()),
        ("topics", "d/#"),
        ("dead_letter_topic", "dlq/step-d"),
    ];
    s.provider
        .put_link(Link::source(PROVIDER, "step-d", "default", &config))
        .await
        .unwrap();
    let dlq = subscribe(s.mqtt.port, "dlq/#", 5);
    let sent: Vec<String> = (0..20)
        .map(|i| {
            if i % 4 == 0 {
                format!("bad-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    publish(s.mqtt.port, "d/x", 1, "mqttv5", &sent);
    let out = dlq.wait_with_output().unwrap();
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    let want: String = (0..20).step_by(4).map(|i| format!("dlq/step-d bad-{i}\n")).collect();
    assert_eq!(got, want);
    assert!(
        step.wait_for(Duration::from_secs(10), |c| c.accepted().len() == 15)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_writes_are_read_back_at_qos_1_and_2() {
    let mut s = setup().await;
    let url = s.mqtt.url();
    for qos in ["1", "2"] {
        let id = format!("writer-{qos}");
        let topic = format!("out/{qos}/{{key}}");
        let config = [("url", url.as_str()), ("topic", topic.as_str()), ("qos", qos)];
        s.provider
            .put_link(Link::sink(&id, PROVIDER, "default", &config))
            .await
            .unwrap();
        let step = FakeComponent::serve(&s.client, "default", &id).await.unwrap();
        let reader = subscribe(s.mqtt.port, &format!("out/{qos}/#"), 30);
        let batch: Vec<Message> = (0..30)
            .map(|i| {
                let mut m = Message::new(format!("v{i}").into_bytes(), "test");
                m.key = Some(format!("m{}", i % 3).into_bytes().into());
                m
            })
            .collect();
        step.write(PROVIDER, "default", &batch).await.unwrap().unwrap();
        let out = reader.wait_with_output().unwrap();
        let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let want: Vec<String> = (0..30).map(|i| format!("out/{qos}/m{} v{i}", i % 3)).collect();
        assert_eq!(got, want, "qos {qos}");
    }
    // A record whose topic cannot be made is rejected by index; the rest is written.
    let step = FakeComponent::serve(&s.client, "default", "writer-1").await.unwrap();
    let batch = vec![Message::new(b"no key".to_vec(), "test")];
    match step.write(PROVIDER, "default", &batch).await.unwrap() {
        Err(sluice_provider_core::Failure::Reject(r)) => assert!(r[0].reason.contains("{key}"), "{r:?}"),
        other => panic!("expected a reject, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_values_never_add_topic_levels_or_wildcards() {
    let mut s = setup().await;
    let url = s.mqtt.url();
    let config = [("url", url.as_str()), ("topic", "keys/{header:site}/{key}")];
    s.provider
        .put_link(Link::sink("writer-keys", PROVIDER, "default", &config))
        .await
        .unwrap();
    let step = FakeComponent::serve(&s.client, "default", "writer-keys").await.unwrap();
    let reader = subscribe(s.mqtt.port, "keys/#", 3);
    let record = |i: usize, site: &str, key: &str| {
        let mut m = Message::new(format!("v{i}").into_bytes(), "test");
        m.key = Some(key.as_bytes().to_vec().into());
        m.headers = vec![("site".into(), site.as_bytes().to_vec().into())];
        m
    };
    let cases = [
        ("n", "ok"),
        ("n", "a/b"),
        ("n", "+"),
        ("n", "#"),
        ("n/x", "ok"),
        ("#", "ok"),
        ("n", "x\0y"),
        ("s", "ok2"),
    ];
    let batch: Vec<Message> = cases
        .iter()
        .enumerate()
        .map(|(i, (site, key))| record(i, site, key))
        .collect();
    match step.write(PROVIDER, "default", &batch).await.unwrap() {
        Err(sluice_provider_core::Failure::Reject(rejected)) => {
            let indices: Vec<u32> = rejected.iter().map(|r| r.index).collect();
            assert_eq!(indices, [1, 2, 3, 4, 5, 6], "{rejected:?}");
            for r in &rejected {
                let named = if matches!(r.index, 4 | 5) {
                    "header `site`"
                } else {
                    "the record key"
                };
                assert!(r.reason.contains(named), "{}", r.reason);
            }
        }
        other => panic!("expected rejects, got {other:?}"),
    }
    // The last message: whatever else reached `keys/#` would arrive before it.
    step.write(PROVIDER, "default", &[record(8, "end", "end")])
        .await
        .unwrap()
        .unwrap();
    let out = reader.wait_with_output().unwrap();
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, ["keys/n/ok v0", "keys/s/ok2 v7", "keys/end/end v8"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_passwords_work_and_bad_links_are_refused_by_name() {
    let mut s = setup().await;
    let step = FakeComponent::serve(&s.client, "default", "step-tls").await.unwrap();
    let tls_url = format!("mqtts://localhost:{}", s.mqtt.tls_port);
    let ca = s.mqtt.ca_pem();
    let good = Link::source(
        PROVIDER,
        "step-tls",
        "default",
        &[
            ("url", &tls_url),
            ("topics", "secure/#"),
            ("tls_ca", &ca),
            ("username", Mosquitto::USER),
        ],
    )
    .with_secret(PROVIDER, "password", Mosquitto::PASSWORD);
    s.provider.put_link(good).await.unwrap();

    let auth_url = format!("mqtt://127.0.0.1:{}", s.mqtt.auth_port);
    let wrong = Link::source(
        PROVIDER,
        "step-wrong",
        "default",
        &[
            ("url", &auth_url),
            ("topics", "secure/#"),
            ("username", Mosquitto::USER),
        ],
    )
    .with_secret(PROVIDER, "password", "not-the-password");
    s.provider.put_link(wrong).await.unwrap();
    for (id, key, config) in [
        (
            "step-qos",
            "qos",
            vec![("url", s.mqtt.url()), ("topics", "a".into()), ("qos", "3".into())],
        ),
        (
            "step-topics",
            "topics",
            vec![("url", s.mqtt.url()), ("topics", "".into())],
        ),
        // A key the provider does not know (its schema): refused before anything is opened.
        (
            "step-typo",
            "tpoics",
            vec![("url", s.mqtt.url()), ("topics", "a".into()), ("tpoics", "b".into())],
        ),
    ] {
        let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.provider
            .put_link(Link::source(PROVIDER, id, "default", &config))
            .await
            .unwrap();
        let status = s.provider.status().await.unwrap();
        let refused = status.refusal(id).expect("refused");
        assert!(
            refused.contains(&format!("`{key}`")) && refused.contains(id),
            "{refused}"
        );
    }
    let status = s.provider.status().await.unwrap();
    let wrong = status.refusal("step-wrong").expect("wrong password refused");
    assert!(
        wrong.contains("step-wrong") && wrong.contains("cannot connect"),
        "{wrong}"
    );
    assert_eq!(status.links.len(), 1, "only the TLS link runs: {status:?}");

    // The TLS link delivers (published over TLS with the password by the plain client).
    let mut pub_tls = Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &s.mqtt.tls_port.to_string(),
            "-t",
            "secure/x",
            "-q",
            "1",
        ])
        .args(["-u", Mosquitto::USER, "-P", Mosquitto::PASSWORD, "--cafile"])
        .arg(s.mqtt.process().dir().join("ca.pem"))
        .args(["-m", "over-tls"])
        .spawn()
        .unwrap();
    assert!(pub_tls.wait().unwrap().success());
    assert!(
        step.wait_for(Duration::from_secs(10), |c| c.accepted().len() == 1)
            .await
    );
    assert_eq!(payloads(&step.accepted()), vec!["over-tls".to_string()]);
    assert!(
        !s.provider.logs().contains(Mosquitto::PASSWORD),
        "a password reached the log"
    );
}
