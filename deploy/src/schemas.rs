//! The providers' link config schemas (`provider-*/schema.json`, generated from each provider's
//! own key tables), embedded, and the check of a spec's endpoint config against them: a spec
//! with an unknown key, a value of the wrong type, or a secret given as plain config is refused
//! with the field path before anything is deployed.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde_json::Value;
use sluice_provider_core::schema::check_value;

use crate::spec::{ConfigValue, SpecError};

/// Every provider's JSON Schema, by its short name in specs.
pub const SCHEMAS: [(&str, &str); 6] = [
    ("http-inproc", include_str!("../../provider-http-inproc/schema.json")),
    ("jetstream", include_str!("../../provider-jetstream/schema.json")),
    ("kafka", include_str!("../../provider-kafka/schema.json")),
    ("modbus", include_str!("../../provider-modbus/schema.json")),
    ("mqtt", include_str!("../../provider-mqtt/schema.json")),
    ("s3", include_str!("../../provider-s3/schema.json")),
];

/// The JSON Schema of `provider`'s config, as `sluice schema <provider>` prints it.
#[must_use]
pub fn schema_json(provider: &str) -> Option<&'static str> {
    SCHEMAS
        .iter()
        .find(|(name, _)| *name == provider)
        .map(|(_, json)| *json)
}

fn parsed(provider: &str) -> Option<&'static Value> {
    static PARSED: OnceLock<HashMap<&'static str, Value>> = OnceLock::new();
    PARSED
        .get_or_init(|| {
            SCHEMAS
                .iter()
                .map(|(name, json)| {
                    (
                        *name,
                        serde_json::from_str(json).expect("an embedded schema.json is JSON"),
                    )
                })
                .collect()
        })
        .get(provider)
}

/// One key's entry in a role's object: its own property, or the property of its family
/// (`patternProperties` with `x-sluice-prefix`).
fn property<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(p) = object["properties"].get(key) {
        return Some(p);
    }
    object["patternProperties"].as_object()?.values().find(|p| {
        p["x-sluice-prefix"]
            .as_str()
            .is_some_and(|prefix| key.len() > prefix.len() && key.starts_with(prefix))
    })
}

/// Checks the link config and secrets of an endpoint at `path` (`source`, `sink`, `hops`) of a
/// `provider` used in `roles` (`source`, `sink`; both for hops, which give one config to both
/// ends), and the values of its known provider config keys.
///
/// # Errors
/// A [`SpecError::Field`] at `path.config.KEY` or `path.secrets.KEY` saying what was expected.
pub(crate) fn check_endpoint_config(
    path: &str,
    provider: &str,
    roles: &[&str],
    config: &BTreeMap<String, ConfigValue>,
    secrets: &BTreeMap<String, String>,
    provider_config: &BTreeMap<String, ConfigValue>,
) -> Result<(), SpecError> {
    let Some(schema) = parsed(provider) else {
        return Ok(());
    };
    let objects: Vec<&Value> = roles.iter().map(|role| &schema["properties"][*role]).collect();
    let find = |key: &str| objects.iter().find_map(|o| property(o, key));
    for (key, value) in config {
        let field = format!("{path}.config.{key}");
        let Some(p) = find(key) else {
            return Err(unknown(&field, provider, roles, schema, key));
        };
        if p["x-sluice-secret"] == "only" {
            return Err(SpecError::field(
                field,
                format!("expected a wasmCloud secret: `{key}` is a secret, give its secret's name under `{path}.secrets`, never its value as config"),
            ));
        }
        check(&field, p, value)?;
    }
    for key in secrets.keys() {
        let field = format!("{path}.secrets.{key}");
        let Some(p) = find(key) else {
            return Err(unknown(&field, provider, roles, schema, key));
        };
        if p.get("x-sluice-secret").is_none() {
            return Err(SpecError::field(
                field,
                format!("expected a plain config key under `{path}.config`: the {provider} provider reads `{key}` only as config, not as a secret"),
            ));
        }
    }
    let own = &schema["properties"]["provider_config"];
    for (key, value) in provider_config {
        if let Some(p) = property(own, key) {
            check(&format!("{path}.provider_config.{key}"), p, value)?;
        }
    }
    Ok(())
}

