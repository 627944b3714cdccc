//! A sink link with a disk buffer (`buffer: disk`) on the real host: the uplink down is a
//! non-event for the edge. HTTP -> step -> Kafka with the broker frozen: every request is answered
//! 200 from the buffer, the sink provider is killed with SIGKILL while its buffer holds 10,000
//! readings, and once the broker is back every reading is in Kafka.

use std::time::Instant;

use super::recovery::{provider_pid, restarted};
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buffered_kafka_sink_answers_while_the_broker_is_down_and_loses_nothing_across_kill_9() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let kafka = KafkaBroker::start().unwrap();
    let bootstrap = kafka.bootstrap();
    create_topic(&bootstrap, "buffered").await;
    let mut lattice = LocalLattice::start(None).await.unwrap();
    let host = lattice.add_host("edge-b").await.unwrap();
    lattice.serve_secrets("nats-kv", HashMap::new()).await.unwrap();
    let port = sluice_integration::servers::free_port();
    let buffer_dir = dir.join("buffer");
    let spec = PipelineSpec::parse(&format!(
        "name: http-buffered
lattice: edge-b
source:
  provider: http-inproc
  provider_config:
    address: 127.0.0.1:{port}
  config:
    path: /ingest/b
    methods: POST
step:
  component: steps/sensors.wasm
sink:
  provider: kafka
  config:
    bootstrap_servers: {bootstrap}
    topic: buffered
    buffer: disk
    buffer_dir: {}
",
        buffer_dir.display()
    ))
    .unwrap();
    let deployment = Deployment::start(lattice.nats(), &spec, &par, &dir).await.unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    let url = format!("http://127.0.0.1:{port}/ingest/b");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let post = |from: usize, n: usize| {
        let body: String = (from..from + n)
            .map(|i| format!("{{\"device\":\"b-{i}\",\"temp\":1,\"site\":\"edge\"}}\n"))
            .collect();
        http.post(&url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    // One reading through while the broker is up: the pipeline is live.
    assert!(post(1_000_000, 1).await.unwrap().status().is_success());
    let live = kafka_records(&bootstrap, "buffered", &["b-1000000".to_string()]).await;
    assert!(
        live.contains_key("b-1000000"),
        "the pipeline moved nothing: {}",
        deployment.progress().await
    );

    // The broker frozen (SIGSTOP: connections hang, as with a dead uplink): every request is
    // still answered 200, from the buffer.
    kafka.process().signal("STOP").unwrap();
    let (requests, per) = (100, 100);
    let started = Instant::now();
    for request in 0..requests {
        let response = post(request * per, per).await.unwrap();
        assert!(
            response.status().is_success(),
            "request {request} answered {} with the broker down: {}",
            response.status(),
            deployment.progress().await
        );
    }
    let answered_in = started.elapsed();
    let buffered = deployment.progress().await;
    let held = buffered.sink.as_ref().map_or(0, |l| l.metrics.buffered_records);
    assert!(
        held >= (requests * per) as u64,
        "the buffer holds {held} readings: {buffered}"
    );

    // SIGKILL of the Kafka provider while its buffer holds them; the host restarts it.
    let pid = provider_pid(&host, "sluice-provider-kafka").expect("the Kafka provider runs");
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    restarted(&host, "sluice-provider-kafka", pid).await;

    // The broker back: the restarted provider drains what the killed one buffered.
    kafka.process().signal("CONT").unwrap();
    let wanted = expected("b-", requests * per);
    let got = kafka_records(&bootstrap, "buffered", &wanted).await;
    let duplicated = assert_landed(
        "buffered Kafka sink, broker down, provider killed",
        &got,
        &wanted,
        deployment.progress().await,
    );
    eprintln!(
        "buffered: {} requests of {per} answered 200 in {answered_in:?} with the broker down; {held} held at the kill; {duplicated} duplicated",
        requests
    );
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}
