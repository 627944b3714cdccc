//! The HTTP ingress provider binary started as a wasmCloud 1.x host starts it, on a real
//! nats-server, with fake step components over wRPC and real HTTP clients (reqwest, raw TCP).

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::StatusCode;
use sluice_integration::component::{payloads, FakeComponent, Reply};
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::servers::{free_port, NatsServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const PROVIDER: &str = "http-ingress";
const BINARY: &str = env!("CARGO_BIN_EXE_sluice-provider-http-inproc");

struct Ingress {
    _nats: NatsServer,
    lattice: async_nats::Client,
    provider: HostedProvider,
    port: u16,
    /// The `metrics_address` listener's port.
    metrics_port: u16,
    http: reqwest::Client,
}

impl Ingress {
    async fn start(extra: &[(&str, &str)]) -> Self {
        sluice_integration::init_tracing();
        let nats = NatsServer::start().unwrap();
        let lattice = nats.connect().await.unwrap();
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let metrics_port = free_port();
        let metrics_address = format!("127.0.0.1:{metrics_port}");
        let mut config = vec![
            ("address", address.as_str()),
            ("metrics_address", metrics_address.as_str()),
        ];
        config.extend_from_slice(extra);
        let provider = HostedProvider::start(&nats, BINARY, PROVIDER, &config).await.unwrap();
        Self {
            _nats: nats,
            lattice,
            provider,
            port,
            metrics_port,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn step(&self, id: &str) -> FakeComponent {
        FakeComponent::serve(&self.lattice, "default", id).await.unwrap()
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, String) {
        let response = self.http.post(self.url(path)).body(body).send().await.unwrap();
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    /// `/metrics` from the `metrics_address` listener.
    async fn metrics(&self) -> String {
        self.http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn route(component: &str, config: &[(&str, &str)]) -> Link {
    Link::source(PROVIDER, component, "default", config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_links_share_one_listener_and_routing_is_deterministic() {
    let mut ingress = Ingress::start(&[]).await;
    let pid = ingress.provider.pid();
    let mut steps = Vec::new();
    for i in 0..1000 {
        steps.push(ingress.step(&format!("step-{i:04}")).await);
    }
    // 997 disjoint routes and three nested ones: `/o`, `/o/deep`, `/o/deep/er`, each declared by
    // the route it lies under.
    let paths: Vec<(String, &str)> = (0..997)
        .map(|i| (format!("/t/{i}"), ""))
        .chain([
            ("/o".into(), "/o/deep"),
            ("/o/deep".into(), "/o/deep/er"),
            ("/o/deep/er".into(), ""),
        ])
        .collect();
    let links: Vec<Link> = paths
        .iter()
        .enumerate()
        .map(|(i, (path, nested))| {
            route(
                &format!("step-{i:04}"),
                &[("path", path), ("max_in_flight", "2"), ("nested_routes", nested)],
            )
        })
        .collect();
    let started = std::time::Instant::now();
    ingress.provider.put_links(links.clone()).await.unwrap();
    let status = ingress.provider.status().await.unwrap();
    assert_eq!(status.links.len(), 1000, "refused: {:?}", status.refused);
    eprintln!(
        "1000 links put in {:?}; provider RSS {} KiB",
        started.elapsed(),
        ingress.provider.rss_kib().unwrap()
    );

    // Every disjoint route reaches its own component and no other.
    let sent = futures::stream::iter(0..997)
        .map(|i| {
            let ingress = &ingress;
            async move { ingress.post(&format!("/t/{i}/x"), format!("r{i}")).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    assert!(sent.iter().all(|(s, _)| *s == StatusCode::OK), "{sent:?}");
    // Exactly once here: no call is lost or retried on provider-core's wRPC transport.
    for (i, step) in steps.iter().enumerate().take(997) {
        let accepted = step.accepted();
        assert_eq!(accepted.len(), 1, "{} got {} deliveries", step.id, accepted.len());
        for m in &accepted {
            assert_eq!(payloads(std::slice::from_ref(m)), [format!("r{i}")], "{}", step.id);
            assert_eq!(m.key.as_deref(), Some(format!("/t/{i}/x").as_bytes()));
            assert!(m.origin.starts_with(&format!("http:/t/{i}#")), "{}", m.origin);
        }
        assert!(step.callers().iter().all(|c| c.as_deref() == Some(PROVIDER)));
    }

    // Overlapping prefixes: the longest matching one, on segment boundaries, every time.
    let cases = [
        ("/o", "step-0997"),
        ("/o/a", "step-0997"),
        ("/o/deeper", "step-0997"),
        ("/o/deep", "step-0998"),
        ("/o/deep/", "step-0998"),
        ("/o/deep/x/y", "step-0998"),
        ("/o/deep/er", "step-0999"),
        ("/o/deep/er/z", "step-0999"),
    ];
    for round in 0..25 {
        for (path, _) in cases {
            let (status, _) = ingress.post(path, format!("{path}@{round}")).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
    }
    for (path, owner) in cases {
        for step in &steps[997..] {
            let got: std::collections::BTreeSet<String> = payloads(&step.accepted())
                .into_iter()
                .filter(|p| p.strip_prefix(path).is_some_and(|rest| rest.starts_with('@')))
                .collect();
            let expected = if step.id == owner { 25 } else { 0 };
            assert_eq!(got.len(), expected, "{path} at {}: {got:?}", step.id);
        }
    }
    let (status, _) = ingress.post("/elsewhere", "x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A link whose route collides is refused, naming both links; the first keeps serving.
    let intruder = ingress.step("intruder").await;
    let colliding = route("intruder", &[("path", "/o/deep/"), ("nested_routes", "/o/deep/er")]);
    ingress.provider.put_link(colliding.clone()).await.unwrap();
    let status = ingress.provider.status().await.unwrap();
    let refused = status.refusal("intruder").expect("the colliding link is refused");
    assert!(
        refused.contains("component `intruder`") && refused.contains("component `step-0998`"),
        "{refused}"
    );
    let health = ingress.provider.health().await.unwrap();
    assert!(
        health["message"].as_str().unwrap_or_default().contains("step-0998"),
        "{health}"
    );
    assert_eq!(ingress.post("/o/deep/x", "still").await.0, StatusCode::OK);
    assert_eq!(payloads(&steps[998].accepted()).last().unwrap(), "still");
    assert!(steps[997..]
        .iter()
        .all(|s| s.id == "step-0998" || !payloads(&s.accepted()).contains(&"still".to_string())));
    assert!(intruder.accepted().is_empty());

    // Routes come and go with links, on the same listener.
    ingress.provider.delete_link(&links[998]).await.unwrap();
    assert_eq!(ingress.post("/o/deep/x", "to-o").await.0, StatusCode::OK);
    assert_eq!(payloads(&steps[997].accepted()).last().unwrap(), "to-o");
    ingress.provider.delete_link(&colliding).await.unwrap();
    ingress.provider.put_link(colliding).await.unwrap();
    assert!(ingress.provider.status().await.unwrap().refused.is_empty());
    assert_eq!(ingress.post("/o/deep/x", "to-intruder").await.0, StatusCode::OK);
    assert!(payloads(&intruder.accepted()).iter().all(|p| p == "to-intruder"));
    assert!(!intruder.accepted().is_empty());
    assert_eq!(ingress.provider.pid(), pid, "the provider never restarted");
    let metrics = ingress.metrics().await;
    assert!(
        metrics.contains("sluice_http_requests_total{route=\"/t/5\",host=\"\",methods=\"POST,PUT\",component=\"step-0005\",link=\"default\",code=\"200\"} 1"),
        "{}",
        &metrics[..2000.min(metrics.len())]
    );
}

/// Sends raw bytes and returns what the server answered before closing (or `within` passed).
async fn raw_exchange(port: u16, request: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// POSTs `body` to `path` exactly as written (no client-side URL normalization) over HTTP/1.1;
/// returns the status code and the response body.
async fn post_raw(port: u16, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(port, request.as_bytes(), Duration::from_secs(10)).await;
    let status = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer for {path}: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_path_reaches_its_own_route_never_a_catch_all() {
    let mut ingress = Ingress::start(&[]).await;
    let tenant_a = ingress.step("tenant-a").await;
    let tenant_b = ingress.step("tenant-b").await;
    let catch_all = ingress.step("catch-all").await;
    ingress
        .provider
        .put_links(vec![
            route("tenant-a", &[("path", "/a")]),
            route("tenant-b", &[("path", "/b")]),
            route("catch-all", &[("path", "/"), ("nested_routes", "*")]),
        ])
        .await
        .unwrap();
    assert!(ingress.provider.status().await.unwrap().refused.is_empty());

    // Spellings of one path reach the route that owns it, keyed by the normal form.
    let reach = [
        ("//b/x", "tenant-b", "/b/x"),
        ("/b//x", "tenant-b", "/b/x"),
        ("/b/./x", "tenant-b", "/b/x"),
        ("/x/../b/x", "tenant-b", "/b/x"),
        ("/b/../a", "tenant-a", "/a"),
        ("/%62/x", "tenant-b", "/b/x"),
        ("/B/x", "tenant-b", "/B/x"),
        ("/A", "tenant-a", "/A"),
        ("/c", "catch-all", "/c"),
    ];
    for (i, (path, owner, key)) in reach.iter().enumerate() {
        let body = format!("spelling-{i}");
        assert_eq!(post_raw(ingress.port, path, &body).await.0, 200, "{path}");
        for step in [&tenant_a, &tenant_b, &catch_all] {
            let got: Vec<_> = step
                .accepted()
                .into_iter()
                .filter(|m| m.payload.as_ref() == body.as_bytes())
                .collect();
            if step.id == *owner {
                assert_eq!(got.len(), 1, "{path} at {}", step.id);
                assert_eq!(got[0].key.as_deref(), Some(key.as_bytes()), "{path}");
            } else {
                assert!(got.is_empty(), "{path} reached {}", step.id);
            }
        }
    }
    // The same spellings from reqwest, which sends these paths as written.
    for path in ["//b/y", "/%62/y", "/B/y"] {
        assert_eq!(ingress.post(path, "via-reqwest").await.0, StatusCode::OK, "{path}");
    }
    assert_eq!(
        payloads(&tenant_b.accepted())
            .iter()
            .filter(|p| *p == "via-reqwest")
            .count(),
        3
    );

    // Spellings that could mean two paths are refused with 400, delivered nowhere.
    let delivered = || tenant_a.accepted().len() + tenant_b.accepted().len() + catch_all.accepted().len();
    let before = delivered();
    for path in [
        "/b%2Fx",
        "/b%2fx",
        "/b%5Cx",
        "/b/%2e%2e/a",
        "/b/.%2E/a",
        "/../b",
        "/b%zz",
    ] {
        let (status, body) = post_raw(ingress.port, path, "refused").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"error\""), "{path}: {body}");
    }
    let (status, _) = ingress.post("/b%2Fx", "refused").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "reqwest keeps %2F");
    assert_eq!(delivered(), before, "a refused request was delivered");

    // A route under another link's prefix is refused unless that route declares it.
    let _nester = ingress.step("nester").await;
    ingress
        .provider
        .put_link(route("nester", &[("path", "/b/x")]))
        .await
        .unwrap();
    let status = ingress.provider.status().await.unwrap();
    let refused = status
        .refusal("nester")
        .expect("the undeclared nested route is refused");
    assert!(
        refused.contains("component `tenant-b`") && refused.contains("`nested_routes`"),
        "{refused}"
    );
    assert_eq!(post_raw(ingress.port, "/b/x/1", "still-b").await.0, 200);
    assert_eq!(payloads(&tenant_b.accepted()).last().unwrap(), "still-b");

    // `/metrics` is not on the ingress listener: no route, component or link is listed there,
    // and the reserved paths never reach the catch-all either.
    let public = ingress.http.get(ingress.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let text = public.text().await.unwrap();
    assert!(!text.contains("tenant-") && !text.contains("route="), "{text}");
    for path in ["/metrics", "//Metrics/x", "/healthz"] {
        assert_eq!(post_raw(ingress.port, path, "reserved").await.0, 404, "{path}");
    }
    assert!(!payloads(&catch_all.accepted()).contains(&"reserved".to_string()));
    let metrics = ingress.metrics().await;
    assert!(
        metrics.contains("route=\"/b\",host=\"\",methods=\"POST,PUT\",component=\"tenant-b\""),
        "{metrics}"
    );
    assert!(metrics.contains("code=\"400\"} 8"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_from_a_real_client() {
    let mut ingress = Ingress::start(&[]).await;
    let ok = ingress.step("ok").await;
    let accepted = ingress.step("accepted").await;
    let rejecting = ingress.step("rejecting").await;
    rejecting.behave(|batch| {
        Reply::Reject(
            batch
                .iter()
                .enumerate()
                .filter(|(_, m)| m.payload.starts_with(b"{\"bad\""))
                .map(|(i, _)| (i as u32, "bad record".into()))
                .collect(),
        )
    });
    let retrying = ingress.step("retrying").await;
    retrying.behave(|_| Reply::Retry("step saturated".into()));
    let stalled = ingress.step("stalled").await;
    stalled.behave(|_| Reply::Stall);
    let slow = ingress.step("slow").await;
    slow.behave(|_| Reply::AcceptAfter(Duration::from_millis(1500)));
    let secure = ingress.step("secure").await;
    let fast_fail = [
        ("request_timeout", "400ms"),
        ("retry_initial", "20ms"),
        ("retry_max", "50ms"),
    ];
    ingress
        .provider
        .put_links(vec![
            route("ok", &[("path", "/ok"), ("headers", "content-type,x-tenant")]),
            route("accepted", &[("path", "/accepted"), ("success_status", "202")]),
            route("rejecting", &[("path", "/rejecting")]),
            route("retrying", &[[("path", "/retrying")].as_slice(), &fast_fail].concat()),
            route("stalled", &[[("path", "/stalled")].as_slice(), &fast_fail].concat()),
            route(
                "slow",
                &[
                    ("path", "/slow"),
                    ("max_in_flight", "2"),
                    ("max_body", "1KiB"),
                    ("body_timeout", "300ms"),
                ],
            ),
            route("secure", &[("path", "/secure")]).with_secret(PROVIDER, "token", "s3cret-token"),
        ])
        .await
        .unwrap();
    assert!(ingress.provider.status().await.unwrap().refused.is_empty());

    // 200, with key, selected headers and origin.
    let response = ingress
        .http
        .post(ingress.url("/ok/orders"))
        .header("content-type", "application/json")
        .header("x-tenant", "t1")
        .header("x-ignored", "no")
        .header("x-request-id", "req-42")
        .body("{\"id\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"accepted":1,"request_id":"req-42"}"#
    );
    let m = &ok.accepted()[0];
    assert_eq!(&m.payload[..], b"{\"id\":1}");
    assert_eq!(m.key.as_deref(), Some(&b"/ok/orders"[..]));
    assert_eq!(m.origin, "http:/ok#req-42");
    let headers: Vec<(&str, &[u8])> = m.headers.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
    assert_eq!(
        headers,
        [("content-type", &b"application/json"[..]), ("x-tenant", b"t1")]
    );
    assert!(m.timestamp_ms.is_some());

    // NDJSON: one record per line.
    let response = ingress
        .http
        .put(ingress.url("/ok"))
        .header("content-type", "application/x-ndjson")
        .body("{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(ok.calls().last().unwrap().len(), 3);

    // 202 where the link asks for it.
    assert_eq!(ingress.post("/accepted", "x").await.0, StatusCode::ACCEPTED);
    // (Counts below allow a duplicate: a lost wRPC reply is retried, at least once.)
    assert!(payloads(&accepted.accepted()).iter().all(|p| p == "x"));

    // 422 with the rejected records' reasons; the others were accepted.
    let response = ingress
        .http
        .post(ingress.url("/rejecting"))
        .header("content-type", "application/x-ndjson")
        .body("{\"good\":1}\n{\"bad\":2}\n{\"good\":3}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["accepted"], 2);
    assert_eq!(
        body["rejected"],
        serde_json::json!([{"index": 1, "reason": "bad record"}])
    );
    let kept: std::collections::BTreeSet<String> = payloads(&rejecting.accepted()).into_iter().collect();
    assert_eq!(kept, ["{\"good\":1}".to_string(), "{\"good\":3}".to_string()].into());
    let calls_before = rejecting.call_count();

    // 400: malformed NDJSON is refused whole, naming the line; nothing is delivered.
    let response = ingress
        .http
        .post(ingress.url("/rejecting"))
        .header("content-type", "application/x-ndjson")
        .body("{\"good\":1}\n{\"good\":\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("line 2"));
    assert_eq!(rejecting.call_count(), calls_before);

    // 503 + Retry-After when the step keeps answering `retry` (retried within the deadline)...
    let started = std::time::Instant::now();
    let response = ingress
        .http
        .post(ingress.url("/retrying"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let reason = response.text().await.unwrap();
    // The last attempt's reason: the step's, or (a lost wRPC reply under load) the deadline's.
    assert!(
        reason.contains("step saturated") || reason.contains("no answer within"),
        "{reason}"
    );
    assert!(retrying.call_count() >= 2, "retried within the deadline");
    eprintln!("retrying: {:?}, {} calls", started.elapsed(), retrying.call_count());
    assert!(started.elapsed() < Duration::from_secs(3));
    // ...and when it does not answer in time.
    let response = ingress
        .http
        .post(ingress.url("/stalled"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert!(response.text().await.unwrap().contains("no answer"));
    stalled.release();

    // 429 once the route's in-flight limit is reached; the two in flight still succeed.
    let first = tokio::spawn(ingress.http.post(ingress.url("/slow")).body("1").send());
    let second = tokio::spawn(ingress.http.post(ingress.url("/slow")).body("2").send());
    assert!(slow.wait_for(Duration::from_secs(10), |c| c.in_flight() == 2).await);
    let response = ingress.http.post(ingress.url("/slow")).body("3").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(slow.max_in_flight(), 2);

    // 413 above the body limit, declared or streamed.
    assert_eq!(
        ingress.post("/slow", vec![b'x'; 2048]).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let chunks = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 512])));
    let response = ingress
        .http
        .post(ingress.url("/slow"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // 408 when the body does not arrive in time.
    let answer = raw_exchange(
        ingress.port,
        b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // 404 without a route, 405 for a method the route does not take.
    assert_eq!(ingress.post("/nowhere", "x").await.0, StatusCode::NOT_FOUND);
    let response = ingress.http.get(ingress.url("/ok")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST, PUT");

    // 401 without or with a wrong bearer token; 200 with the right one.
    assert_eq!(ingress.post("/secure", "x").await.0, StatusCode::UNAUTHORIZED);
    let wrong = ingress
        .http
        .post(ingress.url("/secure"))
        .bearer_auth("s3cret-tokex")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    // Refused before its body was read: the connection is not reused (a pooling client that
    // reused it would see the server close it under its next request).
    assert_eq!(wrong.headers()["connection"], "close");
    let unrouted = ingress
        .http
        .post(ingress.url("/nowhere"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(unrouted.headers()["connection"], "close");
    let right = ingress
        .http
        .post(ingress.url("/secure"))
        .bearer_auth("s3cret-token")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    assert!(
        right.headers().get("connection").is_none(),
        "a read body keeps the connection"
    );
    assert!(!secure.accepted().is_empty());
    let secure_before = secure.accepted().len();
    // The README's curl example. curl is required (`.ci/install` installs it): a missing curl
    // fails the test instead of skipping the example.
    let output = std::process::Command::new("curl")
        .args(["-si", "-X", "POST", &ingress.url("/secure/eu")])
        .args(["-H", "Authorization: Bearer s3cret-token"])
        .args(["-H", "Content-Type: application/x-ndjson"])
        .args(["-H", "x-request-id: 5f3a0c1e-0"])
        .args(["--data-binary", "{\"id\":1}\n{\"id\":2}\n"])
        .output()
        .expect("curl runs: the README's curl example needs it (install curl)");
    let answer = String::from_utf8_lossy(&output.stdout);
    eprintln!("curl:\n{answer}");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.ends_with(r#"{"accepted":2,"request_id":"5f3a0c1e-0"}"#),
        "{answer}"
    );
    assert!(secure.accepted().len() >= secure_before + 2);
    assert!(
        !ingress.provider.logs().contains("s3cret-token"),
        "the token was logged"
    );

    // /healthz on the listener; /metrics only on `metrics_address`.
    let health = ingress.http.get(ingress.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let health: serde_json::Value = serde_json::from_str(&health.text().await.unwrap()).unwrap();
    assert_eq!(health["routes"], 7);
    let metrics = ingress.metrics().await;
    for line in [
        "# TYPE sluice_http_requests_total counter",
        "route=\"/ok\",host=\"\",methods=\"POST,PUT\",component=\"ok\",link=\"default\",code=\"200\"} 2",
        "component=\"rejecting\",link=\"default\",code=\"422\"} 1",
        "component=\"slow\",link=\"default\",code=\"429\"} 1",
        "component=\"slow\",link=\"default\",code=\"413\"} 2",
        "component=\"slow\",link=\"default\",code=\"408\"} 1",
        "component=\"secure\",link=\"default\",code=\"401\"} 2",
        "sluice_http_requests_total{route=\"\",host=\"\",methods=\"\",component=\"\",link=\"\",code=\"404\"} 2",
        "# TYPE sluice_http_request_duration_seconds histogram",
        "sluice_http_request_duration_seconds_count{route=\"/ok\",host=\"\",methods=\"POST,PUT\",component=\"ok\",link=\"default\"} 2",
        "sluice_http_requests_in_flight{route=\"/slow\",host=\"\",methods=\"POST,PUT\",component=\"slow\",link=\"default\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // The engine's link counters agree.
    let status = ingress.provider.status().await.unwrap();
    let slow_link = status.links.iter().find(|l| l.component == "slow").unwrap();
    assert_eq!(slow_link.metrics.busy, 1);
    assert!(slow_link.metrics.delivered >= 2);
    assert_eq!(slow_link.metrics.in_flight, 0);
}

/// One round of abuse against `/abuse` (max_body 64KiB, body_timeout 500ms, max_in_flight 4)
/// and `/flood`; returns how many answers of each kind came back.
async fn abuse_round(ingress: &Ingress) -> [usize; 5] {
    let port = ingress.port;
    // Declared far above the limit: answered before the body is read.
    let oversize = futures::stream::iter(0..50)
        .map(|_| async move {
            let mut request = b"POST /abuse HTTP/1.1\r\nhost: x\r\ncontent-length: 104857600\r\n\r\n".to_vec();
            request.extend(vec![b'x'; 1024]);
            raw_exchange(port, &request, Duration::from_secs(5)).await
        })
        .buffer_unordered(16)
        .filter(|a| std::future::ready(a.starts_with("HTTP/1.1 413")))
        .count();
    // Streamed above the limit, no length declared.
    let streamed = futures::stream::iter(0..20)
        .map(|_| async {
            let chunks = futures::stream::iter((0..16).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 16 * 1024])));
            let response = ingress
                .http
                .post(ingress.url("/abuse"))
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await;
            response.map(|r| r.status())
        })
        .buffer_unordered(8)
        .filter(|r| std::future::ready(matches!(r, Ok(StatusCode::PAYLOAD_TOO_LARGE))))
        .count();
    // Malformed NDJSON just under the limit.
    let malformed = futures::stream::iter(0..50)
        .map(|_| async {
            let mut body = "{\"ok\":true}\n".repeat(5000);
            body.push_str("{\"broken\":\n");
            let response = ingress
                .http
                .post(ingress.url("/abuse"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            response.status()
        })
        .buffer_unordered(16)
        .filter(|s| std::future::ready(*s == StatusCode::BAD_REQUEST))
        .count();
    // Slowloris: a byte of body every 100ms, forever.
    let slowloris = futures::stream::iter(0..40)
        .map(|_| async move {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream
                .write_all(b"POST /abuse HTTP/1.1\r\nhost: x\r\ncontent-length: 60000\r\n\r\n")
                .await
                .unwrap();
            let mut answer = vec![0u8; 256];
            for _ in 0..50 {
                if stream.write_all(b"z").await.is_err() {
                    break;
                }
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut answer)).await {
                    return String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408");
                }
            }
            false
        })
        .buffer_unordered(40)
        .filter(|timed_out| std::future::ready(*timed_out))
        .count();
    // A flood far beyond the in-flight limit of a slow step.
    let flood = futures::stream::iter(0..1000)
        .map(|i| async move {
            let response = ingress
                .http
                .post(ingress.url("/flood"))
                .body(format!("f{i}"))
                .send()
                .await
                .unwrap();
            response.status()
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>();
    let (oversize, streamed, malformed, slowloris, flood) =
        tokio::join!(oversize, streamed, malformed, slowloris, flood);
    let busy = flood.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    let fine = flood.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(busy + fine, 1000, "{flood:?}");
    [oversize, streamed, malformed, slowloris, busy]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_is_answered_without_memory_growing() {
    let mut ingress = Ingress::start(&[("header_timeout", "1s")]).await;
    let abuse = ingress.step("abuse").await;
    let flood = ingress.step("flood").await;
    flood.keep_records(false);
    flood.behave(|_| Reply::AcceptAfter(Duration::from_millis(20)));
    ingress
        .provider
        .put_links(vec![
            route(
                "abuse",
                &[
                    ("path", "/abuse"),
                    ("max_body", "64KiB"),
                    // Long enough for a whole 60 KB body on a loaded machine, short of the
                    // slowloris clients' 5 s.
                    ("body_timeout", "2s"),
                    ("max_in_flight", "64"),
                ],
            ),
            route("flood", &[("path", "/flood"), ("max_in_flight", "4")]),
        ])
        .await
        .unwrap();

    for _ in 0..2 {
        let warm = abuse_round(&ingress).await;
        eprintln!("warm-up round (413 declared, 413 streamed, 400, 408, 429): {warm:?}");
    }
    let baseline = ingress.provider.rss_kib().unwrap();
    let mut totals = [0usize; 5];
    let mut rss = vec![baseline];
    for _ in 0..4 {
        let counts = abuse_round(&ingress).await;
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
        rss.push(ingress.provider.rss_kib().unwrap());
    }
    let after = *rss.last().unwrap();
    eprintln!("4 rounds (413 declared, 413 streamed, 400, 408, 429): {totals:?}; RSS after each (KiB): {rss:?}");
    assert_eq!(totals[0], 4 * 50, "every declared oversize body answered 413");
    // The others saw the connection closed mid-body, which refuses them as well.
    assert!(
        totals[1] >= 4 * 10,
        "streamed oversize bodies answered 413: {}",
        totals[1]
    );
    assert_eq!(totals[2], 4 * 50, "every malformed NDJSON body answered 400");
    assert_eq!(totals[3], 4 * 40, "every slowloris body answered 408");
    assert!(totals[4] > 4 * 500, "the flood was turned away with 429: {}", totals[4]);
    assert!(abuse.accepted().is_empty(), "nothing abusive reached the step");
    assert!(
        flood.max_in_flight() <= 4,
        "the step saw {} at once",
        flood.max_in_flight()
    );
    let grown = after.saturating_sub(baseline);
    assert!(grown < 8 * 1024, "RSS grew {grown} KiB over 4 rounds of abuse");

    // Slow headers: the connection is closed after `header_timeout`.
    let started = std::time::Instant::now();
    let answer = raw_exchange(ingress.port, b"POST /abuse HTTP/1.1\r\nhost:", Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(4), "{answer}");
    let status = ingress.provider.status().await.unwrap();
    assert!(status.links.iter().all(|l| l.metrics.in_flight == 0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_graceful_shutdown_answer_requests_in_flight() {
    let certs = sluice_integration::servers::temp_dir("http-tls").unwrap();
    sluice_integration::servers::make_certificates(&certs).unwrap();
    let cert = certs.join("server.pem");
    let key = certs.join("server.key");
    let mut ingress = Ingress::start(&[
        ("tls_cert_file", cert.to_str().unwrap()),
        ("tls_key_file", key.to_str().unwrap()),
    ])
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    let https = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let slow = ingress.step("slow").await;
    slow.behave(|_| Reply::AcceptAfter(Duration::from_millis(1500)));
    ingress
        .provider
        .put_link(route("slow", &[("path", "/slow")]))
        .await
        .unwrap();
    let url = format!("https://localhost:{}/slow", ingress.port);
    let plain = ingress.http.post(ingress.url("/slow")).body("x").send().await;
    assert!(plain.is_err(), "the listener speaks TLS only");

    let in_flight = tokio::spawn(https.post(&url).body("in-flight").send());
    assert!(slow.wait_for(Duration::from_secs(10), |c| c.in_flight() == 1).await);
    let exit = ingress.provider.shutdown().await.unwrap();
    assert!(exit.success(), "{exit:?}");
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the request in flight was answered");
    assert_eq!(payloads(&slow.accepted()), ["in-flight"]);
    assert!(
        TcpStream::connect(("127.0.0.1", ingress.port)).await.is_err(),
        "the listener is closed"
    );
}
