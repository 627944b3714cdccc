//! A [`DagSpec`] rendered as one wadm manifest: one provider per kind (the JetStream hop provider
//! included) shared by every link of the pipeline, one component per step and one relay per sink,
//! each with its own spreadscaler, and the links between them:
//!
//! - source provider -> first step (`ingest`), link `<pipeline>`;
//! - every step -> the hop provider (`sink`): it publishes to its stream
//!   `sluice_<lattice>_<pipeline>_<step>` (subjects `sluice.<lattice>.<pipeline>.<step>.>`);
//! - the hop provider -> each step or relay the step sends to (`ingest`), link
//!   `<pipeline>-<step>-<consumer>`, through durable consumer `<pipeline>-<consumer>`;
//! - each relay -> its sink provider (`sink`), with the sink's config and secrets.

use std::collections::BTreeMap;
use std::path::Path;

use super::spec::{DagSource, DagSpec, HOP_PROVIDER};
use crate::manifest::{
    link, link_side, wadm_id, Component, LinkSide, Manifest, NamedConfig, Properties, SharedRef, Trait,
    LATTICE_ANNOTATION,
};
use crate::spec::{provider_kind, ConfigValue, Endpoint};

/// The subjects of `pipeline`'s step `step` on `lattice` (its hop's `subject_prefix`).
#[must_use]
pub fn hop_prefix(lattice: &str, pipeline: &str, step: &str) -> String {
    format!("sluice.{lattice}.{pipeline}.{step}")
}

/// The subject a step publishes its output to.
#[must_use]
pub fn hop_subject(prefix: &str) -> String {
    format!("{prefix}.records")
}

/// The stream of a hop: its prefix with `.` as `_` (provider-jetstream's default).
#[must_use]
pub fn hop_stream(prefix: &str) -> String {
    prefix.replace('.', "_")
}

/// One hop: a step's stream and who reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The pipeline writing it.
    pub pipeline: String,
    /// The step writing it.
    pub step: String,
    /// Its stream.
    pub stream: String,
    /// Its subject prefix.
    pub subject_prefix: String,
    /// The subject records are published to.
    pub subject: String,
    /// Who reads it.
    pub consumers: Vec<HopConsumer>,
}

/// A reader of a hop: a step, or a sink's relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopConsumer {
    /// The step or sink name.
    pub name: String,
    /// Its durable consumer on the hop's stream.
    pub durable: String,
    /// The component that reads (the step's, or the sink's relay).
    pub component: String,
    /// The link from the hop provider to that component.
    pub link: String,
}

/// The ids the host gives a multi-step pipeline's parts, and its hops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagIds {
    /// The source provider (the hop provider when the source is another pipeline's hop).
    pub source: String,
    /// The source's link name (to the first step).
    pub source_link: String,
    /// The hop provider.
    pub hop_provider: String,
    /// Each step's component, by step name.
    pub steps: BTreeMap<String, String>,
    /// Each sink's relay component, by sink name.
    pub relays: BTreeMap<String, String>,
    /// Each sink's provider, by sink name.
    pub sinks: BTreeMap<String, String>,
    /// The hops read: the steps' own, and, for a sub-pipeline, the other pipeline's it reads.
    pub hops: Vec<Hop>,
}