fn check(field: &str, property: &Value, value: &ConfigValue) -> Result<(), SpecError> {
    let format = property["x-sluice-type"].as_str().unwrap_or("string");
    let allowed: Option<Vec<String>> = property["enum"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect());
    check_value(
        format,
        allowed.as_deref(),
        property["minimum"].as_i64(),
        &value.to_string(),
    )
    .map_err(|expected| SpecError::field(field, expected))
}

fn unknown(field: &str, provider: &str, roles: &[&str], schema: &Value, key: &str) -> SpecError {
    let other = ["source", "sink"]
        .into_iter()
        .find(|r| !roles.contains(r) && property(&schema["properties"][*r], key).is_some());
    let expected = match other {
        Some(other) => format!("expected a {} key of the {provider} provider: `{key}` is read only on {other} links", roles.join("/")),
        None => format!("expected a config key of the {provider} provider, found unknown `{key}` (`sluice schema {provider}` lists them)"),
    };
    SpecError::field(field, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, ConfigValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ConfigValue::String(v.to_string())))
            .collect()
    }

    fn refused(provider: &str, role: &str, pairs: &[(&str, &str)], secrets: &[&str]) -> (String, String) {
        let secrets = secrets.iter().map(|k| (k.to_string(), "name".to_string())).collect();
        match check_endpoint_config(role, provider, &[role], &config(pairs), &secrets, &BTreeMap::new()) {
            Err(SpecError::Field { path, expected }) => (path, expected),
            other => panic!("{pairs:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn every_provider_has_a_schema_for_its_roles() {
        for kind in crate::spec::PROVIDERS {
            let schema = parsed(kind.name).unwrap_or_else(|| panic!("no schema for {}", kind.name));
            assert_eq!(schema["x-sluice-provider"], kind.name);
            assert_eq!(
                schema["properties"].get("source").is_some(),
                kind.source,
                "{}",
                kind.name
            );
            assert_eq!(schema["properties"].get("sink").is_some(), kind.sink, "{}", kind.name);
        }
    }

    #[test]
    fn bad_configs_are_refused_by_field_path() {
        let (path, expected) = refused("s3", "source", &[("poll_interval", "soon")], &[]);
        assert_eq!(path, "source.config.poll_interval");
        assert!(expected.starts_with("expected a duration like"), "{expected}");
        let (path, expected) = refused("mqtt", "source", &[("tpoics", "a/#")], &[]);
        assert_eq!(path, "source.config.tpoics");
        assert!(expected.contains("unknown `tpoics`"), "{expected}");
        let (path, expected) = refused("mqtt", "sink", &[("topics", "a/#")], &[]);
        assert_eq!(path, "sink.config.topics");
        assert!(expected.contains("read only on source links"), "{expected}");
        let (path, expected) = refused("mqtt", "source", &[("password", "hunter2")], &[]);
        assert_eq!(path, "source.config.password");
        assert!(
            expected.contains("secret") && !expected.contains("hunter2"),
            "{expected}"
        );
        let (path, _) = refused("mqtt", "source", &[], &["topics"]);
        assert_eq!(path, "source.secrets.topics");
        let (path, expected) = refused("kafka", "source", &[("start", "middle")], &[]);
        assert_eq!(path, "source.config.start");
        assert!(expected.contains("earliest, latest"), "{expected}");
        let (path, expected) = refused("kafka", "source", &[("max_in_flight", "0")], &[]);
        assert_eq!(path, "source.config.max_in_flight");
        assert!(expected.contains("at least 1"), "{expected}");
        let (path, _) = refused("s3", "sink", &[("part_size", "8 furlongs")], &[]);
        assert_eq!(path, "sink.config.part_size");
    }

    #[test]
    fn good_configs_and_families_pass() {
        let ok = |provider: &str, role: &str, pairs: &[(&str, &str)], secrets: &[&str]| {
            let secrets = secrets.iter().map(|k| (k.to_string(), "name".to_string())).collect();
            check_endpoint_config(role, provider, &[role], &config(pairs), &secrets, &BTreeMap::new())
        };
        ok(
            "kafka",
            "sink",
            &[("kafka.client.id", "x"), ("topic", "t")],
            &["kafka.ssl.key.password", "sasl_password"],
        )
        .unwrap();
        ok(
            "mqtt",
            "source",
            &[("qos", "2"), ("linger", "5ms"), ("sensitive", "yes")],
            &["username"],
        )
        .unwrap();
        ok(
            "jetstream",
            "source",
            &[("max_age", "72h"), ("replicas", "3")],
            &["creds"],
        )
        .unwrap();
        // The disk buffer's keys hold on source links as on sink links.
        for (provider, role) in [("http-inproc", "source"), ("modbus", "source"), ("kafka", "sink")] {
            let buffer = [
                ("buffer", "disk"),
                ("buffer_dir", "/var/lib/sluice/buffer"),
                ("buffer_max_bytes", "64MiB"),
                ("buffer_max_age", "1h"),
                ("buffer_full", "drop_oldest"),
            ];
            ok(provider, role, &buffer, &[]).unwrap_or_else(|e| panic!("{provider} {role}: {e}"));
        }
    }

    fn examples() -> Vec<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines");
        let mut specs: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.to_string_lossy().ends_with(".wadm.yaml"))
            .collect();
        specs.sort();
        specs
    }

    #[test]
    fn every_committed_example_passes_its_schemas_and_renders() {
        use crate::dag::{render_dag, AnySpec, DagImages};
        use crate::manifest::{render, Images, DEFAULT_ARTIFACTS};
        let specs = examples();
        assert!(specs.len() >= 6, "{specs:?}");
        for path in specs {
            let yaml = match AnySpec::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
                AnySpec::Single(spec) => render(&spec, &Images::under(DEFAULT_ARTIFACTS, &spec)).to_yaml(),
                AnySpec::Dag(spec) => render_dag(&spec, &DagImages::under(DEFAULT_ARTIFACTS, &spec)).to_yaml(),
            };
            assert!(yaml.contains("kind: Application"), "{}", path.display());
        }
    }

    #[test]
    fn a_spec_with_a_bad_config_is_refused_before_render_by_field_path() {
        use crate::dag::AnySpec;
        let one = |sink: &str| {
            format!(
                "name: p\nlattice: l\nsource: {{ provider: mqtt, config: {{ url: 'mqtt://127.0.0.1:1883', topics: 'a/#' }} }}\n\
                 step: {{ component: steps/s.wasm }}\nsink: {sink}\n"
            )
        };
        let field = |yaml: &str| match AnySpec::parse(yaml) {
            Err(SpecError::Field { path, expected }) => format!("{path}: {expected}"),
            other => panic!("not refused: {other:?}"),
        };
        let err = field(&one("{ provider: s3, config: { bucket: b, max_object_age: soon } }"));
        assert!(
            err.starts_with("sink.config.max_object_age: expected a duration like"),
            "{err}"
        );
        let err = field(&one(
            "{ provider: s3, config: { bucket: b, secret_access_key: hunter2 } }",
        ));
        assert!(
            err.starts_with("sink.config.secret_access_key: expected a wasmCloud secret"),
            "{err}"
        );
        let err = field(&one("{ provider: kafka, config: { topic: t, compresion: zstd } }"));
        assert!(
            err.starts_with("sink.config.compresion: expected a config key of the kafka provider"),
            "{err}"
        );
        let ok = one("{ provider: kafka, config: { topic: t, compression: zstd, max_concurrent_writes: 8 } }");
        AnySpec::parse(&ok).unwrap();

        let dag = |sinks: &str, hops: &str| {
            format!(
                "name: p\nlattice: l\nsource: {{ provider: mqtt, config: {{ url: 'mqtt://127.0.0.1:1883', topics: 'a/#' }} }}\n\
                 steps:\n  clean: {{ component: steps/clean.wasm, to: [archive] }}\nsinks:\n  archive: {sinks}\n{hops}"
            )
        };
        let err = field(&dag("{ provider: s3, config: { bucket: b, spool: maybe } }", ""));
        assert!(
            err.starts_with("sinks.archive.config.spool: expected true or false"),
            "{err}"
        );
        let err = field(&dag(
            "{ provider: s3, config: { bucket: b } }",
            "hops: { config: { max_age: forever } }",
        ));
        assert!(err.starts_with("hops.config.max_age: expected a duration"), "{err}");
        let err = field(&dag(
            "{ provider: s3, config: { bucket: b } }",
            "hops: { config: { password: p } }",
        ));
        assert!(
            err.starts_with("hops.config.password: expected a wasmCloud secret"),
            "{err}"
        );
        AnySpec::parse(&dag(
            "{ provider: s3, config: { bucket: b } }",
            "hops: { config: { max_age: 72h, ack_wait: 5s } }",
        ))
        .unwrap();
    }
}
