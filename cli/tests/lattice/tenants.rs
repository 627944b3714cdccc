//! Secrets isolation on the standard backend: wasmCloud's `nats-kv` secrets backend (the published
//! `secrets-nats-kv` 0.2.0 of the 1.x line, run in this process) grants a secret to the subject of
//! the requesting provider's claims, as mapped with `add-mapping`. Each pipeline runs its own copy
//! of a provider archive signed with its own service key (`sluice_deploy::archive`), so customer
//! B's S3 sink, built from the same archive as A's, is not A's subject and never gets A's
//! credentials, even when B's pipeline names A's secrets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use futures::StreamExt as _;
use nkeys::XKey;
use secrets_nats_kv::client::{add_mapping, put_secret, SECRETS_API_VERSION};
use secrets_nats_kv::{Api, PutSecretRequest};
use sluice_deploy::archive::{inspect, pipeline_dir, sign_for_pipeline, Keys};
use sluice_deploy::host::SECRETS_TOPIC_PREFIX;
use sluice_deploy::local::LocalLattice;
use sluice_deploy::pipeline::Deployment;
use sluice_deploy::spec::PipelineSpec;
use sluice_integration::seaweedfs::S3Server;
use sluice_integration::servers::Mosquitto;
use wasmcloud_secrets_types::{SecretRequest, SecretResponse, WASMCLOUD_HOST_XKEY};

use super::common::lattice::{archives, keys_dir, pipeline_dir as step_dir};
use super::{expected, lost, mqtt_to_s3, publish, wait_s3, LATTICES, WAIT};

/// One secret request the hosts sent to `nats-kv`, opened with the backend's transit key, and
/// how the backend answered it.
#[derive(Debug, Clone)]
struct Asked {
    /// The subject of the requesting entity's claims (the `sub` of its JWT).
    requester: String,
    /// The secret asked for.
    key: String,
    /// `Some(true)`: the secret, sealed for the host; `Some(false)`: an error; `None`: no answer seen.
    granted: Option<bool>,
    /// The backend's error, when it answered one.
    error: Option<String>,
}