impl DagIds {
    /// The ids of `spec`'s parts.
    #[must_use]
    pub fn of(spec: &DagSpec) -> Self {
        let provider = |kind: &str, shared: &Option<String>| match shared {
            Some(app) => wadm_id(app, kind),
            None => format!("{}-{kind}", spec.name),
        };
        let hop_provider = provider(HOP_PROVIDER, &spec.hops.shared);
        let steps: BTreeMap<_, _> = spec
            .steps
            .keys()
            .map(|n| (n.clone(), format!("{}-step-{n}", spec.name)))
            .collect();
        let relays: BTreeMap<_, _> = spec
            .sinks
            .keys()
            .map(|n| (n.clone(), format!("{}-relay-{n}", spec.name)))
            .collect();
        let component = |name: &str| {
            steps
                .get(name)
                .or_else(|| relays.get(name))
                .cloned()
                .expect("a step or sink")
        };
        let mut hops: Vec<Hop> = spec
            .steps
            .iter()
            .map(|(step, s)| {
                let prefix = hop_prefix(&spec.lattice, &spec.name, step);
                Hop {
                    pipeline: spec.name.clone(),
                    step: step.clone(),
                    stream: hop_stream(&prefix),
                    subject: hop_subject(&prefix),
                    subject_prefix: prefix,
                    consumers: s
                        .to
                        .iter()
                        .map(|to| HopConsumer {
                            name: to.clone(),
                            durable: format!("{}-{to}", spec.name),
                            component: component(to),
                            link: format!("{}-{step}-{to}", spec.name),
                        })
                        .collect(),
                }
            })
            .collect();
        let first = spec.first_step().to_string();
        let source = match &spec.source {
            DagSource::Provider(e) => provider(&e.provider, &e.shared),
            DagSource::Pipeline(r) => {
                let prefix = hop_prefix(&spec.lattice, &r.pipeline, &r.output);
                hops.insert(
                    0,
                    Hop {
                        pipeline: r.pipeline.clone(),
                        step: r.output.clone(),
                        stream: hop_stream(&prefix),
                        subject: hop_subject(&prefix),
                        subject_prefix: prefix,
                        consumers: vec![HopConsumer {
                            name: first.clone(),
                            durable: format!("{}-{first}", spec.name),
                            component: component(&first),
                            link: spec.name.clone(),
                        }],
                    },
                );
                hop_provider.clone()
            }
        };
        Self {
            source,
            source_link: spec.name.clone(),
            hop_provider,
            sinks: spec
                .sinks
                .iter()
                .map(|(n, e)| (n.clone(), provider(&e.provider, &e.shared)))
                .collect(),
            steps,
            relays,
            hops,
        }
    }
}

/// Where the host fetches a multi-step pipeline's providers and components from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagImages {
    /// Each provider kind's archive the pipeline runs itself.
    pub providers: BTreeMap<String, String>,
    /// Each step's component, by step name.
    pub steps: BTreeMap<String, String>,
    /// The relay component.
    pub relay: String,
}

impl DagImages {
    /// Everything from one place, as [`crate::manifest::Images::under`]: a directory or `file://`
    /// URL, or an OCI repository prefix; the providers are the pipeline's own copies
    /// (`<base>/pipelines/<lattice>/<pipeline>/...`, written by `sluice sign`).
    #[must_use]
    pub fn under(base: &str, spec: &DagSpec) -> Self {
        let base = base.trim_end_matches('/');
        let own = crate::archive::pipeline_path(spec);
        let part = |name: Option<&std::ffi::OsStr>| name.map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if base.starts_with("file://") || base.starts_with('/') {
            let base = if base.starts_with('/') {
                format!("file://{base}")
            } else {
                base.to_string()
            };
            Self::with(
                spec,
                |package| format!("{base}/{own}/{package}.par.gz"),
                |path| format!("{base}/{}", part(path.file_name())),
            )
        } else {
            let version = env!("CARGO_PKG_VERSION");
            Self::with(
                spec,
                |package| format!("{base}/{own}/{package}:{version}"),
                |path| format!("{base}/{}:{}", part(path.file_stem()), spec.version),
            )
        }
    }

    /// Local files: archives in `par_dir` (for the pipeline's own copies, pass
    /// [`crate::archive::pipeline_dir`]), components at their paths relative to `spec_dir`.
    #[must_use]
    pub fn local(spec: &DagSpec, par_dir: &Path, spec_dir: &Path) -> Self {
        let file = |path: &Path| {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            format!("file://{}", path.display())
        };
        Self::with(
            spec,
            |package| file(&crate::archive::path(par_dir, package)),
            |path| file(&spec_dir.join(path)),
        )
    }

