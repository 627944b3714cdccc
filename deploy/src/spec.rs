//! A customer's pipeline spec (`pipeline.yaml`): which lattice, which source provider with what
//! config, which step component, which sink provider with what config, and which wasmCloud secrets
//! (by name) the providers get. [`crate::manifest::render`] turns it into a wadm manifest.
//!
//! ```yaml
//! name: sensors-to-s3
//! lattice: customer-a
//! source:
//!   provider: mqtt
//!   config: { url: "mqtt://broker:1883", topics: "sensors/#" }
//! step:
//!   component: step.wasm          # relative to this file
//! sink:
//!   provider: s3
//!   config: { endpoint: "http://s3:8333", bucket: sensors }
//!   secrets: { access_key_id: customer-a-s3-key-id, secret_access_key: customer-a-s3-secret }
//! ```
//!
//! Swapping the sink is a change of `sink`; the step file stays the same.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A provider Sluice ships, by its short name in a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderKind {
    /// The name used in specs, e.g. `mqtt`.
    pub name: &'static str,
    /// Whether it can feed a step (`source:`).
    pub source: bool,
    /// Whether a step can write to it (`sink:`).
    pub sink: bool,
}

impl ProviderKind {
    /// The cargo package and provider name, e.g. `sluice-provider-mqtt` (also the archive's stem).
    #[must_use]
    pub fn package(&self) -> String {
        format!("sluice-provider-{}", self.name)
    }
}

/// Every provider a spec may name.
pub const PROVIDERS: [ProviderKind; 6] = [
    ProviderKind {
        name: "http-inproc",
        source: true,
        sink: false,
    },
    ProviderKind {
        name: "jetstream",
        source: true,
        sink: true,
    },
    ProviderKind {
        name: "kafka",
        source: true,
        sink: true,
    },
    ProviderKind {
        name: "modbus",
        source: true,
        sink: true,
    },
    ProviderKind {
        name: "mqtt",
        source: true,
        sink: true,
    },
    ProviderKind {
        name: "s3",
        source: true,
        sink: true,
    },
];

/// A spec that cannot be deployed: where (a field path such as `sink.provider`) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The spec file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// A field is missing, has the wrong type or a value outside what is allowed.
    #[error("{path}: {expected}")]
    Field {
        /// The field path, e.g. `sink.config.bucket` (`.` for the document itself).
        path: String,
        /// What was expected (and what was found, when known).
        expected: String,
    },
}

impl SpecError {
    pub(crate) fn field(path: impl Into<String>, expected: impl Into<String>) -> Self {
        Self::Field {
            path: path.into(),
            expected: expected.into(),
        }
    }

    /// The field path, for field errors.
    #[must_use]
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Field { path, .. } => Some(path),
            Self::Read { .. } => None,
        }
    }
}

/// A pipeline: one source, one step, one sink, on one lattice.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The pipeline's name: the wadm application name and the prefix of every id it creates
    /// (lowercase letters, digits and `-`).
    pub name: String,
    /// The lattice it is deployed to (letters, digits, `-` and `_`).
    pub lattice: String,
    /// The application version (default `0.1.0`).
    #[serde(default = "default_version")]
    pub version: String,
    /// A line describing the pipeline.
    #[serde(default)]
    pub description: Option<String>,
    /// Where records come from.
    pub source: Endpoint,
    /// The composed step component.
    pub step: Step,
    /// Where results go.
    pub sink: Endpoint,
    /// The wasmCloud secrets backend the referenced secrets come from (default `nats-kv`).
    #[serde(default = "default_secret_backend")]
    pub secret_backend: String,
}

fn default_version() -> String {
    "0.1.0".into()
}

fn default_secret_backend() -> String {
    "nats-kv".into()
}

/// A source or sink: a provider, its link config and its secrets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The provider's short name (see [`PROVIDERS`]).
    pub provider: String,
    /// The link's config keys (see the provider's README), as strings.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    /// Secrets the link gets: config key the provider reads -> name of the secret in the backend.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// The provider's own config, shared by all its links (e.g. `http-inproc`'s listen `address`).
    #[serde(default)]
    pub provider_config: BTreeMap<String, ConfigValue>,
    /// Use the provider of a shared wadm application of this name (see
    /// [`crate::manifest::render_shared_providers`]) instead of starting one for this pipeline:
    /// one provider then serves many pipelines, and undeploying one drains only its links.
    #[serde(default)]
    pub shared: Option<String>,
    /// `source.instances`: how many instances of the source provider run (wadm places one per
    /// host), default 1. Every instance gets every link; a link that must have one reader (MQTT,
    /// S3, Modbus) is read by the instance holding its lease and the others stand by, so a second
    /// instance is a hot standby. Not for the sink, nor with `shared`.
    #[serde(default)]
    pub instances: Option<usize>,
}

/// A config value: written as a string, number or boolean in YAML, passed to the provider as a string.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
}

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue::String(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ConfigValue, E> {
                i64::try_from(v)
                    .map(ConfigValue::Int)
                    .map_err(|_| E::custom("expected a number up to 2^63-1"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Float(v))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) => f.write_str(s),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(n) => write!(f, "{n}"),
        }
    }
}

/// The step component.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The composed step (`.wasm`), relative to the spec file.
    pub component: PathBuf,
    /// How many invocations the host may run at once; by default
    /// [`PipelineSpec::step_instances`] matches the source's batches in flight.
    #[serde(default)]
    pub instances: Option<usize>,
}

