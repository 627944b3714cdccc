//! `sluice render`: the committed example manifests are exactly what the binary renders, wadm's
//! own validation accepts them, swapping a sink is a one-block change that keeps the step, and an
//! invalid spec is refused with the field's path and what was expected.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_deploy::manifest::{render, Images, DEFAULT_ARTIFACTS};
use sluice_deploy::spec::{PipelineSpec, SpecError};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines")
}

fn specs() -> Vec<PathBuf> {
    let mut specs: Vec<_> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.to_string_lossy().ends_with(".wadm.yaml"))
        .collect();
    specs.sort();
    specs
}

fn sluice_render(spec: &Path) -> String {
    let output = Command::new(SLUICE).arg("render").arg(spec).output().unwrap();
    assert!(
        output.status.success(),
        "sluice render {}: {}",
        spec.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn committed_manifests_are_what_sluice_render_writes() {
    let specs = specs();
    let names: Vec<_> = specs
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["http-to-s3", "kafka-to-kafka", "modbus-to-mqtt", "mqtt-to-s3"] {
        assert!(
            names.iter().any(|n| n == expected),
            "examples/pipelines/{expected}.yaml missing"
        );
    }
    for spec in specs {
        let committed_path = spec.with_extension("wadm.yaml");
        let committed =
            std::fs::read_to_string(&committed_path).unwrap_or_else(|e| panic!("{}: {e}", committed_path.display()));
        let rendered = sluice_render(&spec);
        assert_eq!(
            rendered,
            committed,
            "{} is stale: run `sluice render {} -o {}`",
            committed_path.display(),
            spec.display(),
            committed_path.display()
        );
    }
}

#[test]
fn wadm_accepts_every_rendered_manifest() {
    for spec in specs() {
        let yaml = sluice_render(&spec);
        let failures = wadm_types::validation::validate_raw_yaml(yaml.as_bytes()).unwrap();
        let errors: Vec<_> = failures
            .iter()
            .filter(|f| matches!(f.level, wadm_types::validation::ValidationFailureLevel::Error))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", spec.display());
        let manifest: wadm_types::Manifest = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(manifest.api_version, "core.oam.dev/v1beta1");
        assert_eq!(manifest.kind, "Application");
        // Links of sluice:pipeline: for one step, source -> step (ingest) and step -> sink (sink).
        let links: Vec<_> = manifest
            .links()
            .filter_map(|t| match &t.properties {
                wadm_types::TraitProperty::Link(l) => {
                    Some((l.namespace.clone(), l.package.clone(), l.interfaces.clone()))
                }
                _ => None,
            })
            .collect();
        assert!(links.iter().all(|(ns, pkg, _)| ns == "sluice" && pkg == "pipeline"));
        let mut interfaces: Vec<_> = links.iter().flat_map(|(_, _, i)| i.clone()).collect();
        interfaces.sort();
        if manifest.components().any(|c| c.name == "step") {
            assert_eq!(interfaces, ["ingest", "sink"], "{}", spec.display());
        } else {
            // A multi-step pipeline: one `sink` link per step and relay, one `ingest` link per
            // step or relay input.
            assert!(interfaces.contains(&"ingest".to_string()) && interfaces.contains(&"sink".to_string()));
        }
    }
}

fn mqtt_to_s3() -> String {
    std::fs::read_to_string(examples().join("mqtt-to-s3.yaml")).unwrap()
}

fn swap_sink_to_kafka(spec: &str) -> String {
    let head = &spec[..spec.find("\nsink:\n").expect("sink block")];
    format!(
        "{head}\nsink:\n  provider: kafka\n  config:\n    bootstrap_servers: 127.0.0.1:9092\n    topic: sensors.mapped\n"
    )
}

#[test]
fn swapping_the_sink_changes_the_sink_only() {
    let s3 = PipelineSpec::parse(&mqtt_to_s3()).unwrap();
    let kafka = PipelineSpec::parse(&swap_sink_to_kafka(&mqtt_to_s3())).unwrap();
    let a = render(&s3, &Images::under(DEFAULT_ARTIFACTS, &s3));
    let b = render(&kafka, &Images::under(DEFAULT_ARTIFACTS, &kafka));
    let component = |m: &sluice_deploy::manifest::Manifest, name: &str| {
        m.spec.components.iter().find(|c| c.name == name).unwrap().clone()
    };
    // Same source, same step file; the sink provider and the step's sink link differ.
    assert_eq!(component(&a, "source"), component(&b, "source"));
    assert_eq!(component(&a, "step").properties, component(&b, "step").properties);
    assert_ne!(
        component(&a, "sink").properties.image,
        component(&b, "sink").properties.image
    );
    assert!(component(&b, "sink")
        .properties
        .image
        .unwrap()
        .ends_with("/sluice-provider-kafka.par.gz"));
    assert_ne!(component(&a, "step").traits, component(&b, "step").traits);
}

#[test]
fn every_change_is_a_new_version_and_a_changed_link_config_gets_a_new_name() {
    let spec = PipelineSpec::parse(&mqtt_to_s3()).unwrap();
    let other_bucket = PipelineSpec::parse(&mqtt_to_s3().replace("bucket: sensors", "bucket: archive")).unwrap();
    let images = Images::under(DEFAULT_ARTIFACTS, &spec);
    let (a, again, b) = (
        render(&spec, &images),
        render(&spec, &images),
        render(&other_bucket, &images),
    );
    // The same spec is the same version; wadm refuses to store a version twice, so a changed
    // spec must be another one.
    assert_eq!(a.version(), again.version());
    assert_ne!(a.version(), b.version());
    assert!(
        a.version().starts_with(&format!("{}-", spec.version)),
        "{}",
        a.version()
    );

    // Both links, as the host will hold them: wadm prefixes config names with the application.
    let links = a.links();
    assert_eq!(links.len(), 2, "{links:?}");
    let ingest = links.iter().find(|l| l.source_id == "sensors-to-s3-source").unwrap();
    assert_eq!(ingest.target, "sensors-to-s3-step");
    assert_eq!(ingest.name, "sensors-to-s3");
    assert_eq!(
        (ingest.namespace.as_str(), ingest.package.as_str()),
        ("sluice", "pipeline")
    );
    let sink = links.iter().find(|l| l.source_id == "sensors-to-s3-step").unwrap();
    assert_eq!(
        (sink.target.as_str(), sink.name.as_str()),
        ("sensors-to-s3-sink", "default")
    );
    assert_eq!(sink.config.len(), 1);
    assert!(
        sink.config[0].starts_with("sensors_to_s3-sensors_to_s3_sink_"),
        "{:?}",
        sink.config
    );

    // Another bucket: the sink link's config has another name, the source link's the same.
    let changed = b.links();
    let changed_sink = changed.iter().find(|l| l.source_id == "sensors-to-s3-step").unwrap();
    assert_ne!(changed_sink.config, sink.config);
    assert_eq!(
        changed.iter().find(|l| l.source_id == "sensors-to-s3-source"),
        Some(ingest)
    );
}

fn refused(yaml: &str) -> (String, String) {
    match PipelineSpec::parse(yaml) {
        Err(SpecError::Field { path, expected }) => (path, expected),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn invalid_specs_are_refused_with_the_field_path_and_what_was_expected() {
    let good = mqtt_to_s3();
    // (text in the good spec, replaced by, field path, part of what was expected)
    let cases: [(&str, &str, &str, &str); 10] = [
        (
            "provider: s3",
            "provider: ftp",
            "sink.provider",
            "one of jetstream, kafka, modbus, mqtt, s3",
        ),
        (
            "provider: mqtt",
            "provider: nope",
            "source.provider",
            "one of http-inproc, jetstream, kafka, modbus, mqtt, s3",
        ),
        (
            "lattice: customer-a",
            "lattice: customer.a",
            "lattice",
            "letters, digits",
        ),
        ("name: sensors-to-s3", "name: Sensors_To_S3", "name", "lowercase"),
        ("steps/sensors.wasm", "steps/sensors.py", "step.component", "`.wasm`"),
        (
            "    qos: 1\n",
            "    qos: [1]\n",
            "source.config.qos",
            "expected a string, number or boolean",
        ),
        (
            "  component: steps/sensors.wasm\n",
            "  component: steps/sensors.wasm\n  instances: many\n",
            "step.instances",
            "invalid type",
        ),
        ("lattice: customer-a\n", "", ".", "missing field `lattice`"),
        (
            "  provider: s3\n",
            "  provider: s3\n  topic: x\n",
            "sink.topic",
            "unknown field `topic`",
        ),
        (
            "    bucket: sensors\n",
            "    bucket: sensors\n    access_key_id: AKIA\n",
            "sink.secrets.access_key_id",
            "either as config or as a secret",
        ),
    ];
    for (from, to, path, expected) in cases {
        assert!(good.contains(from), "{from}");
        let (got_path, got_expected) = refused(&good.replace(from, to));
        assert_eq!(got_path, path, "{got_expected}");
        assert!(
            got_expected.contains(expected),
            "{path}: `{got_expected}` lacks `{expected}`"
        );
    }
    // The binary says the same, and fails.
    let dir = std::env::temp_dir().join(format!("sluice-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, good.replace("provider: s3", "provider: ftp")).unwrap();
    let output = Command::new(SLUICE).arg("render").arg(&bad).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sink.provider: expected a sink provider"), "{stderr}");
}

#[test]
fn source_instances_scale_the_source_provider_only() {
    use sluice_deploy::manifest::Trait;
    let instances = |m: &sluice_deploy::manifest::Manifest, name: &str| {
        m.spec
            .components
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .traits
            .iter()
            .find_map(|t| match t {
                Trait::Spreadscaler { instances, .. } => Some(*instances),
                _ => None,
            })
            .unwrap()
    };
    let one = PipelineSpec::parse(&mqtt_to_s3()).unwrap();
    let m = render(&one, &Images::under(DEFAULT_ARTIFACTS, &one));
    assert_eq!((instances(&m, "source"), instances(&m, "sink")), (1, 1));
    let two =
        PipelineSpec::parse(&mqtt_to_s3().replace("  provider: mqtt\n", "  provider: mqtt\n  instances: 2\n")).unwrap();
    assert_eq!(two.source.instances, Some(2));
    let m = render(&two, &Images::under(DEFAULT_ARTIFACTS, &two));
    assert_eq!((instances(&m, "source"), instances(&m, "sink")), (2, 1));

    for (from, to, path, expected) in [
        (
            "  provider: mqtt\n",
            "  provider: mqtt\n  instances: 0\n",
            "source.instances",
            "at least 1",
        ),
        (
            "  provider: s3\n",
            "  provider: s3\n  instances: 2\n",
            "sink.instances",
            "only `source.instances`",
        ),
        (
            "  provider: mqtt\n",
            "  provider: mqtt\n  instances: 2\n  shared: plant\n",
            "source.instances",
            "with `shared`",
        ),
    ] {
        let (got_path, got_expected) = refused(&mqtt_to_s3().replace(from, to));
        assert_eq!(got_path, path, "{got_expected}");
        assert!(
            got_expected.contains(expected),
            "{path}: `{got_expected}` lacks `{expected}`"
        );
    }
}

#[test]
fn sluice_schema_prints_the_committed_schema_and_render_refuses_a_bad_config_by_its_path() {
    let output = Command::new(SLUICE).args(["schema", "mqtt"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../provider-mqtt/schema.json")).unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), committed);
    assert!(!Command::new(SLUICE).args(["schema", "ftp"]).status().unwrap().success());

    let spec = std::env::temp_dir().join(format!("sluice-bad-config-{}.yaml", std::process::id()));
    std::fs::write(
        &spec,
        mqtt_to_s3().replace("max_object_age: 2s", "max_object_age: soon"),
    )
    .unwrap();
    let output = Command::new(SLUICE).arg("render").arg(&spec).output().unwrap();
    std::fs::remove_file(&spec).unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sink.config.max_object_age: expected a duration like"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