    fn with(spec: &DagSpec, provider: impl Fn(&str) -> String, component: impl Fn(&Path) -> String) -> Self {
        Self {
            providers: spec
                .providers()
                .keys()
                .map(|kind| {
                    let package = provider_kind(kind).expect("checked").package();
                    (kind.to_string(), provider(&package))
                })
                .collect(),
            steps: spec
                .steps
                .iter()
                .map(|(n, s)| (n.clone(), component(&s.component)))
                .collect(),
            relay: component(&spec.relay.component),
        }
    }

    /// Every image, for checking that they exist.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.providers.values().chain(self.steps.values()).chain([&self.relay])
    }
}

/// The manifest name of the component a provider kind runs as (shared: `<kind>-<app>`).
fn provider_name(kind: &str, shared: &Option<String>) -> String {
    match shared {
        Some(app) => format!("{kind}-{app}"),
        None => kind.to_string(),
    }
}

/// The config of a hop link: the spec's `hops.config` and the keys Sluice names.
fn hop_config(spec: &DagSpec, extra: &[(&str, &str)]) -> BTreeMap<String, ConfigValue> {
    let mut config = spec.hops.config.clone();
    for (k, v) in extra {
        config.insert((*k).to_string(), ConfigValue::String((*v).to_string()));
    }
    config
}

