//! Every committed example pipeline (`examples/pipelines/*.yaml`) deployed on the real host with its
//! servers started locally: the spec is taken as committed, with only the addresses of its
//! servers (and secrets' values) pointed at the test servers; records go in through the source's
//! plain client and are read back from the sink's. An example that cannot run fails here.

use std::time::Instant;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_yaml::Value as Yaml;
use sluice_integration::modbus::ModbusServer;
use sluice_integration::servers::free_port;

use super::*;

/// The local servers an example needs, started on demand.
#[derive(Default)]
struct Servers {
    mqtt: Option<Mosquitto>,
    kafka: Option<KafkaBroker>,
    s3: Option<S3Server>,
    modbus: Option<ModbusServer>,
}

impl Servers {
    fn mqtt(&mut self) -> &Mosquitto {
        self.mqtt.get_or_insert_with(|| Mosquitto::start().unwrap())
    }

    fn kafka(&mut self) -> &KafkaBroker {
        self.kafka.get_or_insert_with(|| KafkaBroker::start().unwrap())
    }

    fn s3(&mut self) -> &S3Server {
        self.s3.get_or_insert_with(|| S3Server::start().unwrap())
    }
}

fn config(endpoint: &mut Yaml) -> &mut serde_yaml::Mapping {
    endpoint
        .get_mut("config")
        .and_then(Yaml::as_mapping_mut)
        .expect("a config block")
}

fn set(map: &mut serde_yaml::Mapping, key: &str, value: impl Into<String>) {
    map.insert(key.into(), Yaml::String(value.into()));
}

fn get(map: &serde_yaml::Mapping, key: &str) -> String {
    map.get(key).and_then(Yaml::as_str).unwrap_or_default().to_string()
}

/// How records go in and come out of one example, once its spec points at the test servers.
enum Feed {
    Mqtt {
        port: u16,
        topic: String,
    },
    Kafka {
        bootstrap: String,
        topic: String,
    },
    Http {
        url: String,
        token: Option<String>,
    },
    /// A PLC polled by the pipeline: records come by themselves.
    Polled,
}

enum Drain {
    S3 { bucket: String },
    Kafka { bootstrap: String, topic: String },
    Mqtt { port: u16, filter: String },
}

/// Points `spec`'s source and sink at `servers`, creating topics and buckets; returns how to feed
/// and drain it, and the secrets it names with their test values.
async fn localize(spec: &mut Yaml, servers: &mut Servers) -> (Feed, Drain, HashMap<String, String>) {
    let mut secrets = HashMap::new();
    let source_kind = spec["source"]["provider"].as_str().unwrap().to_string();
    let feed = match source_kind.as_str() {
        "mqtt" => {
            let (url, port) = (servers.mqtt().url(), servers.mqtt().port);
            let source = config(&mut spec["source"]);
            set(source, "url", url);
            let topic = get(source, "topics").replace('#', "example").replace('+', "x");
            Feed::Mqtt { port, topic }
        }
        "kafka" => {
            let bootstrap = servers.kafka().bootstrap();
            let source = config(&mut spec["source"]);
            set(source, "bootstrap_servers", bootstrap.clone());
            let topic = get(source, "topics");
            create_topic(&bootstrap, &topic).await;
            if let Some(dlq) = source.get("dead_letter_topic").and_then(Yaml::as_str) {
                create_topic(&bootstrap, dlq).await;
            }
            Feed::Kafka { bootstrap, topic }
        }
        "http-inproc" => {
            let port = free_port();
            let provider = spec["source"]
                .get_mut("provider_config")
                .and_then(Yaml::as_mapping_mut)
                .expect("provider_config");
            set(provider, "address", format!("127.0.0.1:{port}"));
            let path = get(config(&mut spec["source"]), "path");
            let token = spec["source"]["secrets"]["token"].as_str().map(|name| {
                secrets.insert(name.to_string(), "example-token".to_string());
                "example-token".to_string()
            });
            Feed::Http {
                url: format!("http://127.0.0.1:{port}{path}"),
                token,
            }
        }
        "modbus" => {
            let server = ModbusServer::start(&serde_json::json!({
                "units": [1],
                "size": 100,
                "values": [
                    {"unit": 1, "table": "holding", "address": 0, "type": "f32", "value": 21.5},
                    {"unit": 1, "table": "input", "address": 10, "registers": [120]}
                ]
            }))
            .unwrap();
            let source = config(&mut spec["source"]);
            let map = get(source, "register_map");
            let address = map
                .lines()
                .find_map(|l| l.trim().strip_prefix("address = "))
                .expect("a device address")
                .to_string();
            set(
                source,
                "register_map",
                map.replace(&address, &format!("\"{}\"", server.address())),
            );
            servers.modbus = Some(server);
            Feed::Polled
        }
        other => panic!("no feed for source `{other}`"),
    };
    let sink_kind = spec["sink"]["provider"].as_str().unwrap().to_string();
    let drain = match sink_kind.as_str() {
        "s3" => {
            let s3 = servers.s3();
            let (endpoint, id, secret) = (s3.endpoint(), s3.access_key_id.clone(), s3.secret_access_key.clone());
            let bucket = get(config(&mut spec["sink"]), "bucket");
            s3.create_bucket(&bucket).await.unwrap();
            let sink = config(&mut spec["sink"]);
            set(sink, "endpoint", endpoint);
            for (key, value) in [("access_key_id", id), ("secret_access_key", secret)] {
                let name = spec["sink"]["secrets"][key]
                    .as_str()
                    .expect("S3 credentials")
                    .to_string();
                secrets.insert(name, value);
            }
            Drain::S3 { bucket }
        }
        "kafka" => {
            let bootstrap = servers.kafka().bootstrap();
            let sink = config(&mut spec["sink"]);
            set(sink, "bootstrap_servers", bootstrap.clone());
            let topic = get(sink, "topic");
            create_topic(&bootstrap, &topic).await;
            Drain::Kafka { bootstrap, topic }
        }
        "mqtt" => {
            let (url, port) = (servers.mqtt().url(), servers.mqtt().port);
            let sink = config(&mut spec["sink"]);
            set(sink, "url", url);
            let filter = get(sink, "topic").split('{').next().unwrap_or_default().to_string() + "#";
            if let Some(name) = spec["sink"]["secrets"]["password"].as_str() {
                secrets.insert(name.to_string(), "example-password".to_string());
            }
            Drain::Mqtt { port, filter }
        }
        other => panic!("no drain for sink `{other}`"),
    };
    (feed, drain, secrets)
}

