//! A multi-step pipeline spec: one source, named `steps:` each saying where its output goes
//! (`to:`), named `sinks:`, and the JetStream hops between them.
//!
//! ```yaml
//! name: sensors-fanout
//! lattice: customer-a
//! source: { provider: mqtt, config: { url: "mqtt://broker:1883", topics: "sensors/#" } }
//! steps:
//!   clean:  { component: steps/clean.wasm, to: [archive, enrich] }
//!   enrich: { component: steps/enrich.wasm, instances: 4, to: [warehouse] }
//! sinks:
//!   archive:   { provider: s3, config: { endpoint: "http://s3:8333", bucket: archive } }
//!   warehouse: { provider: kafka, config: { bootstrap_servers: "kafka:9092", topic: readings } }
//! hops: { config: { url: "nats://nats:4222", max_age: 72h } }
//! ```
//!
//! Every step writes to its own JetStream stream (the *hop*); each step or sink it sends to reads
//! that stream with a durable consumer of its own, so every branch gets every record and a slow
//! branch has its own backlog. A sink is called by a trusted relay step (`relay:`, built by
//! `sluice compose --relay`). `source: { pipeline: other, output: step }` reads another pipeline's
//! hop on the same lattice instead of a provider.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::manifest::Spread;
use crate::spec::{check_endpoint, is_app_name, ConfigValue, Endpoint, PipelineSpec, ProviderKind, SpecError};

/// The provider every hop goes through.
pub const HOP_PROVIDER: &str = "jetstream";

/// Hop config keys Sluice sets itself: a spec giving them is refused.
pub const RESERVED_HOP_KEYS: [&str; 5] = ["subject_prefix", "subject", "stream", "durable", "dead_letter_subject"];

/// Where a relay step is read from when the spec does not say (relative to the spec file).
pub const DEFAULT_RELAY: &str = "steps/relay.wasm";

/// A spec file: the one-step form (`step:`/`sink:`) or the multi-step form (`steps:`/`sinks:`).
#[derive(Debug, Clone, PartialEq)]
pub enum AnySpec {
    /// One source, one step, one sink.
    Single(PipelineSpec),
    /// Several steps and sinks joined by JetStream hops.
    Dag(DagSpec),
}

impl AnySpec {
    /// Parses and checks a spec of either form: one with `steps:` is a multi-step spec.
    pub fn parse(yaml: &str) -> Result<Self, SpecError> {
        let value: serde_yaml::Value = from_yaml(".", serde_yaml::Deserializer::from_str(yaml))?;
        if value.get("steps").is_some() {
            DagSpec::parse(yaml).map(Self::Dag)
        } else {
            PipelineSpec::parse(yaml).map(Self::Single)
        }
    }

    /// Reads, parses and checks a spec file of either form.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        Self::parse(&read(path)?)
    }

    /// The pipeline's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Single(s) => &s.name,
            Self::Dag(d) => &d.name,
        }
    }

    /// The pipeline's lattice.
    #[must_use]
    pub fn lattice(&self) -> &str {
        match self {
            Self::Single(s) => &s.lattice,
            Self::Dag(d) => &d.lattice,
        }
    }

    /// The secrets backend its secrets come from.
    #[must_use]
    pub fn secret_backend(&self) -> &str {
        match self {
            Self::Single(s) => &s.secret_backend,
            Self::Dag(d) => &d.secret_backend,
        }
    }
}

fn read(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path).map_err(|err| SpecError::Read {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// Deserializes `T`, errors carrying the field path under `prefix` (`.` for the document).
fn from_yaml<'de, T: Deserialize<'de>>(
    prefix: &str,
    deserializer: impl serde::Deserializer<'de, Error = serde_yaml::Error>,
) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let inner = err.path().to_string();
        let path = match (prefix, inner.as_str()) {
            (".", _) => inner,
            (_, ".") => prefix.to_string(),
            _ => format!("{prefix}.{inner}"),
        };
        let message = err.into_inner().to_string();
        // serde_yaml prefixes its own path (`sink: unknown field ...`): the path is given already.
        let message = match message.split_once(": ") {
            Some((head, rest)) if !head.contains(' ') => rest.to_string(),
            _ => message,
        };
        SpecError::field(path, message)
    })
}