/// Renders a multi-step spec as one wadm manifest with the given images.
#[must_use]
pub fn render_dag(spec: &DagSpec, images: &DagImages) -> Manifest {
    let ids = DagIds::of(spec);
    let hop_name = provider_name(HOP_PROVIDER, &spec.hops.shared);
    let step_name = |n: &str| format!("step-{n}");
    let relay_name = |n: &str| format!("relay-{n}");
    let consumer_name = |n: &str| {
        if spec.steps.contains_key(n) {
            step_name(n)
        } else {
            relay_name(n)
        }
    };

    // Links whose source side is a provider, by the provider's manifest name.
    let mut provider_links: BTreeMap<String, Vec<Trait>> = BTreeMap::new();
    let first = spec.first_step().to_string();
    match &spec.source {
        DagSource::Provider(endpoint) => {
            provider_links
                .entry(provider_name(&endpoint.provider, &endpoint.shared))
                .or_default()
                .push(link(
                    target(step_name(&first)),
                    "ingest",
                    Some(link_side(
                        None,
                        &format!("{}-source", spec.name),
                        &endpoint.config,
                        &endpoint.secrets,
                    )),
                    Some(ids.source_link.clone()),
                ));
        }
        DagSource::Pipeline(_) => {}
    }
    for hop in &ids.hops {
        for consumer in &hop.consumers {
            let config = hop_config(
                spec,
                &[
                    ("subject_prefix", &hop.subject_prefix),
                    ("subject", &hop.subject),
                    ("durable", &consumer.durable),
                ],
            );
            let config_name = if hop.pipeline == spec.name {
                format!("{}-{}-{}", spec.name, hop.step, consumer.name)
            } else {
                format!("{}-source", spec.name)
            };
            provider_links.entry(hop_name.clone()).or_default().push(link(
                target(consumer_name(&consumer.name)),
                "ingest",
                Some(link_side(None, &config_name, &config, &spec.hops.secrets)),
                Some(consumer.link.clone()),
            ));
        }
    }

    let mut components = Vec::new();
    // Providers: the pipeline's own, one per kind, then references to shared ones.
    let provider_configs = spec.providers();
    for (kind, provider_config) in &provider_configs {
        let name = provider_name(kind, &None);
        let mut traits = vec![Trait::Spreadscaler {
            instances: spec.provider_instances(kind),
            spread: Vec::new(),
        }];
        traits.extend(provider_links.remove(&name).unwrap_or_default());
        let config = if provider_config.is_empty() {
            Vec::new()
        } else {
            vec![NamedConfig {
                name: format!("{}-{kind}-provider", spec.name),
                properties: provider_config
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
            }]
        };
        components.push(Component {
            name,
            kind: "capability".into(),
            properties: Properties {
                image: Some(images.providers[*kind].clone()),
                id: Some(format!("{}-{kind}", spec.name)),
                application: None,
                config,
            },
            traits,
        });
    }
    let shared: BTreeMap<String, (String, String)> = spec
        .source_endpoint()
        .into_iter()
        .chain(spec.sinks.values())
        .filter_map(|e: &Endpoint| e.shared.clone().map(|app| (e.provider.clone(), app)))
        .chain(spec.hops.shared.clone().map(|app| (HOP_PROVIDER.to_string(), app)))
        .map(|(kind, app)| (provider_name(&kind, &Some(app.clone())), (kind, app)))
        .collect();
    for (name, (kind, app)) in shared {
        components.push(Component {
            traits: provider_links.remove(&name).unwrap_or_default(),
            name,
            kind: "capability".into(),
            properties: Properties {
                image: None,
                id: None,
                application: Some(SharedRef {
                    name: app,
                    component: kind,
                }),
                config: Vec::new(),
            },
        });
    }

    // Steps: each writes to its own hop.
    for (name, step) in &spec.steps {
        let hop = ids
            .hops
            .iter()
            .find(|h| h.pipeline == spec.name && h.step == *name)
            .expect("a hop per step");
        let config = hop_config(
            spec,
            &[("subject_prefix", &hop.subject_prefix), ("subject", &hop.subject)],
        );
        components.push(Component {
            name: step_name(name),
            kind: "component".into(),
            properties: Properties {
                image: Some(images.steps[name].clone()),
                id: Some(ids.steps[name].clone()),
                application: None,
                config: Vec::new(),
            },
            traits: vec![
                Trait::Spreadscaler {
                    instances: spec.instances(name, step.instances),
                    spread: step.spread.clone(),
                },
                link(
                    link_side(
                        Some(hop_name.clone()),
                        &format!("{}-{name}-hop", spec.name),
                        &config,
                        &spec.hops.secrets,
                    ),
                    "sink",
                    None,
                    None,
                ),
            ],
        });
    }

    // Relays: one per sink, the only caller of its sink provider's link.
    for (name, sink) in &spec.sinks {
        components.push(Component {
            name: relay_name(name),
            kind: "component".into(),
            properties: Properties {
                image: Some(images.relay.clone()),
                id: Some(ids.relays[name].clone()),
                application: None,
                config: Vec::new(),
            },
            traits: vec![
                Trait::Spreadscaler {
                    instances: spec.instances(name, spec.relay.instances),
                    spread: Vec::new(),
                },
                link(
                    link_side(
                        Some(provider_name(&sink.provider, &sink.shared)),
                        &format!("{}-{name}-sink", spec.name),
                        &sink.config,
                        &sink.secrets,
                    ),
                    "sink",
                    None,
                    None,
                ),
            ],
        });
    }
    debug_assert!(
        provider_links.is_empty(),
        "every link has its provider: {provider_links:?}"
    );

    let mut annotations = BTreeMap::from([
        ("version".to_string(), spec.version.clone()),
        (LATTICE_ANNOTATION.to_string(), spec.lattice.clone()),
    ]);
    if let Some(description) = &spec.description {
        annotations.insert("description".into(), description.clone());
    }
    Manifest::versioned(&spec.name, &spec.version, &spec.secret_backend, annotations, components)
}