impl PipelineSpec {
    /// How many invocations of the step the host runs at once: `step.instances`, or by default
    /// twice the batches the source keeps in flight (its `max_in_flight`: 4, or 32 for HTTP), so
    /// every batch in flight has an instance and an invocation that hangs (a lost wRPC message,
    /// waiting out the host's execution deadline) does not stop the pipeline.
    #[must_use]
    pub fn step_instances(&self) -> usize {
        self.step.instances.unwrap_or_else(|| {
            let default = if self.source.provider == "http-inproc" { 32 } else { 4 };
            let in_flight = self
                .source
                .config
                .get("max_in_flight")
                .and_then(|v| v.to_string().parse::<usize>().ok())
                .unwrap_or(default);
            in_flight.saturating_mul(2).max(1)
        })
    }

    /// Parses and checks a spec.
    pub fn parse(yaml: &str) -> Result<Self, SpecError> {
        let deserializer = serde_yaml::Deserializer::from_str(yaml);
        let spec: Self = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let message = err.into_inner().to_string();
            // serde_yaml prefixes its own path (`sink: unknown field ...`): the path is given already.
            let message = match message.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(' ') => rest.to_string(),
                _ => message,
            };
            SpecError::field(path, message)
        })?;
        spec.check()?;
        Ok(spec)
    }

    /// Reads, parses and checks a spec file.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let yaml = std::fs::read_to_string(path).map_err(|err| SpecError::Read {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        Self::parse(&yaml)
    }

    /// The source's provider.
    #[must_use]
    pub fn source_kind(&self) -> ProviderKind {
        provider_kind(&self.source.provider).expect("checked at parse")
    }

    /// The sink's provider.
    #[must_use]
    pub fn sink_kind(&self) -> ProviderKind {
        provider_kind(&self.sink.provider).expect("checked at parse")
    }

    fn check(&self) -> Result<(), SpecError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || self.name.starts_with('-')
        {
            return Err(SpecError::field(
                "name",
                format!(
                    "expected lowercase letters, digits and `-` (a wadm application name), found `{}`",
                    self.name
                ),
            ));
        }
        if self.lattice.is_empty()
            || !self
                .lattice
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SpecError::field(
                "lattice",
                format!(
                    "expected letters, digits, `-` and `_` (a NATS subject token), found `{}`",
                    self.lattice
                ),
            ));
        }
        check_endpoint("source", &self.source, |k| k.source)?;
        check_endpoint("sink", &self.sink, |k| k.sink)?;
        if self.source.provider == self.sink.provider
            && self.source.shared.is_none()
            && self.sink.shared.is_none()
            && self.source.provider_config != self.sink.provider_config
        {
            return Err(SpecError::field(
                "sink.provider_config",
                "expected the same provider config as `source.provider_config`: one provider serves both ends when they are the same kind",
            ));
        }
        if self.step.component.extension().and_then(|e| e.to_str()) != Some("wasm") {
            return Err(SpecError::field(
                "step.component",
                format!(
                    "expected a `.wasm` component file, found `{}`",
                    self.step.component.display()
                ),
            ));
        }
        if self.step.instances == Some(0) {
            return Err(SpecError::field("step.instances", "expected at least 1"));
        }
        self.check_instances()?;
        if self.secret_backend.is_empty() {
            return Err(SpecError::field("secret_backend", "expected a secrets backend name"));
        }
        Ok(())
    }
}

pub(crate) fn is_app_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The provider kind named `name`, if Sluice ships it.
#[must_use]
pub fn provider_kind(name: &str) -> Option<ProviderKind> {
    PROVIDERS.iter().copied().find(|k| k.name == name)
}

impl PipelineSpec {
    /// `source.instances`: at least 1, only on a pipeline's own source provider.
    fn check_instances(&self) -> Result<(), SpecError> {
        if self.sink.instances.is_some() {
            return Err(SpecError::field(
                "sink.instances",
                "expected no `instances` on the sink (only `source.instances` scales a provider)",
            ));
        }
        match self.source.instances {
            Some(0) => Err(SpecError::field("source.instances", "expected at least 1")),
            Some(_) if self.source.shared.is_some() => Err(SpecError::field(
                "source.instances",
                "expected no `instances` with `shared` (the shared application runs the provider)",
            )),
            _ => Ok(()),
        }
    }
}

pub(crate) fn check_endpoint(
    role: &str,
    endpoint: &Endpoint,
    can: impl Fn(&ProviderKind) -> bool,
) -> Result<(), SpecError> {
    let allowed: Vec<_> = PROVIDERS.iter().filter(|k| can(k)).map(|k| k.name).collect();
    match provider_kind(&endpoint.provider) {
        Some(kind) if can(&kind) => {}
        _ => {
            return Err(SpecError::field(
                format!("{role}.provider"),
                format!(
                    "expected a {role} provider, one of {}, found `{}`",
                    allowed.join(", "),
                    endpoint.provider
                ),
            ))
        }
    }
    if let Some(shared) = &endpoint.shared {
        if !is_app_name(shared) {
            return Err(SpecError::field(
                format!("{role}.shared"),
                format!("expected the name of a shared providers application, found `{shared}`"),
            ));
        }
        if !endpoint.provider_config.is_empty() {
            return Err(SpecError::field(
                format!("{role}.provider_config"),
                "expected no provider config with `shared` (the shared application configures the provider)",
            ));
        }
    }
    for (key, secret) in &endpoint.secrets {
        if endpoint.config.contains_key(key) {
            return Err(SpecError::field(
                format!("{role}.secrets.{key}"),
                "expected a key given either as config or as a secret, not both",
            ));
        }
        if secret.is_empty() {
            return Err(SpecError::field(
                format!("{role}.secrets.{key}"),
                "expected a secret name",
            ));
        }
    }
    crate::schemas::check_endpoint_config(
        role,
        &endpoint.provider,
        &[role],
        &endpoint.config,
        &endpoint.secrets,
        &endpoint.provider_config,
    )
}
