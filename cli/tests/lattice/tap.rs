//! `sluice tap` on the real host: a running MQTT -> step -> S3 pipeline whose readings the CLI
//! prints as they cross the source link; the sink link, marked `sensitive`, refuses the tap; and a
//! NATS user without the right to publish the lattice's tap subject gets nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluice_integration::servers::NatsServer;

use super::*;

/// A lattice NATS server with two users: `operator` (no auth: the hosts, wadm and providers
/// connect as it) may do anything; `viewer` may publish anything but the tap subjects.
const NATS_CONFIG: &str = r#"
authorization {
  users = [
    { user: operator, password: operator-pass }
    { user: viewer, password: viewer-pass, permissions: {
        publish: { allow: ">", deny: ["sluice.*.*.tap"] }
        subscribe: { allow: ">" }
    } }
  ]
}
no_auth_user: operator
"#;

/// Publishes a reading `tap-N` to a topic every 100 ms (one `mosquitto_pub -l`) until stopped
/// or dropped (a failing test leaves no publisher behind).
struct Publisher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Publisher {
    fn start(port: u16, topic: &str) -> Self {
        let topic = topic.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut child = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-q",
                    "1",
                    "-t",
                    &topic,
                    "-l",
                ])
                .stdin(Stdio::piped())
                .spawn()
                .expect("mosquitto_pub");
            let mut stdin = child.stdin.take().unwrap();
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                if writeln!(stdin, r#"{{"device":"tap-{n}","temp":21.5,"site":"plant-t"}}"#).is_err() {
                    break;
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
            n
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops publishing; returns how many readings were published.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `sluice tap <args> --lattice-url <url>` to its end: (exit success, stdout, stderr).
async fn sluice_tap(url: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("tap")
        .args(args)
        .args(["--lattice-url", url])
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("sluice tap ends by itself")
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_tap_prints_a_running_pipelines_records_and_is_refused_for_sensitive_links_and_without_rights() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    s3.create_bucket("tapped").await.unwrap();
    let nats = NatsServer::start_with_config(NATS_CONFIG).unwrap();
    let mut lattice = LocalLattice::start(Some(&nats.url())).await.unwrap();
    lattice.add_host("customer-t").await.unwrap();
    let name = "tapped-to-s3";
    lattice
        .serve_secrets("nats-kv", secrets(name, &s3, "customer-a"))
        .await
        .unwrap();
    // The sink link carries the readings out of the step: marked sensitive, it is never tapped.
    let yaml = mqtt_to_s3(name, "customer-t", &mqtt, &s3, "tapped/#", "tapped").replace(
        "    max_object_age: 2s\n",
        "    max_object_age: 2s\n    sensitive: true\n",
    );
    assert!(yaml.contains("sensitive: true"), "{yaml}");
    let spec_path = dir.join("tapped.yaml");
    std::fs::write(&spec_path, &yaml).unwrap();
    let spec = spec_path.to_str().unwrap();
    let deployment = Deployment::start(lattice.nats(), &PipelineSpec::parse(&yaml).unwrap(), &par, &dir)
        .await
        .unwrap();
    deployment.wait_linked(WAIT).await.unwrap();
    // Readings flow from here on; the first tap waits for them (its timeout is 60 s).
    let publisher = Publisher::start(mqtt.port, "tapped/plant-t");

    // As the operator (the lattice's own user): 5 readings as the source delivered them.
    let (ok, stdout, stderr) = sluice_tap(&nats.url(), &[spec, "--at", "source", "-n", "5", "--json"]).await;
    assert!(ok, "sluice tap failed: {stderr}\n{stdout}");
    let records: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 5, "{stdout}\n{stderr}");
    for record in &records {
        assert_eq!(record["at"], "source", "{record}");
        assert_eq!(record["component"], format!("{name}-step"), "{record}");
        assert!(
            record["origin"]
                .as_str()
                .unwrap()
                .starts_with(&format!("mqtt:127.0.0.1:{}/tapped/plant-t#", mqtt.port)),
            "{record}"
        );
        assert_eq!(record["key"], "tapped/plant-t", "{record}");
        let payload: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
        assert!(
            payload["device"].as_str().unwrap().starts_with("tap-"),
            "the raw reading as published: {record}"
        );
    }
    assert!(stderr.contains("tap ended: 5 records"), "{stderr}");

    // The readable form names the origin and shows the payload.
    let (ok, stdout, stderr) = sluice_tap(&nats.url(), &[spec, "-n", "2"]).await;
    assert!(ok, "sluice tap failed: {stderr}\n{stdout}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    for line in stdout.lines() {
        assert!(
            line.starts_with("mqtt:") && line.contains("key=tapped/plant-t") && line.contains(r#""device":"tap-"#),
            "{line}"
        );
    }

    // The sensitive sink link refuses, naming the link.
    let (ok, stdout, stderr) = sluice_tap(&nats.url(), &[spec, "--at", "sink", "-n", "5"]).await;
    assert!(!ok, "tapped a sensitive link: {stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("tap refused")
            && stderr.contains("sensitive")
            && stderr.contains(&format!("component `{name}-step`")),
        "{stderr}"
    );

    // A user without the right to publish the tap subject gets nothing, and is told why it may be.
    let viewer = nats.url().replace("nats://", "nats://viewer:viewer-pass@");
    let (ok, stdout, stderr) = sluice_tap(&viewer, &[spec, "-n", "5"]).await;
    assert!(!ok, "tapped without rights: {stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("operator rights") && stderr.contains("Permissions Violation"),
        "{stderr}"
    );
    // The same user still reads the pipeline's status: only tapping is withheld.
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", spec, "--json", "--lattice-url", &viewer])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        report["links"]["source"]["metrics"]["delivered"].as_u64().unwrap() > 0,
        "{report}"
    );

    let published = tokio::task::spawn_blocking(move || publisher.stop()).await.unwrap();
    eprintln!("tap: {published} readings published while tapping");
    // No tap is left open on the providers: they expire with their records.
    deployment.undeploy().await.unwrap();
    lattice.stop().await.unwrap();
}