/// The `sub` claim of a JWT.
fn jwt_subject(jwt: &str) -> String {
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default()["sub"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Watches the lattice's secret requests to backend `nats-kv` and the backend's answers (a plain
/// subscription beside the backend's queue subscription sees each request; the answers go to the
/// hosts' inboxes).
async fn audit(nats: &async_nats::Client, transit: XKey) -> Arc<Mutex<BTreeMap<String, Asked>>> {
    let seen: Arc<Mutex<BTreeMap<String, Asked>>> = Arc::default();
    let mut requests = nats
        .subscribe(format!("{SECRETS_TOPIC_PREFIX}.{SECRETS_API_VERSION}.nats-kv.get"))
        .await
        .unwrap();
    let mut replies = nats.subscribe("_INBOX.>").await.unwrap();
    nats.flush().await.unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            let (Some(reply), Some(host)) = (
                msg.reply.clone(),
                msg.headers.as_ref().and_then(|h| h.get(WASMCLOUD_HOST_XKEY)),
            ) else {
                continue;
            };
            let host = XKey::from_public_key(host.as_str()).unwrap();
            let request: SecretRequest = serde_json::from_slice(&transit.open(&msg.payload, &host).unwrap()).unwrap();
            log.lock().unwrap().entry(reply.to_string()).or_insert(Asked {
                requester: jwt_subject(&request.context.entity_jwt),
                key: request.key,
                granted: None,
                error: None,
            });
        }
    });
    let log = seen.clone();
    tokio::spawn(async move {
        let mut answers: HashMap<String, (bool, Option<String>)> = HashMap::new();
        while let Some(msg) = replies.next().await {
            let sealed = msg
                .headers
                .as_ref()
                .is_some_and(|h| h.get(wasmcloud_secrets_types::RESPONSE_XKEY).is_some());
            let error = serde_json::from_slice::<SecretResponse>(&msg.payload)
                .ok()
                .and_then(|r| r.error)
                .map(|e| format!("{e:?}"));
            if sealed || error.is_some() {
                answers.insert(msg.subject.to_string(), (sealed, error));
            }
            // Requests and answers arrive on two subscriptions: match them up as both come in.
            let mut log = log.lock().unwrap();
            for (reply, asked) in log.iter_mut().filter(|(_, a)| a.granted.is_none()) {
                if let Some((granted, error)) = answers.get(reply) {
                    asked.granted = Some(*granted);
                    asked.error = error.clone();
                }
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customer_b_cannot_obtain_customer_as_s3_credentials_from_nats_kv() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, step_dir());
    let keys = Keys::open(keys_dir()).unwrap();
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    s3.create_bucket("bucket-a").await.unwrap();
    s3.create_bucket("bucket-b").await.unwrap();
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("customer-a").await.unwrap();
    lattice.add_host("customer-b").await.unwrap();
    let nats = lattice.nats().clone();

    // The platform's nats-kv backend, as `secrets-nats-kv run` starts it, on the lattice's NATS.
    let (transit, encryption) = (XKey::new(), XKey::new());
    let audited = audit(&nats, XKey::from_seed(&transit.seed().unwrap()).unwrap()).await;
    let api = Api::new(
        XKey::from_seed(&transit.seed().unwrap()).unwrap(),
        encryption,
        nats.clone(),
        SECRETS_TOPIC_PREFIX.into(),
        "nats-kv".into(),
        "WASMCLOUD_SECRETS".into(),
        64,
        "wasmcloud_secrets".into(),
        SECRETS_API_VERSION.into(),
    );
    let backend = tokio::spawn(async move { api.run().await });
    let server_xkey = format!("{SECRETS_TOPIC_PREFIX}.{SECRETS_API_VERSION}.nats-kv.server_xkey");
    let deadline = tokio::time::Instant::now() + WAIT;
    while nats.request(server_xkey.clone(), "".into()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "nats-kv did not start");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // `secrets-nats-kv put`: customer A's S3 credentials.
    let transit_public = XKey::from_public_key(&transit.public_key()).unwrap();
    let a_secrets = [
        ("customer-a-s3-access-key-id", s3.access_key_id.clone()),
        ("customer-a-s3-secret-access-key", s3.secret_access_key.clone()),
    ];
    for (name, value) in &a_secrets {
        let secret = PutSecretRequest {
            key: (*name).to_string(),
            string_secret: Some(value.clone()),
            ..Default::default()
        };
        put_secret(&nats, SECRETS_TOPIC_PREFIX, &transit_public, secret)
            .await
            .unwrap();
    }

    // Two customers, one build of each provider: B's pipeline names A's secrets.
    let a = PipelineSpec::parse(&mqtt_to_s3("pipeline-a", "customer-a", &mqtt, &s3, "a/#", "bucket-a")).unwrap();
    let b = PipelineSpec::parse(&mqtt_to_s3("pipeline-b", "customer-b", &mqtt, &s3, "b/#", "bucket-b")).unwrap();
    assert_eq!(a.sink.secrets, b.sink.secrets, "B asks for A's secret names");
    let started = std::time::Instant::now();
    let (signed_a, signed_b) = tokio::join!(sign_for_pipeline(&a, &par, &keys), sign_for_pipeline(&b, &par, &keys));
    let (signed_a, signed_b) = (signed_a.unwrap(), signed_b.unwrap());
    eprintln!("signed both pipelines' copies in {:?}", started.elapsed());
    let sink_of = |signed: &[sluice_deploy::archive::PipelineArchive]| {
        signed
            .iter()
            .find(|c| c.provider == "sluice-provider-s3")
            .unwrap()
            .clone()
    };
    let (sink_a, sink_b) = (sink_of(&signed_a), sink_of(&signed_b));
    let build = inspect(&sluice_deploy::archive::path(&par, "sluice-provider-s3"))
        .await
        .unwrap();
    assert_ne!(
        sink_a.subject, sink_b.subject,
        "each pipeline's S3 sink is its own subject"
    );
    assert_ne!(sink_a.subject, build.subject, "not the build's subject");
    // The host reads the subject from the copy's claims.
    assert_eq!(inspect(&sink_a.path).await.unwrap().subject, sink_a.subject);
    assert_eq!(inspect(&sink_b.path).await.unwrap().subject, sink_b.subject);
    assert_eq!(
        sink_a.secrets,
        vec!["customer-a-s3-access-key-id", "customer-a-s3-secret-access-key"]
    );

    // The operator grants A's secrets to A's S3 sink only (what `sluice sign` prints).
    eprintln!("{}", sink_a.add_mapping().unwrap());
    let names: HashSet<String> = sink_a.secrets.iter().cloned().collect();
    add_mapping(&nats, SECRETS_TOPIC_PREFIX, &sink_a.subject, names)
        .await
        .unwrap();

    // A's pipeline: its S3 sink gets the credentials and the records land.
    let started = std::time::Instant::now();
    let da = Deployment::start(&nats, &a, &pipeline_dir(&par, &a), &dir)
        .await
        .unwrap();
    da.wait_linked(WAIT).await.unwrap();
    let n = 100;
    publish(&mqtt, "a/line-1", "a-", n);
    let want_a = expected("a-", n);
    let got_a = wait_s3(&client, "bucket-a", &want_a).await;
    assert_eq!(lost(&got_a, &want_a), Vec::<String>::new(), "A's records land");
    eprintln!(
        "pipeline A: {n} records in S3 ({} duplicated) {:?} after deploying",
        got_a.values().filter(|c| **c > 1).count(),
        started.elapsed()
    );
    let started = std::time::Instant::now();

    // B's pipeline: the host asks nats-kv for A's secrets on behalf of B's S3 sink, and is refused.
    let db = Deployment::start(&nats, &b, &pipeline_dir(&par, &b), &dir)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let refused = loop {
        let refused: Vec<Asked> = audited
            .lock()
            .unwrap()
            .values()
            .filter(|asked| asked.requester == sink_b.subject && asked.granted.is_some())
            .cloned()
            .collect();
        // The host stops at the first secret refused.
        if !refused.is_empty() || tokio::time::Instant::now() > deadline {
            break refused;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    eprintln!("pipeline B: refused {:?} after deploying", started.elapsed());
    let all: Vec<Asked> = audited.lock().unwrap().values().cloned().collect();
    eprintln!("secret requests seen: {all:#?}");
    assert!(
        !refused.is_empty(),
        "the host never asked nats-kv for B's sink's secrets: {all:?}"
    );
    for asked in &refused {
        assert!(a_secrets.iter().any(|(name, _)| *name == asked.key), "{asked:?}");
        assert_eq!(asked.granted, Some(false), "B's sink got A's secret: {asked:?}");
        assert_eq!(asked.error.as_deref(), Some("Unauthorized"), "{asked:?}");
    }
    // A's sink asked for the same names and got them.
    assert!(
        all.iter()
            .any(|asked| asked.requester == sink_a.subject && asked.granted == Some(true)),
        "{all:?}"
    );
    assert!(
        all.iter()
            .all(|asked| asked.requester != sink_b.subject || asked.granted != Some(true)),
        "nats-kv never gave B's sink a secret: {all:?}"
    );
    // So the host never handed B's S3 sink the link: it serves no component, and B's records go
    // nowhere.
    let status = nats
        .request(format!("sluice.customer-b.{}.status", db.ids.sink), "".into())
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(status["links"], serde_json::json!([]), "B's sink has no link: {status}");
    publish(&mqtt, "b/line-1", "b-", 10);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        super::s3_records(&client, "bucket-b").await.is_empty(),
        "nothing reaches bucket-b"
    );

    db.undeploy().await.unwrap();
    da.undeploy().await.unwrap();
    backend.abort();
    lattice.stop().await.unwrap();
}
