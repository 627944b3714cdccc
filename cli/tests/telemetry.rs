//! Telemetry on the real host: HTTP -> step -> MQTT with the host and its providers exporting
//! over OTLP to an in-process receiver. The trace a device's request came with (its
//! `traceparent`) runs on through the HTTP provider's request, the host's invocation of the step
//! and the MQTT provider's `sink.write`; each provider exports its links' counters as metrics.
//!
//! A test binary of its own: the host runs in this process and exports through this process's
//! `tracing` subscriber, which can be installed once.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::lattice::{archives, pipeline_dir};
use sluice_deploy::host::HostOptions;
use sluice_deploy::local::LocalLattice;
use sluice_deploy::pipeline::Deployment;
use sluice_deploy::spec::PipelineSpec;
use sluice_integration::otlp::{OtlpReceiver, ReceivedPoint, ReceivedSpan};
use sluice_integration::servers::{free_port, Mosquitto};
use wasmcloud_core::logging::Level;
use wasmcloud_core::{OtelConfig, OtelProtocol};

const WAIT: Duration = Duration::from_secs(90);

/// The trace a device sent its request with.
const DEVICE_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The spans of [`DEVICE_TRACE`] once every hop has reported its own: the HTTP provider's
/// request (continuing the device's trace), the host's invocation of the step, the MQTT
/// provider's `sink.write`.
fn hops(spans: &[ReceivedSpan]) -> Option<Vec<ReceivedSpan>> {
    let trace: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == DEVICE_TRACE).cloned().collect();
    let source = trace
        .iter()
        .any(|s| s.name == "request" && s.service.contains("http-inproc"));
    let invocation = trace.iter().any(|s| s.name == "component_invocation");
    let write = trace
        .iter()
        .any(|s| s.name == "sink.write" && s.service.contains("mqtt"));
    (source && invocation && write).then_some(trace)
}

/// Readings the device sends in its one request.
const READINGS: i64 = 3;

/// The latest value of `metric` each provider exported for its links in `role`, by service.
fn latest(points: &[ReceivedPoint], metric: &str, role: &str) -> BTreeMap<String, i64> {
    points
        .iter()
        .filter(|p| p.metric == metric && p.attributes.get("sluice.link.role").map(String::as_str) == Some(role))
        .map(|p| (p.service.clone(), p.value))
        .collect()
}

/// Whether the HTTP provider's source link reported every reading delivered, and the MQTT
/// provider's sink link every output written.
fn counted(points: &[ReceivedPoint]) -> bool {
    let reached = |metric: &str, role: &str, service: &str| {
        latest(points, metric, role)
            .iter()
            .any(|(s, v)| s.contains(service) && *v == READINGS)
    };
    reached("sluice.link.delivered", "source", "http-inproc") && reached("sluice.link.written", "sink", "mqtt")
}

#[test]
fn one_trace_spans_the_source_provider_the_step_and_the_sink_provider_and_links_export_counters() {
    // The host hands `OTEL_*` variables on to its providers: export metrics every second rather
    // than every minute. Set before any thread of the runtime exists.
    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "1000");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(traced_and_counted());
}

async fn traced_and_counted() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let otel = OtelConfig {
        enable_observability: true,
        enable_traces: Some(true),
        enable_metrics: Some(true),
        enable_logs: Some(false),
        observability_endpoint: Some(receiver.endpoint()),
        protocol: OtelProtocol::Http,
        ..OtelConfig::default()
    };
    // The host's own spans (its invocations of the step) go through this process's subscriber;
    // like a provider's, it drops what is below its log level.
    let (dispatch, _flush) = wasmcloud_tracing::configure_observability(
        "sluice-test-host",
        &OtelConfig {
            enable_metrics: Some(false),
            ..otel.clone()
        },
        false,
        None::<&std::path::Path>,
        Some(&Level::Info),
        Some(&Level::Info),
    )
    .unwrap();
    tracing::dispatcher::set_global_default(dispatch).unwrap();

    let (par, dir) = (archives().await, pipeline_dir());
    let mqtt = Mosquitto::start().unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    // Sluice's spans are at `info`, and the provider SDK drops what is below its log level.
    let options = HostOptions {
        otel,
        provider_log_level: Level::Info,
        ..HostOptions::default()
    };
    lattice.add_host_with("traced", &options).await.unwrap();
    lattice.serve_secrets("nats-kv", HashMap::new()).await.unwrap();
    let port = free_port();
    let spec = PipelineSpec::parse(&format!(
        "name: traced
lattice: traced
source:
  provider: http-inproc
  provider_config:
    address: 127.0.0.1:{port}
  config:
    path: /ingest/t
    methods: POST
step:
  component: steps/sensors.wasm
sink:
  provider: mqtt
  config:
    url: {}
    topic: traced/out
    qos: 1
",
        mqtt.url()
    ))
    .unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();

    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://127.0.0.1:{port}/ingest/t"))
        .header("content-type", "application/x-ndjson")
        .header("traceparent", format!("00-{DEVICE_TRACE}-00f067aa0ba902b7-01"))
        .body((0..READINGS).fold(String::new(), |body, i| {
            body + &format!("{{\"device\":\"t-{i}\",\"temp\":1,\"site\":\"t\"}}\n")
        }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    // Exporters send in batches (every few seconds): wait for every hop's span.
    let deadline = Instant::now() + WAIT;
    let spans = loop {
        if let Some(found) = hops(&receiver.spans()) {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the device's trace did not reach through the step to the MQTT write; received: {:#?}",
            receiver
                .spans()
                .iter()
                .map(|s| format!(
                    "{} {} {} <- {} links {:?}",
                    s.service, s.name, s.trace_id, s.parent_span_id, s.linked_traces
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let services: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    eprintln!("trace {DEVICE_TRACE}: {} spans from {services:?}", spans.len());
    assert!(services.len() >= 3, "three processes' spans in the trace: {services:?}");

    // Each provider's link counters, as metrics: the readings delivered by the HTTP provider's
    // source link, written by the MQTT provider's sink link.
    let deadline = Instant::now() + WAIT;
    while !counted(&receiver.points()) {
        let points = receiver.points();
        assert!(
            Instant::now() < deadline,
            "the providers' link counters did not reach {READINGS}: delivered {:?}, written {:?}",
            latest(&points, "sluice.link.delivered", "source"),
            latest(&points, "sluice.link.written", "sink"),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let points = receiver.points();
    let link = points
        .iter()
        .find(|p| p.metric == "sluice.link.written")
        .map(|p| p.attributes.clone())
        .unwrap_or_default();
    eprintln!("metrics: {} points; a sink link's attributes: {link:?}", points.len());
    assert!(
        link.get("sluice.link.component").is_some_and(|c| !c.is_empty())
            && link.get("sluice.link.name").is_some_and(|n| !n.is_empty()),
        "a link's metrics name its component and link: {link:?}"
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}
