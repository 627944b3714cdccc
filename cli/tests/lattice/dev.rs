//! `sluice dev` on the real host: the example Rust logic (a copy) runs in an MQTT -> step -> S3
//! pipeline while readings flow; the logic is edited (its mapping adds a field), `sluice dev`
//! rebuilds it, composes it and replaces the step in place, the new field appears in S3, and every
//! reading published before, during and after the swap lands (duplicates counted).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::fixtures::{self, guest_target, repo, Lang};
use crate::common::lattice::{keys_dir, scratch_dir};

use super::*;

/// The example logic copied to `dir`, its WIT path made absolute and its package renamed, so its
/// build shares the guest target directory (the standard library built once) without touching
/// the example's own output.
fn copy_example_logic(dir: &Path) -> PathBuf {
    let from = repo().join("examples/logic/rust");
    let to = dir.join("logic");
    std::fs::create_dir_all(to.join("src")).unwrap();
    for file in ["Cargo.toml", "Cargo.lock", "src/lib.rs", "src/mapper.rs"] {
        let text = std::fs::read_to_string(from.join(file))
            .unwrap()
            .replace("\"../../../wit\"", &format!("{:?}", repo().join("wit")))
            .replace("sluice-example-logic", "sluice-dev-logic");
        std::fs::write(to.join(file), text).unwrap();
    }
    to
}

/// Every mapped reading in `bucket`: device id -> (times it landed, times with `"logic": 2`).
async fn landed(client: &aws_sdk_s3::Client, bucket: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let listed = client.list_objects_v2().bucket(bucket).send().await.unwrap();
    for object in listed.contents() {
        let body = sluice_integration::seaweedfs::object(client, bucket, object.key().unwrap())
            .await
            .unwrap();
        for line in std::str::from_utf8(&body).unwrap().lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            let payload: Value = serde_json::from_str(line["payload"].as_str().unwrap()).unwrap();
            let entry = out
                .entry(payload["device_id"].as_str().unwrap().to_string())
                .or_default();
            entry.0 += 1;
            entry.1 += usize::from(payload["logic"] == 2);
        }
    }
    out
}