/// `err` of an endpoint checked as `role`, its path moved under `path` (`sink.provider` ->
/// `sinks.archive.provider`).
fn at(path: &str, role: &str, err: SpecError) -> SpecError {
    match err {
        SpecError::Field { path: p, expected } => SpecError::field(
            p.strip_prefix(role).map_or(p.clone(), |rest| format!("{path}{rest}")),
            expected,
        ),
        other => other,
    }
}

fn from_value<T: DeserializeOwned>(prefix: &str, value: serde_yaml::Value) -> Result<T, SpecError> {
    from_yaml(prefix, value)
}

/// A multi-step pipeline on one lattice.
#[derive(Debug, Clone, PartialEq)]
pub struct DagSpec {
    /// The pipeline's name (lowercase letters, digits and `-`): the wadm application and the
    /// prefix of every id, stream and consumer it creates.
    pub name: String,
    /// The lattice it is deployed to (letters, digits, `-` and `_`).
    pub lattice: String,
    /// The application version (default `0.1.0`).
    pub version: String,
    /// A line describing the pipeline.
    pub description: Option<String>,
    /// Where records come from: a source provider, or another pipeline's hop.
    pub source: DagSource,
    /// The steps, by name.
    pub steps: BTreeMap<String, DagStep>,
    /// The sinks, by name.
    pub sinks: BTreeMap<String, Endpoint>,
    /// The JetStream hops: server, retention and credentials of every step's stream.
    pub hops: Hops,
    /// The relay step that calls each sink.
    pub relay: Relay,
    /// The wasmCloud secrets backend the referenced secrets come from (default `nats-kv`).
    pub secret_backend: String,
}

/// [`DagSpec`] as written, `source` not typed yet (its form depends on its keys), so its errors
/// keep their field paths.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    name: String,
    lattice: String,
    #[serde(default = "default_version")]
    version: String,
    #[serde(default)]
    description: Option<String>,
    source: serde_yaml::Value,
    steps: BTreeMap<String, DagStep>,
    #[serde(default)]
    sinks: BTreeMap<String, Endpoint>,
    #[serde(default)]
    hops: Hops,
    #[serde(default)]
    relay: Relay,
    #[serde(default = "default_secret_backend")]
    secret_backend: String,
}

fn default_version() -> String {
    "0.1.0".into()
}

fn default_secret_backend() -> String {
    "nats-kv".into()
}

/// A multi-step pipeline's source.
#[derive(Debug, Clone, PartialEq)]
pub enum DagSource {
    /// A source provider with its link config.
    Provider(Endpoint),
    /// Another pipeline's hop on the same lattice (a reusable sub-pipeline).
    Pipeline(PipelineRef),
}

/// Another pipeline's output: the hop stream of one of its steps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineRef {
    /// The other pipeline's name.
    pub pipeline: String,
    /// The step of that pipeline whose output is read.
    pub output: String,
    /// Its lattice: only the pipeline's own is allowed (pipelines never read across lattices).
    #[serde(default)]
    pub lattice: Option<String>,
}

/// A step of a multi-step pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagStep {
    /// The composed step (`.wasm`), relative to the spec file.
    pub component: PathBuf,
    /// How many invocations the host may run at once (default: twice the batches its inputs keep
    /// in flight).
    #[serde(default)]
    pub instances: Option<usize>,
    /// The steps and sinks its output goes to (each reads the step's hop with its own consumer).
    #[serde(default)]
    pub to: Vec<String>,
    /// How wadm spreads its instances over the lattice's hosts by their labels, e.g.
    /// `[{ name: zone-a, requirements: { zone: a } }, { name: zone-b, requirements: { zone: b } }]`
    /// (default: all on one host).
    #[serde(default)]
    pub spread: Vec<Spread>,
}

/// The JetStream hops' link config (see provider-jetstream's README): the server `url`,
/// retention (`max_age`, `max_bytes`, `storage`, `replicas`), `ack_wait`, ... and credentials as
/// secrets. Subjects, streams and consumers are named by Sluice.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hops {
    /// Config keys given to every hop link (both ends).
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    /// Secrets given to every hop link: config key -> secret name.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Use the JetStream provider of this shared wadm application.
    #[serde(default)]
    pub shared: Option<String>,
}