fn target(name: String) -> LinkSide {
    LinkSide {
        name: Some(name),
        config: Vec::new(),
        secrets: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::DEFAULT_ARTIFACTS;

    const FANOUT: &str = "
name: fanout
lattice: customer-a
source: { provider: mqtt, config: { topics: 'sensors/#' } }
steps:
  clean: { component: steps/clean.wasm, to: [archive, enrich] }
  enrich: { component: steps/enrich.wasm, instances: 2, to: [warehouse] }
sinks:
  archive: { provider: s3, config: { bucket: a }, secrets: { secret_access_key: s3-secret } }
  warehouse: { provider: kafka, config: { topic: t } }
hops: { config: { url: 'nats://nats:4222' }, secrets: { password: hop-password } }
";

    fn rendered(yaml: &str) -> (DagSpec, Manifest) {
        let spec = DagSpec::parse(yaml).unwrap();
        let manifest = render_dag(&spec, &DagImages::under(DEFAULT_ARTIFACTS, &spec));
        (spec, manifest)
    }

    #[test]
    fn fan_out_gives_each_branch_its_own_consumer_on_the_step_hop() {
        let (_, manifest) = rendered(FANOUT);
        let names: Vec<&str> = manifest.spec.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "jetstream",
                "kafka",
                "mqtt",
                "s3",
                "step-clean",
                "step-enrich",
                "relay-archive",
                "relay-warehouse"
            ]
        );
        let mut links: Vec<(String, String, String)> = manifest
            .links()
            .into_iter()
            .map(|l| (l.source_id, l.target, l.name))
            .collect();
        links.sort();
        let expected = [
            ("fanout-jetstream", "fanout-relay-archive", "fanout-clean-archive"),
            ("fanout-jetstream", "fanout-relay-warehouse", "fanout-enrich-warehouse"),
            ("fanout-jetstream", "fanout-step-enrich", "fanout-clean-enrich"),
            ("fanout-mqtt", "fanout-step-clean", "fanout"),
            ("fanout-relay-archive", "fanout-s3", "default"),
            ("fanout-relay-warehouse", "fanout-kafka", "default"),
            ("fanout-step-clean", "fanout-jetstream", "default"),
            ("fanout-step-enrich", "fanout-jetstream", "default"),
        ];
        assert_eq!(
            links,
            expected.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        );

        // Both branches read the clean hop, each through a durable consumer of its own; the hop
        // credentials are secrets on every hop link.
        let ids = DagIds::of(&DagSpec::parse(FANOUT).unwrap());
        let clean = ids.hops.iter().find(|h| h.step == "clean").unwrap();
        assert_eq!(clean.stream, "sluice_customer-a_fanout_clean");
        assert_eq!(clean.subject, "sluice.customer-a.fanout.clean.records");
        let durables: Vec<&str> = clean.consumers.iter().map(|c| c.durable.as_str()).collect();
        assert_eq!(durables, ["fanout-archive", "fanout-enrich"]);
        let yaml = manifest.to_yaml();
        assert_eq!(yaml.matches("key: hop-password").count(), 5, "{yaml}");
        assert_eq!(
            yaml.matches("subject_prefix: sluice.customer-a.fanout.clean\n").count(),
            3
        );
        assert_eq!(yaml.matches("durable: fanout-archive\n").count(), 1);
        assert!(yaml.contains("image: file:///opt/sluice/relay.wasm"));
        // Instances: as given, or twice the batches in flight.
        let instances = |name: &str| {
            manifest
                .spec
                .components
                .iter()
                .find(|c| c.name == name)
                .unwrap()
                .traits
                .iter()
                .find_map(|t| match t {
                    Trait::Spreadscaler { instances, .. } => Some(*instances),
                    Trait::Link(_) => None,
                })
        };
        assert_eq!(instances("step-enrich"), Some(2));
        // A step's spread over host labels goes to its spreadscaler as it is.
        let (_, spread) = rendered(&FANOUT.replace(
            "instances: 2,",
            "instances: 3, spread: [{ name: zone-a, requirements: { zone: a } }, { name: zone-b, requirements: { zone: b }, weight: 50 }],",
        ));
        let spread = spread.to_yaml();
        assert!(
            spread.contains(
                "instances: 3\n        spread:\n        - name: zone-a\n          requirements:\n            zone: a\n        - name: zone-b\n          requirements:\n            zone: b\n          weight: 50\n"
            ),
            "{spread}"
        );
        assert!(!yaml.contains("spread:"), "no spread unless given: {yaml}");
        assert_eq!(instances("step-clean"), Some(8));
        assert_eq!(instances("relay-archive"), Some(8));
        // A new version per change.
        let (_, again) = rendered(FANOUT);
        assert_eq!(manifest.version(), again.version());
        let (_, other) = rendered(&FANOUT.replace("bucket: a", "bucket: b"));
        assert_ne!(manifest.version(), other.version());
    }

    #[test]
    fn a_sub_pipeline_reads_the_other_pipeline_hop_through_its_own_consumer() {
        let yaml = "
name: alerts
lattice: customer-a
source: { pipeline: fanout, output: clean }
steps:
  filter: { component: f.wasm, to: [notify] }
sinks:
  notify: { provider: mqtt, config: { topic: 'alerts/{key}' } }
";
        let (spec, manifest) = rendered(yaml);
        let ids = DagIds::of(&spec);
        assert_eq!(ids.source, "alerts-jetstream");
        let upstream = &ids.hops[0];
        assert_eq!(
            (upstream.pipeline.as_str(), upstream.stream.as_str()),
            ("fanout", "sluice_customer-a_fanout_clean")
        );
        assert_eq!(upstream.consumers[0].durable, "alerts-filter");
        let link = manifest
            .links()
            .into_iter()
            .find(|l| l.target == "alerts-step-filter")
            .unwrap();
        assert_eq!(
            (link.source_id.as_str(), link.name.as_str()),
            ("alerts-jetstream", "alerts")
        );
        assert!(manifest
            .to_yaml()
            .contains("subject_prefix: sluice.customer-a.fanout.clean\n"));
    }

    /// The spreadscaler instances of the manifest component `name`.
    fn instances_of(manifest: &Manifest, name: &str) -> Option<usize> {
        manifest
            .spec
            .components
            .iter()
            .find(|c| c.name == name)?
            .traits
            .iter()
            .find_map(|t| match t {
                Trait::Spreadscaler { instances, .. } => Some(*instances),
                Trait::Link(_) => None,
            })
    }

    #[test]
    fn a_sinks_instances_scale_its_provider() {
        let (_, one) = rendered(FANOUT);
        for provider in ["jetstream", "kafka", "mqtt", "s3"] {
            assert_eq!(instances_of(&one, provider), Some(1), "{provider}");
        }
        let (spec, two) = rendered(&FANOUT.replace("config: { topic: t } }", "config: { topic: t }, instances: 2 }"));
        assert_eq!(spec.provider_instances("kafka"), 2);
        assert_eq!(instances_of(&two, "kafka"), Some(2));
        for provider in ["jetstream", "mqtt", "s3"] {
            assert_eq!(instances_of(&two, provider), Some(1), "{provider}");
        }
        assert_ne!(one.version(), two.version());
        // Two sinks of one kind share a provider: it runs at the most either asks for.
        let (_, shared_kind) = rendered(
            &FANOUT
                .replace(
                    "provider: kafka, config: { topic: t } }",
                    "provider: s3, config: { bucket: w }, instances: 3 }",
                )
                .replace("bucket: a }", "bucket: a }, instances: 2"),
        );
        assert_eq!(instances_of(&shared_kind, "s3"), Some(3));
        // The source's `instances` scale the source provider the same way.
        let (_, source) = rendered(&FANOUT.replace("topics: 'sensors/#' } }", "topics: 'sensors/#' }, instances: 2 }"));
        assert_eq!(instances_of(&source, "mqtt"), Some(2));
    }

    #[test]
    fn images_under_a_base_are_the_pipelines_own_provider_copies() {
        let spec = DagSpec::parse(FANOUT).unwrap();
        let files = DagImages::under("/opt/sluice", &spec);
        assert_eq!(
            files.providers["jetstream"],
            "file:///opt/sluice/pipelines/customer-a/fanout/sluice-provider-jetstream.par.gz"
        );
        assert_eq!(files.steps["clean"], "file:///opt/sluice/clean.wasm");
        assert_eq!(files.relay, "file:///opt/sluice/relay.wasm");
        let oci = DagImages::under("registry.example.com/sluice", &spec);
        assert_eq!(
            oci.providers["s3"],
            format!(
                "registry.example.com/sluice/pipelines/customer-a/fanout/sluice-provider-s3:{}",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(oci.steps["enrich"], "registry.example.com/sluice/enrich:0.1.0");
    }
}
