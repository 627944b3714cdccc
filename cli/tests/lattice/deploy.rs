//! `sluice deploy`, `sluice status` and `sluice undeploy` against a running lattice (a host on
//! the spec's lattice, wadm, a secrets backend), as an operator runs them: the pipeline lands on
//! the spec's lattice and no other, the same spec deployed again changes nothing, a changed spec
//! becomes a new version whose link config reaches the provider, and undeploy stops it.

use serde_json::Value;
use wadm_types::api::StatusType;

use super::*;

/// Runs `sluice <args> --lattice-url <url>`; returns stdout, failing with stderr on an error.
pub(crate) fn sluice(url: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env("SLUICE_KEYS_DIR", crate::common::lattice::keys_dir())
        .args(args)
        .args(["--lattice-url", url])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "sluice {args:?} failed ({}): {stderr}\n{stdout}",
        output.status
    );
    stdout
}

/// The version in `deployed `name` version V on lattice ...`.
pub(crate) fn deployed_version(out: &str) -> String {
    out.split(" version ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no version in: {out}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_deploy_redeploys_changes_as_new_versions_on_the_specs_lattice_and_undeploys() {
    sluice_integration::init_tracing();
    let _permit = LATTICES.acquire().await.unwrap();
    let (par, dir) = (archives().await, pipeline_dir());
    let (mqtt, s3) = (Mosquitto::start().unwrap(), S3Server::start().unwrap());
    let client = s3.client();
    for bucket in ["first", "second"] {
        s3.create_bucket(bucket).await.unwrap();
    }
    let mut lattice = LocalLattice::start(None).await.unwrap();
    lattice.add_host("customer-d").await.unwrap();
    let name = "deployed-to-s3";
    lattice
        .serve_secrets("nats-kv", secrets(name, &s3, "customer-a"))
        .await
        .unwrap();
    let url = lattice.nats_url().to_string();
    let spec = dir.join("deployed.yaml");
    let spec_arg = spec.to_str().unwrap();
    let par_arg = par.to_str().unwrap();
    let write_spec = |bucket: &str| {
        std::fs::write(&spec, mqtt_to_s3(name, "customer-d", &mqtt, &s3, "deployed/#", bucket)).unwrap();
    };

    // First deploy: on the spec's lattice, nowhere else.
    write_spec("first");
    let out = sluice(&url, &["deploy", spec_arg, "--par-dir", par_arg]);
    assert!(out.contains("(first version)") && out.contains("links live"), "{out}");
    let v1 = deployed_version(&out);
    let status = lattice.wadm("customer-d").status(name).await.unwrap();
    assert!(matches!(status, Some((StatusType::Deployed, _))), "{status:?}");
    assert!(lattice.wadm("default").versions(name).await.unwrap().is_empty());
    probe_until_landed(&mqtt, "deployed/plant-d", &s3, "first", String::new).await;
    let n = 50;
    let wanted = expected("first-", n);
    publish(&mqtt, "deployed/plant-d", "first-", n);
    assert_landed("deploy v1", &wait_s3(&client, "first", &wanted).await, &wanted, "");

    // Status: wadm's view and each link's counters, as JSON.
    let report: Value = serde_json::from_str(&sluice(&url, &["status", spec_arg, "--json"])).unwrap();
    assert_eq!(report["status"], "deployed", "{report}");
    assert_eq!(report["deployed_version"], v1.as_str(), "{report}");
    assert_eq!(report["lattice"], "customer-d", "{report}");
    let acked = report["links"]["source"]["metrics"]["acked"].as_u64().unwrap_or(0);
    let written = report["links"]["sink"]["metrics"]["written"].as_u64().unwrap_or(0);
    assert!(acked >= n as u64 && written >= n as u64, "{report}");
    let listed = sluice(&url, &["status", "--lattice", "customer-d"]);
    assert!(listed.contains(name) && listed.contains(&v1), "{listed}");

    // The same spec again: nothing to do.
    let out = sluice(&url, &["deploy", spec_arg, "--par-dir", par_arg]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(deployed_version(&out), v1);

    // The sink provider loses its link while the host still holds it (a put it missed): the
    // next deploy finds the link unknown to the running provider and has wadm put it again.
    let forget = serde_json::json!({
        "source_id": "deployed-to-s3-step",
        "target": "deployed-to-s3-sink",
        "name": "default",
        "wit_namespace": "sluice",
        "wit_package": "pipeline",
        "interfaces": ["sink"],
    });
    lattice
        .nats()
        .publish(
            "wasmbus.rpc.customer-d.deployed-to-s3-sink.linkdefs.del",
            serde_json::to_vec(&forget).unwrap().into(),
        )
        .await
        .unwrap();
    let status_of = || async {
        let report: Value = serde_json::from_str(&sluice(&url, &["status", spec_arg, "--json"])).unwrap();
        report
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !status_of().await["links"]["sink"].is_null() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sink provider kept its link"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = sluice(&url, &["deploy", spec_arg, "--par-dir", par_arg]);
    assert!(out.contains("unchanged") && out.contains("links live"), "{out}");
    let wanted = expected("relinked-", n);
    publish(&mqtt, "deployed/plant-d", "relinked-", n);
    assert_landed("relinked", &wait_s3(&client, "first", &wanted).await, &wanted, "");

    // Another bucket: a new version, and the sink link is put again with its config.
    write_spec("second");
    let out = sluice(&url, &["deploy", spec_arg, "--par-dir", par_arg]);
    assert!(out.contains("(new version)"), "{out}");
    let v2 = deployed_version(&out);
    assert_ne!(v2, v1);
    assert!(
        out.contains("replaced link deployed-to-s3-step -> deployed-to-s3-sink"),
        "{out}"
    );
    let wanted = expected("second-", n);
    probe_until_landed(&mqtt, "deployed/plant-d", &s3, "second", String::new).await;
    publish(&mqtt, "deployed/plant-d", "second-", n);
    assert_landed("deploy v2", &wait_s3(&client, "second", &wanted).await, &wanted, "");
    let first = s3_records(&client, "first").await;
    assert!(
        !first.keys().any(|k| k.starts_with("second-")),
        "the old config kept writing: {first:?}"
    );
    let versions = lattice.wadm("customer-d").versions(name).await.unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");

    // Undeploy, then delete: the providers stop answering, wadm forgets the pipeline.
    let out = sluice(&url, &["undeploy", spec_arg, "--delete"]);
    assert!(out.contains("undeployed") && out.contains("deleted"), "{out}");
    assert!(lattice.wadm("customer-d").versions(name).await.unwrap().is_empty());
    let status_subject = sluice_provider_status_subject("customer-d", "deployed-to-s3-source");
    let deadline = tokio::time::Instant::now() + WAIT;
    while lattice.nats().request(status_subject.clone(), "".into()).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source provider still answers"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    lattice.stop().await.unwrap();
}