/// The relay step in front of every sink: the trusted in and out components around an identity
/// logic (`sluice compose --relay`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// The composed relay, relative to the spec file (default `steps/relay.wasm`).
    #[serde(default = "default_relay")]
    pub component: PathBuf,
    /// Instances of each sink's relay (default: twice the batches its inputs keep in flight).
    #[serde(default)]
    pub instances: Option<usize>,
}

fn default_relay() -> PathBuf {
    PathBuf::from(DEFAULT_RELAY)
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            component: default_relay(),
            instances: None,
        }
    }
}

/// What feeds a step or sink: the source, or a step's hop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    /// The pipeline's source (a provider, or another pipeline's hop).
    Source,
    /// The hop of this step.
    Step(String),
}

impl DagSpec {
    /// Parses and checks a multi-step spec.
    pub fn parse(yaml: &str) -> Result<Self, SpecError> {
        let written: Written = from_yaml(".", serde_yaml::Deserializer::from_str(yaml))?;
        let source = if written.source.get("pipeline").is_some() {
            DagSource::Pipeline(from_value("source", written.source)?)
        } else {
            DagSource::Provider(from_value("source", written.source)?)
        };
        let spec = Self {
            name: written.name,
            lattice: written.lattice,
            version: written.version,
            description: written.description,
            source,
            steps: written.steps,
            sinks: written.sinks,
            hops: written.hops,
            relay: written.relay,
            secret_backend: written.secret_backend,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Reads, parses and checks a multi-step spec file.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        Self::parse(&read(path)?)
    }

    /// Sets the hops' server `url` to `url` when the spec does not name one (`sluice run` and
    /// `sluice deploy`: the lattice's own nats-server); returns whether it did.
    pub fn default_hops_url(&mut self, url: &str) -> bool {
        if self.hops.config.contains_key("url") {
            return false;
        }
        self.hops
            .config
            .insert("url".into(), ConfigValue::String(url.to_string()));
        true
    }

    /// The step the source feeds: the one no step sends to.
    #[must_use]
    pub fn first_step(&self) -> &str {
        let fed: BTreeSet<&str> = self
            .steps
            .values()
            .flat_map(|s| s.to.iter().map(String::as_str))
            .collect();
        self.steps
            .keys()
            .find(|name| !fed.contains(name.as_str()))
            .expect("checked at parse")
    }

    /// What feeds `consumer` (a step or a sink), in order.
    #[must_use]
    pub fn inputs(&self, consumer: &str) -> Vec<Input> {
        let mut inputs: Vec<Input> = self
            .steps
            .iter()
            .filter(|(_, s)| s.to.iter().any(|t| t == consumer))
            .map(|(name, _)| Input::Step(name.clone()))
            .collect();
        if self.steps.contains_key(consumer) && consumer == self.first_step() {
            inputs.insert(0, Input::Source);
        }
        inputs
    }

    /// The source provider, or `None` when the source is another pipeline's hop.
    #[must_use]
    pub fn source_endpoint(&self) -> Option<&Endpoint> {
        match &self.source {
            DagSource::Provider(e) => Some(e),
            DagSource::Pipeline(_) => None,
        }
    }

    /// The batches one link of `input` keeps in flight (the engine's `max_in_flight`: 4 by
    /// default, 32 for HTTP).
    fn in_flight(&self, input: &Input) -> usize {
        let (provider, config) = match (input, self.source_endpoint()) {
            (Input::Source, Some(e)) => (e.provider.as_str(), &e.config),
            _ => (HOP_PROVIDER, &self.hops.config),
        };
        let default = if provider == "http-inproc" { 32 } else { 4 };
        config
            .get("max_in_flight")
            .and_then(|v| v.to_string().parse::<usize>().ok())
            .unwrap_or(default)
    }

    /// Instances of a step or relay fed by `consumer`'s inputs: `instances`, or twice the batches
    /// all its inputs keep in flight, so every batch in flight has an instance.
    #[must_use]
    pub fn instances(&self, consumer: &str, instances: Option<usize>) -> usize {
        instances.unwrap_or_else(|| {
            let in_flight: usize = self.inputs(consumer).iter().map(|i| self.in_flight(i)).sum();
            in_flight.saturating_mul(2).max(1)
        })
    }

    /// The provider kinds this pipeline runs itself (not shared), each with the endpoint whose
    /// provider config it takes; the hop provider included.
    #[must_use]
    pub fn providers(&self) -> BTreeMap<&'static str, BTreeMap<String, ConfigValue>> {
        let mut providers = BTreeMap::new();
        if self.hops.shared.is_none() {
            providers.insert(HOP_PROVIDER, BTreeMap::new());
        }
        let endpoints = self.source_endpoint().into_iter().chain(self.sinks.values());
        for endpoint in endpoints.filter(|e| e.shared.is_none()) {
            let kind = crate::spec::provider_kind(&endpoint.provider).expect("checked at parse");
            providers.insert(kind.name, endpoint.provider_config.clone());
        }
        providers
    }