/// Waits until a line of `lines` contains `wanted`; returns it.
async fn line_with(lines: &Mutex<Vec<String>>, wanted: &str, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Some(line) = lines.lock().unwrap().iter().find(|l| l.contains(wanted)) {
            return Some(line.clone());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_dev_replaces_the_step_when_the_logic_changes_and_loses_no_reading() {
    sluice_integration::init_tracing();
    // The example built first: its dependencies and the standard library are then in the guest
    // target directory, and the copy builds offline.
    fixtures::example(Lang::Rust);
    let _permit = LATTICES.acquire().await.unwrap();
    let par = archives().await;
    let dir = scratch_dir("dev");
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("dev").await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("customer-v").await.unwrap();
    let name = "dev-to-s3";
    lattice
        .serve_secrets("nats-kv", secrets(name, &s3, "customer-a"))
        .await
        .unwrap();
    let logic = copy_example_logic(&dir);
    let spec = dir.join("pipeline.yaml");
    std::fs::write(&spec, mqtt_to_s3(name, "customer-v", &mqtt, &s3, "dev/#", "dev")).unwrap();

    // The fallback route of the Rust template's README (no rustup Wasm target on CI machines).
    let target = guest_target();
    let build = format!(
        "RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR={} \
         /usr/bin/cargo build --offline --quiet --release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort",
        target.display()
    );
    let artifact = target.join("wasm32-unknown-unknown/release/sluice_dev_logic.wasm");
    let mut dev = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env("SLUICE_KEYS_DIR", keys_dir())
        // The outer cargo's settings are not the guest build's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_BUILD_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .arg("dev")
        .arg(&spec)
        .args(["--lattice-url", lattice.nats_url()])
        .arg("--par-dir")
        .arg(&par)
        .arg("--logic")
        .arg(&logic)
        .args(["--build", &build])
        .arg("--artifact")
        .arg(&artifact)
        .args(["--debounce", "300ms"])
        .stdout(std::fs::File::create(dir.join("dev.out")).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (lines, stderr) = (lines.clone(), dev.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                eprintln!("[sluice dev] {line}");
                lines.lock().unwrap().push(line);
            }
        })
    };
    let seen = || lines.lock().unwrap().join("\n");
    assert!(
        line_with(&lines, "deployed;", WAIT * 2).await.is_some(),
        "sluice dev did not deploy: {}",
        seen()
    );
    probe_until_landed(&mqtt, "dev/plant-v", &s3, "dev", seen).await;

    // Readings flow: 10 every 100 ms, numbered, until told to stop.
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let publisher = {
        let (stop, sent, port) = (stop.clone(), sent.clone(), mqtt.port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let from = sent.load(Ordering::Relaxed);
                let batch: Vec<String> = (from..from + 10)
                    .map(|i| format!(r#"{{"device":"reading-{i}","temp":21.5,"site":"plant-v"}}"#))
                    .collect();
                publish_lines(port, "dev/plant-v", &batch);
                sent.fetch_add(10, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The edit: every mapped reading now carries `"logic": 2`.
    let mapper = logic.join("src/mapper.rs");
    let text = std::fs::read_to_string(&mapper).unwrap();
    let edited = text.replace(
        r#"json!({ "device_id": device, "temperature": temperature, "site": site })"#,
        r#"json!({ "device_id": device, "temperature": temperature, "site": site, "logic": 2 })"#,
    );
    assert_ne!(edited, text, "the mapping line is in the example");
    std::fs::write(&mapper, edited).unwrap();
    let sent_at_edit = sent.load(Ordering::Relaxed);
    let replaced = line_with(&lines, "step replaced", WAIT * 2).await;
    let sent_at_swap = sent.load(Ordering::Relaxed);
    assert!(replaced.is_some(), "no swap: {}", seen());
    // Readings keep flowing a while on the new step.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let n = sent.load(Ordering::Relaxed);

    let wanted: Vec<String> = (0..n).map(|i| format!("reading-{i}")).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = landed(&client, "dev").await;
    while wanted.iter().any(|w| !got.contains_key(w)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        got = landed(&client, "dev").await;
    }
    let lost: Vec<&String> = wanted.iter().filter(|w| !got.contains_key(*w)).collect();
    let duplicated = wanted.iter().filter(|w| got.get(*w).is_some_and(|c| c.0 > 1)).count();
    let new_logic = wanted.iter().filter(|w| got.get(*w).is_some_and(|c| c.1 > 0)).count();
    eprintln!(
        "sluice dev: {n} readings sent ({sent_at_edit} before the edit, {} while rebuilding and swapping), \
         {} landed, {} lost, {duplicated} duplicated, {new_logic} mapped by the edited logic; {}",
        sent_at_swap - sent_at_edit,
        wanted.len() - lost.len(),
        lost.len(),
        replaced.as_deref().unwrap_or_default()
    );
    assert!(
        lost.is_empty(),
        "lost {} readings: {:?}; sluice dev said:\n{}",
        lost.len(),
        &lost[..lost.len().min(20)],
        seen()
    );
    // The edited logic's field: absent before the edit, on every reading published after the swap
    // (the batch being published when the swap was seen may straddle it).
    assert!(
        (0..sent_at_edit).all(|i| got[&format!("reading-{i}")].1 == 0),
        "the old logic added the field"
    );
    assert!(
        (sent_at_swap + 10..n).all(|i| got[&format!("reading-{i}")].1 > 0),
        "readings after the swap without the new field; sluice dev said:\n{}",
        seen()
    );
    assert!(
        std::fs::read_dir(dir.join(".sluice-dev")).unwrap().count() == 1,
        "only the running step's file is kept"
    );

    // Ctrl-C: undeployed, the step files of the session gone, the lattice left running.
    let pid = dev.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || dev.wait()).await.unwrap().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "sluice dev exited with {status}: {}", seen());
    assert!(seen().contains(&format!("undeploying `{name}`")), "{}", seen());
    assert!(!dir.join(".sluice-dev").exists());
    assert!(
        dir.join("steps/sensors.wasm").is_file(),
        "the spec's own step file holds the last step"
    );
    lattice.stop().await.unwrap();
}