async fn feed(feed: &Feed, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"device":"example-{i}","temp":21.5,"site":"plant"}}"#))
        .collect();
    match feed {
        Feed::Mqtt { port, topic } => publish_lines(*port, topic, &lines),
        Feed::Kafka { bootstrap, topic } => {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()
                .unwrap();
            for line in &lines {
                producer
                    .send(FutureRecord::<(), _>::to(topic).payload(line), Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        }
        Feed::Http { url, token } => {
            let client = reqwest::Client::new();
            let deadline = Instant::now() + WAIT;
            loop {
                let mut request = client
                    .post(url)
                    .header("content-type", "application/x-ndjson")
                    .body(lines.join("\n"));
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.unwrap();
                if response.status().is_success() {
                    break;
                }
                assert!(Instant::now() < deadline, "HTTP ingress answered {}", response.status());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Feed::Polled => {}
    }
}

/// Waits until the sink holds at least `n` records; returns how many it holds.
async fn drained(drain: &Drain, servers: &Servers, n: usize) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let count = match drain {
            Drain::S3 { bucket } => {
                let client = servers.s3.as_ref().unwrap().client();
                let mut lines = 0;
                for object in client.list_objects_v2().bucket(bucket).send().await.unwrap().contents() {
                    let key = object.key().unwrap();
                    let mut body = sluice_integration::seaweedfs::object(&client, bucket, key)
                        .await
                        .unwrap()
                        .to_vec();
                    if key.ends_with(".zst") {
                        body = zstd::decode_all(body.as_slice()).unwrap();
                    }
                    lines += body.iter().filter(|b| **b == b'\n').count();
                }
                lines
            }
            Drain::Kafka { bootstrap, topic } => {
                let wanted: Vec<String> = (0..n).map(|i| format!("example-{i}")).collect();
                return kafka_records(bootstrap, topic, &wanted).await.values().sum();
            }
            Drain::Mqtt { port, filter } => {
                let output = Command::new("mosquitto_sub")
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", filter])
                    .args(["-C", &n.to_string(), "-W", "30"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&output.stdout).lines().count()
            }
        };
        if count >= n || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_example_pipeline_deploys_and_moves_records() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let mut specs: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.to_string_lossy().ends_with(".wadm.yaml"))
        .collect();
    specs.sort();
    assert!(specs.len() >= 4, "{specs:?}");
    for path in specs {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut spec: Yaml = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if spec.get("steps").is_some() {
            // Multi-step examples: `sensors-fanout` runs in `dag.rs`; `readings-alerts` reads
            // another pipeline's hop (rendered and checked in `tests/render.rs`).
            continue;
        }
        let step = spec["step"]["component"].as_str().unwrap().to_string();
        assert_eq!(step, "steps/sensors.wasm", "{name}: the examples run the example logic");
        let mut servers = Servers::default();
        let (input, output, secrets) = localize(&mut spec, &mut servers).await;
        let parsed = PipelineSpec::parse(&serde_yaml::to_string(&spec).unwrap()).unwrap();
        let mut lattice = LocalLattice::start(None).await.unwrap();
        lattice.add_host(&parsed.lattice).await.unwrap();
        let secrets = secrets
            .into_iter()
            .map(|(k, value)| {
                let entry = SecretEntry {
                    value,
                    application: Some(parsed.name.clone()),
                };
                (k, entry)
            })
            .collect();
        lattice.serve_secrets(&parsed.secret_backend, secrets).await.unwrap();
        let deployment = Deployment::start(lattice.nats(), &parsed, &par, &dir).await.unwrap();
        deployment.wait_linked(WAIT).await.unwrap();
        let n = 50;
        let started = Instant::now();
        feed(&input, n).await;
        // A polled source produces records by itself; three polls are enough.
        let wanted = if matches!(input, Feed::Polled) { 3 } else { n };
        let got = drained(&output, &servers, wanted).await;
        assert!(
            got >= wanted,
            "{name}: {got} of {wanted} records came out: {}",
            deployment.progress().await
        );
        eprintln!("{name}: {got} records through in {:?}", started.elapsed());
        deployment.undeploy().await.unwrap();
        lattice.stop().await.unwrap();
    }
}