    /// Instances of the provider of `kind` the pipeline runs itself: the most any of its
    /// endpoints of that kind asks for (`source.instances`, `sinks.<name>.instances`), default 1.
    /// Every instance gets every link; a relay's calls to a sink go to one of its instances.
    #[must_use]
    pub fn provider_instances(&self, kind: &str) -> usize {
        self.source_endpoint()
            .into_iter()
            .chain(self.sinks.values())
            .filter(|e| e.shared.is_none() && e.provider == kind)
            .filter_map(|e| e.instances)
            .max()
            .unwrap_or(1)
    }

    /// `instances` of the source and sinks: at least 1, only on a pipeline's own provider.
    fn check_endpoint_instances(&self) -> Result<(), SpecError> {
        let endpoints = self
            .source_endpoint()
            .map(|e| ("source".to_string(), e))
            .into_iter()
            .chain(self.sinks.iter().map(|(n, e)| (format!("sinks.{n}"), e)));
        for (path, endpoint) in endpoints {
            match endpoint.instances {
                Some(0) => return Err(SpecError::field(format!("{path}.instances"), "expected at least 1")),
                Some(n) if n > 1 && path != "source" && endpoint.provider == "mqtt" => return Err(SpecError::field(
                    format!("{path}.instances"),
                    "expected no more than 1 instance of an MQTT sink (its instances would share one MQTT client id)",
                )),
                Some(_) if endpoint.shared.is_some() => {
                    return Err(SpecError::field(
                        format!("{path}.instances"),
                        "expected no `instances` with `shared` (the shared application runs the provider)",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), SpecError> {
        if !is_app_name(&self.name) {
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
        match &self.source {
            DagSource::Provider(endpoint) => check_endpoint("source", endpoint, |k| k.source)?,
            DagSource::Pipeline(r) => self.check_pipeline_ref(r)?,
        }
        self.check_names()?;
        self.check_edges()?;
        for (name, sink) in &self.sinks {
            check_endpoint("sink", sink, |k| k.sink).map_err(|err| at(&format!("sinks.{name}"), "sink", err))?;
            if self.inputs(name).is_empty() {
                return Err(SpecError::field(
                    format!("sinks.{name}"),
                    format!("expected a step sending to it (`to: [{name}]`), found none"),
                ));
            }
        }
        self.check_endpoint_instances()?;
        self.check_hops()?;
        self.check_providers()?;
        for (path, component) in self
            .steps
            .iter()
            .map(|(n, s)| (format!("steps.{n}.component"), &s.component))
            .chain([("relay.component".to_string(), &self.relay.component)])
        {
            if component.extension().and_then(|e| e.to_str()) != Some("wasm") {
                return Err(SpecError::field(
                    path,
                    format!("expected a `.wasm` component file, found `{}`", component.display()),
                ));
            }
        }
        for (path, instances) in self
            .steps
            .iter()
            .map(|(n, s)| (format!("steps.{n}.instances"), s.instances))
            .chain([("relay.instances".to_string(), self.relay.instances)])
        {
            if instances == Some(0) {
                return Err(SpecError::field(path, "expected at least 1"));
            }
        }
        for (name, step) in &self.steps {
            let mut names = BTreeSet::new();
            for (i, share) in step.spread.iter().enumerate() {
                let path = |field: &str| format!("steps.{name}.spread[{i}].{field}");
                if !names.insert(share.name.as_str()) || share.name.is_empty() {
                    return Err(SpecError::field(path("name"), "expected a name of its own"));
                }
                if share.requirements.is_empty() {
                    return Err(SpecError::field(
                        path("requirements"),
                        "expected the host labels this share runs on",
                    ));
                }
                if share.weight == Some(0) {
                    return Err(SpecError::field(path("weight"), "expected at least 1"));
                }
            }
        }
        if self.secret_backend.is_empty() {
            return Err(SpecError::field("secret_backend", "expected a secrets backend name"));
        }
        Ok(())
    }

    fn check_pipeline_ref(&self, r: &PipelineRef) -> Result<(), SpecError> {
        if let Some(lattice) = &r.lattice {
            if *lattice != self.lattice {
                return Err(SpecError::field(
                    "source.lattice",
                    format!(
                        "expected this pipeline's own lattice `{}`: a pipeline reads only pipelines of its lattice, found `{lattice}`",
                        self.lattice
                    ),
                ));
            }
        }
        for (key, value) in [("pipeline", &r.pipeline), ("output", &r.output)] {
            if !is_app_name(value) {
                return Err(SpecError::field(
                    format!("source.{key}"),
                    format!("expected lowercase letters, digits and `-`, found `{value}`"),
                ));
            }
        }
        if r.pipeline == self.name {
            return Err(SpecError::field(
                "source.pipeline",
                "expected another pipeline: a pipeline reading its own output is a cycle",
            ));
        }
        Ok(())
    }

    fn check_names(&self) -> Result<(), SpecError> {
        if self.steps.is_empty() {
            return Err(SpecError::field("steps", "expected at least one step"));
        }
        let names = self
            .steps
            .keys()
            .map(|n| ("steps", n))
            .chain(self.sinks.keys().map(|n| ("sinks", n)));
        for (kind, name) in names {
            if !is_app_name(name) {
                return Err(SpecError::field(
                    format!("{kind}.{name}"),
                    format!("expected a name of lowercase letters, digits and `-`, found `{name}`"),
                ));
            }
        }
        if let Some(name) = self.sinks.keys().find(|n| self.steps.contains_key(*n)) {
            return Err(SpecError::field(
                format!("sinks.{name}"),
                format!("expected a name no step has: `{name}` is a step too"),
            ));
        }
        Ok(())
    }

    /// Every `to:` names a step or sink, one step is fed by the source, and there is no cycle.
    fn check_edges(&self) -> Result<(), SpecError> {
        for (name, step) in &self.steps {
            for (i, target) in step.to.iter().enumerate() {
                let path = format!("steps.{name}.to[{i}]");
                if !self.steps.contains_key(target) && !self.sinks.contains_key(target) {
                    let known: Vec<&str> = self.steps.keys().chain(self.sinks.keys()).map(String::as_str).collect();
                    return Err(SpecError::field(
                        path,
                        format!(
                            "expected a step or sink of this pipeline (one of {}), found `{target}`",
                            known.join(", ")
                        ),
                    ));
                }
                if step.to[..i].contains(target) {
                    return Err(SpecError::field(path, format!("expected `{target}` once")));
                }
            }
        }
        if let Some((name, i)) = self.cycle() {
            let mut path = vec![name.clone()];
            let mut at = self.steps[&name].to[i].clone();
            while at != name {
                path.push(at.clone());
                // Follow the cycle back to `name` through the step's first edge on it.
                at = self.steps[&at]
                    .to
                    .iter()
                    .find(|t| self.reaches(t, &name))
                    .cloned()
                    .expect("on the cycle");
            }
            path.push(name.clone());
            return Err(SpecError::field(
                format!("steps.{name}.to[{i}]"),
                format!("expected no cycle, found {}", path.join(" -> ")),
            ));
        }
        let fed: BTreeSet<&str> = self
            .steps
            .values()
            .flat_map(|s| s.to.iter().map(String::as_str))
            .collect();
        let roots: Vec<&str> = self
            .steps
            .keys()
            .map(String::as_str)
            .filter(|n| !fed.contains(n))
            .collect();
        if roots.len() != 1 {
            return Err(SpecError::field(
                "steps",
                format!(
                    "expected exactly one step the source feeds (one no step sends to), found {}",
                    if roots.is_empty() {
                        "none".to_string()
                    } else {
                        roots.join(", ")
                    }
                ),
            ));
        }
        Ok(())
    }

    /// Whether `from` (a step or sink) reaches step `to` through `to:` edges (itself included).
    fn reaches(&self, from: &str, to: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(at) = stack.pop() {
            if at == to {
                return true;
            }
            if seen.insert(at.clone()) {
                if let Some(step) = self.steps.get(&at) {
                    stack.extend(step.to.iter().cloned());
                }
            }
        }
        false
    }

    /// The first edge (step, index in its `to:`) that closes a cycle, in name order.
    fn cycle(&self) -> Option<(String, usize)> {
        self.steps.iter().find_map(|(name, step)| {
            step.to
                .iter()
                .position(|t| self.steps.contains_key(t) && self.reaches(t, name))
                .map(|i| (name.clone(), i))
        })
    }

    fn check_hops(&self) -> Result<(), SpecError> {
        for key in RESERVED_HOP_KEYS {
            if self.hops.config.contains_key(key) {
                return Err(SpecError::field(
                    format!("hops.config.{key}"),
                    "expected no such key: Sluice names each hop's subjects, stream and consumers",
                ));
            }
        }
        if let Some(shared) = &self.hops.shared {
            if !is_app_name(shared) {
                return Err(SpecError::field(
                    "hops.shared",
                    format!("expected the name of a shared providers application, found `{shared}`"),
                ));
            }
        }
        for (key, secret) in &self.hops.secrets {
            if self.hops.config.contains_key(key) {
                return Err(SpecError::field(
                    format!("hops.secrets.{key}"),
                    "expected a key given either as config or as a secret, not both",
                ));
            }
            if secret.is_empty() {
                return Err(SpecError::field(
                    format!("hops.secrets.{key}"),
                    "expected a secret name",
                ));
            }
        }
        // Every hop link gets this config at both ends.
        crate::schemas::check_endpoint_config(
            "hops",
            HOP_PROVIDER,
            &["source", "sink"],
            &self.hops.config,
            &self.hops.secrets,
            &BTreeMap::new(),
        )
    }

    /// One provider per kind serves every link of that kind in the pipeline (a wasmCloud 1.x host
    /// cannot run two providers from one archive), so their provider configs must agree.
    fn check_providers(&self) -> Result<(), SpecError> {
        let mut seen: BTreeMap<&str, (String, &BTreeMap<String, ConfigValue>)> = BTreeMap::new();
        let empty = BTreeMap::new();
        if self.hops.shared.is_none() {
            seen.insert(HOP_PROVIDER, ("hops".to_string(), &empty));
        }
        let endpoints = self
            .source_endpoint()
            .map(|e| ("source".to_string(), e))
            .into_iter()
            .chain(self.sinks.iter().map(|(n, e)| (format!("sinks.{n}"), e)));
        for (path, endpoint) in endpoints.filter(|(_, e)| e.shared.is_none()) {
            let kind: ProviderKind = crate::spec::provider_kind(&endpoint.provider).expect("checked");
            match seen.get(kind.name) {
                Some((first, config)) if *config != &endpoint.provider_config => {
                    return Err(SpecError::field(
                        format!("{path}.provider_config"),
                        format!(
                            "expected the same provider config as `{first}`: one {} provider serves the whole pipeline",
                            kind.name
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert(kind.name, (path, &endpoint.provider_config));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FANOUT: &str = "
name: fanout
lattice: customer-a
source: { provider: mqtt, config: { url: 'mqtt://127.0.0.1:1883', topics: 'sensors/#' } }
steps:
  clean: { component: steps/clean.wasm, to: [archive, enrich] }
  enrich: { component: steps/enrich.wasm, to: [warehouse] }
sinks:
  archive: { provider: s3, config: { bucket: a } }
  warehouse: { provider: kafka, config: { topic: t } }
";

    fn refused(yaml: &str) -> (String, String) {
        match AnySpec::parse(yaml) {
            Err(SpecError::Field { path, expected }) => (path, expected),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_fan_out_spec_parses_with_its_edges() {
        let AnySpec::Dag(spec) = AnySpec::parse(FANOUT).unwrap() else {
            panic!("a multi-step spec")
        };
        assert_eq!(spec.first_step(), "clean");
        assert_eq!(spec.inputs("clean"), vec![Input::Source]);
        assert_eq!(spec.inputs("enrich"), vec![Input::Step("clean".into())]);
        assert_eq!(spec.inputs("archive"), vec![Input::Step("clean".into())]);
        assert_eq!(spec.inputs("warehouse"), vec![Input::Step("enrich".into())]);
        assert_eq!(spec.relay.component, PathBuf::from(DEFAULT_RELAY));
        // Twice the 4 batches one link keeps in flight.
        assert_eq!(spec.instances("enrich", None), 8);
        assert_eq!(spec.instances("enrich", Some(3)), 3);
        assert_eq!(
            spec.providers().keys().copied().collect::<Vec<_>>(),
            ["jetstream", "kafka", "mqtt", "s3"]
        );
    }

    #[test]
    fn the_one_step_form_still_parses_as_before() {
        let yaml = "
name: one
lattice: l
source: { provider: mqtt, config: { topics: 'a/#' } }
step: { component: s.wasm }
sink: { provider: s3, config: { bucket: b } }
";
        assert_eq!(
            AnySpec::parse(yaml).unwrap(),
            AnySpec::Single(PipelineSpec::parse(yaml).unwrap())
        );
    }

    #[test]
    fn a_dangling_to_is_refused_with_its_path() {
        let (path, expected) = refused(&FANOUT.replace("to: [warehouse]", "to: [wharehouse]"));
        assert_eq!(path, "steps.enrich.to[0]");
        assert!(expected.contains("found `wharehouse`"), "{expected}");
        assert!(
            expected.contains("one of clean, enrich, archive, warehouse"),
            "{expected}"
        );
    }

    #[test]
    fn a_cycle_is_refused_with_its_path() {
        let yaml = FANOUT.replace("to: [warehouse]", "to: [warehouse, clean]");
        let (path, expected) = refused(&yaml);
        // clean is then fed by a step: no step is left for the source either, but the cycle is
        // what is reported, on the first edge closing it.
        assert_eq!(path, "steps.clean.to[1]");
        assert_eq!(expected, "expected no cycle, found clean -> enrich -> clean");
        let yaml = FANOUT.replace(
            "  enrich: { component: steps/enrich.wasm, to: [warehouse] }",
            "  enrich: { component: steps/enrich.wasm, to: [warehouse, more] }\n  more: { component: m.wasm, to: [enrich] }",
        );
        let (path, expected) = refused(&yaml);
        assert_eq!(path, "steps.enrich.to[1]");
        assert_eq!(expected, "expected no cycle, found enrich -> more -> enrich");
    }

    #[test]
    fn a_sub_pipeline_on_another_lattice_is_refused() {
        let yaml = FANOUT.replace(
            "source: { provider: mqtt, config: { url: 'mqtt://127.0.0.1:1883', topics: 'sensors/#' } }",
            "source: { pipeline: cleaned, output: clean, lattice: customer-b }",
        );
        let (path, expected) = refused(&yaml);
        assert_eq!(path, "source.lattice");
        assert!(expected.contains("own lattice `customer-a`"), "{expected}");
        // The same lattice is fine, and so is leaving it out.
        let same = yaml.replace("customer-b", "customer-a");
        let AnySpec::Dag(spec) = AnySpec::parse(&same).unwrap() else {
            panic!()
        };
        assert_eq!(
            spec.source,
            DagSource::Pipeline(PipelineRef {
                pipeline: "cleaned".into(),
                output: "clean".into(),
                lattice: Some("customer-a".into())
            })
        );
        assert!(AnySpec::parse(&yaml.replace(", lattice: customer-b", "")).is_ok());
        // Reading its own output is a cycle.
        let (path, _) = refused(
            &yaml
                .replace("pipeline: cleaned", "pipeline: fanout")
                .replace(", lattice: customer-b", ""),
        );
        assert_eq!(path, "source.pipeline");
        // An unknown key of the reference keeps its path.
        let (path, expected) = refused(&yaml.replace(", lattice: customer-b", ", topic: x"));
        assert_eq!(path, "source.topic");
        assert!(expected.contains("unknown field `topic`"), "{expected}");
    }

    #[test]
    fn other_mistakes_are_refused_with_their_paths() {
        let cases: [(&str, &str, &str, &str); 11] = [
            ("to: [warehouse]", "to: []", "sinks.warehouse", "a step sending to it"),
            (
                "provider: kafka",
                "provider: ftp",
                "sinks.warehouse.provider",
                "expected a sink provider",
            ),
            (
                "steps/enrich.wasm",
                "steps/enrich.py",
                "steps.enrich.component",
                "`.wasm`",
            ),
            (
                "to: [warehouse] }",
                "to: [warehouse], instances: 0 }",
                "steps.enrich.instances",
                "at least 1",
            ),
            (
                "to: [warehouse] }",
                "to: [warehouse], spread: [{ name: z, requirements: {} }] }",
                "steps.enrich.spread[0].requirements",
                "host labels",
            ),
            (
                "to: [warehouse] }",
                "to: [warehouse], spread: [{ name: z, requirements: { zone: a } }, { name: z, requirements: { zone: b } }] }",
                "steps.enrich.spread[1].name",
                "a name of its own",
            ),
            (
                "to: [warehouse] }",
                "to: [warehouse], spread: [{ name: z, requirements: { zone: a }, weight: 0 }] }",
                "steps.enrich.spread[0].weight",
                "at least 1",
            ),
            ("  archive:", "  clean:", "sinks.clean", "is a step too"),
            ("  enrich: {", "  Enrich: {", "steps.Enrich", "lowercase"),
            (
                "sinks:",
                "hops: { config: { subject: x } }\nsinks:",
                "hops.config.subject",
                "Sluice names",
            ),
            (
                "  clean: { component: steps/clean.wasm, to: [archive, enrich] }\n",
                "  clean: { component: steps/clean.wasm, to: [archive, enrich] }\n  spare: { component: s.wasm }\n",
                "steps",
                "exactly one step the source feeds (one no step sends to), found clean, spare",
            ),
        ];
        for (from, to, path, expected) in cases {
            assert!(FANOUT.contains(from), "{from}");
            let (got_path, got) = refused(&FANOUT.replacen(from, to, 1));
            assert_eq!(got_path, path, "{got}");
            assert!(got.contains(expected), "{path}: `{got}` lacks `{expected}`");
        }
        // Two sinks of one kind with different provider configs cannot share its provider.
        let yaml =
            format!("{FANOUT}  cold: {{ provider: s3, config: {{ bucket: c }}, provider_config: {{ x: 1 }} }}\n")
                .replace("to: [warehouse]", "to: [warehouse, cold]");
        let (path, expected) = refused(&yaml);
        assert_eq!(path, "sinks.cold.provider_config");
        assert!(expected.contains("`sinks.archive`"), "{expected}");
    }

    #[test]
    fn a_sinks_or_sources_instances_are_checked() {
        let cases = [
            (
                "config: { topic: t } }",
                "config: { topic: t }, instances: 0 }",
                "sinks.warehouse.instances",
                "at least 1",
            ),
            (
                "config: { topic: t } }",
                "config: { topic: t }, shared: kafka-apps, instances: 2 }",
                "sinks.warehouse.instances",
                "no `instances` with `shared`",
            ),
            (
                "topics: 'sensors/#' } }",
                "topics: 'sensors/#' }, instances: 0 }",
                "source.instances",
                "at least 1",
            ),
            (
                "provider: kafka, config: { topic: t } }",
                "provider: mqtt, config: { topic: t }, instances: 2 }",
                "sinks.warehouse.instances",
                "one MQTT client id",
            ),
        ];
        for (from, to, path, expected) in cases {
            assert!(FANOUT.contains(from), "{from}");
            let (got_path, got) = refused(&FANOUT.replacen(from, to, 1));
            assert_eq!(got_path, path, "{got}");
            assert!(got.contains(expected), "{path}: `{got}` lacks `{expected}`");
        }
        let spec =
            DagSpec::parse(&FANOUT.replace("config: { topic: t } }", "config: { topic: t }, instances: 2 }")).unwrap();
        assert_eq!(
            (spec.provider_instances("kafka"), spec.provider_instances("s3")),
            (2, 1)
        );
    }

    #[test]
    fn the_hops_url_defaults_only_when_not_given() {
        let mut spec = DagSpec::parse(FANOUT).unwrap();
        assert!(spec.default_hops_url("nats://local:4222"));
        assert_eq!(spec.hops.config["url"].to_string(), "nats://local:4222");
        assert!(!spec.default_hops_url("nats://other:4222"));
        assert_eq!(spec.hops.config["url"].to_string(), "nats://local:4222");
    }
}
