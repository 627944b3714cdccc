//! A [`PipelineSpec`] rendered as a wadm `core.oam.dev/v1beta1` Application: the source provider,
//! the step component and the sink provider (each with a fixed id derived from the pipeline name),
//! the secrets policy, and two links of the `sluice:pipeline` package:
//!
//! - source provider -> step, interface `ingest`, the source's config and secrets on the source side;
//! - step -> sink provider, interface `sink`, the sink's config and secrets on the target side.
//!
//! When source and sink are the same kind of provider (Kafka -> Kafka), one provider serves both
//! links ([`one_provider_for_both_ends`]).
//!
//! Link config is wadm named config (`<pipeline>-source`, `<pipeline>-sink`). Output is deterministic
//! (sorted maps), so a rendered manifest can be committed and compared.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::spec::{Endpoint, PipelineSpec, ProviderKind};

/// The WIT namespace and package of every Sluice link.
pub const WIT_NAMESPACE: &str = "sluice";
/// See [`WIT_NAMESPACE`].
pub const WIT_PACKAGE: &str = "pipeline";
/// The wadm secrets policy every rendered manifest carries.
pub const SECRETS_POLICY: &str = "sluice-secrets";
/// The annotation recording which lattice a manifest is for.
pub const LATTICE_ANNOTATION: &str = "sluice.dev/lattice";

/// Where the host fetches the providers and the step component from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// The source provider's archive (`file://...par.gz` or an OCI reference).
    pub source: String,
    /// The step component (`file://...wasm` or an OCI reference).
    pub step: String,
    /// The sink provider's archive.
    pub sink: String,
}

impl Images {
    /// Everything from one place, `base`:
    /// - a directory (`/opt/sluice`) or `file://` URL: the pipeline's own copies of the provider
    ///   archives, `<base>/pipelines/<lattice>/<pipeline>/sluice-provider-<name>.par.gz` (written
    ///   by `sluice sign`, see [`crate::archive::sign_for_pipeline`]), and
    ///   `<base>/<step file name>` for the step;
    /// - anything else is an OCI repository prefix (`registry.example.com/sluice`):
    ///   `<base>/pipelines/<lattice>/<pipeline>/sluice-provider-<name>:<version>` and
    ///   `<base>/<step file stem>:<pipeline version>`.
    #[must_use]
    pub fn under(base: &str, spec: &PipelineSpec) -> Self {
        let base = base.trim_end_matches('/');
        let file = |path: &Path| {
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        let stem = |path: &Path| {
            path.file_stem()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        let step = &spec.step.component;
        let own = crate::archive::pipeline_path(spec);
        if base.starts_with("file://") || base.starts_with('/') {
            let base = if base.starts_with('/') {
                format!("file://{base}")
            } else {
                base.to_string()
            };
            Self {
                source: format!("{base}/{own}/{}.par.gz", spec.source_kind().package()),
                step: format!("{base}/{}", file(step)),
                sink: format!("{base}/{own}/{}.par.gz", spec.sink_kind().package()),
            }
        } else {
            let version = env!("CARGO_PKG_VERSION");
            Self {
                source: format!("{base}/{own}/{}:{version}", spec.source_kind().package()),
                step: format!("{base}/{}:{}", stem(step), spec.version),
                sink: format!("{base}/{own}/{}:{version}", spec.sink_kind().package()),
            }
        }
    }

    /// Local files: archives in `par_dir` (for a pipeline's own copies, pass
    /// [`crate::archive::pipeline_dir`]), the step at its path relative to `spec_dir`.
    #[must_use]
    pub fn local(spec: &PipelineSpec, par_dir: &Path, spec_dir: &Path) -> Self {
        let file = |path: &Path| format!("file://{}", absolute(path).display());
        Self {
            source: file(&crate::archive::path(par_dir, &spec.source_kind().package())),
            step: file(&spec_dir.join(&spec.step.component)),
            sink: file(&crate::archive::path(par_dir, &spec.sink_kind().package())),
        }
    }
}

fn absolute(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The ids the host gives a rendered pipeline's parts (wadm's `properties.id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// The source provider.
    pub source: String,
    /// The step component.
    pub step: String,
    /// The sink provider.
    pub sink: String,
}

impl Ids {
    /// `<pipeline>-source`, `<pipeline>-step`, `<pipeline>-sink`; one provider serving both
    /// ends ([`one_provider_for_both_ends`]) is `<pipeline>-<provider>`; a shared provider has the
    /// id wadm gives it in its application (see [`wadm_id`]).
    #[must_use]
    pub fn of(spec: &PipelineSpec) -> Self {
        let provider = |role: &str, endpoint: &Endpoint| match &endpoint.shared {
            Some(app) => wadm_id(app, &endpoint.provider),
            None if one_provider_for_both_ends(spec) => format!("{}-{}", spec.name, endpoint.provider),
            None => format!("{}-{role}", spec.name),
        };
        Self {
            source: provider("source", &spec.source),
            step: format!("{}-step", spec.name),
            sink: provider("sink", &spec.sink),
        }
    }
}

/// Whether the pipeline's source and sink are one provider: the same kind with the same provider
/// config, neither shared. One provider process then serves both links: a wasmCloud 1.x host
/// unpacks a provider archive to one path per image, and a second provider started from the same
/// archive while the first runs fails to write it ("Text file busy").
#[must_use]
pub fn one_provider_for_both_ends(spec: &PipelineSpec) -> bool {
    spec.source.shared.is_none()
        && spec.sink.shared.is_none()
        && spec.source.provider == spec.sink.provider
        && spec.source.provider_config == spec.sink.provider_config
}

/// The id wadm gives what an application `app` names `name` when the manifest sets no id: a
/// component, a shared application's provider, or named config. Both lowercased, every other
/// character than ASCII letters and digits replaced by `_`, joined by `-`.
#[must_use]
pub fn wadm_id(app: &str, name: &str) -> String {
    let clean = |s: &str| s.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    format!("{}-{}", clean(app), clean(name))
}

/// A wadm Application manifest (the subset Sluice writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `core.oam.dev/v1beta1`.
    pub api_version: String,
    /// `Application`.
    pub kind: String,
    /// Name and annotations.
    pub metadata: Metadata,
    /// Components and policies.
    pub spec: Spec,
}

/// A manifest's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// The application name (the pipeline's).
    pub name: String,
    /// `version`, `description` and [`LATTICE_ANNOTATION`].
    pub annotations: BTreeMap<String, String>,
}

/// A manifest's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// The policies (the secrets backend).
    pub policies: Vec<Policy>,
    /// Step, source and sink.
    pub components: Vec<Component>,
}

/// A wadm policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Its name, referenced by secrets.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its properties.
    pub properties: BTreeMap<String, String>,
}

/// A component or capability provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    /// Its name in the manifest.
    pub name: String,
    /// `component` or `capability`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Image and id.
    pub properties: Properties,
    /// Scaler and links.
    pub traits: Vec<Trait>,
}

/// A component's image, id and own config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Properties {
    /// Where the host fetches it from (absent for a shared application's provider).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The id the host gives it (absent: wadm derives it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The shared application and component this refers to, instead of an image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application: Option<SharedRef>,
    /// Named config given to the provider itself (not to a link).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<NamedConfig>,
}

/// A reference to a provider of a shared wadm application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedRef {
    /// The shared application.
    pub name: String,
    /// The component in it.
    pub component: String,
}

/// A trait: a scaler or a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "properties", rename_all = "lowercase")]
pub enum Trait {
    /// How many instances run.
    Spreadscaler {
        /// The instance count.
        instances: usize,
        /// How the instances are spread over hosts by their labels (empty: wadm puts them all on
        /// one eligible host).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        spread: Vec<Spread>,
    },
    /// A link from this component to another.
    Link(Box<Link>),
}

/// A share of a spreadscaler's instances, placed on hosts whose labels match `requirements`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    /// The share's name.
    pub name: String,
    /// Host labels a host must have (all of them) to run this share.
    pub requirements: BTreeMap<String, String>,
    /// The share's relative weight (wadm's default: 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<usize>,
}

/// A link trait's properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The component linked to, with the target side's config and secrets.
    pub target: LinkSide,
    /// `sluice`.
    pub namespace: String,
    /// `pipeline`.
    pub package: String,
    /// `ingest` or `sink`.
    pub interfaces: Vec<String>,
    /// The source side's config and secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<LinkSide>,
    /// The link name (`default` when absent). A source has one link per name and interface, so a
    /// provider feeding many pipelines needs one name per pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One side of a link: named config and secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkSide {
    /// The target's component name (target side only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Named config with its properties.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<NamedConfig>,
    /// Secrets: the key the provider sees -> the secret in the backend.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
}

/// Named config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedConfig {
    /// Its name in the lattice.
    pub name: String,
    /// Its keys.
    pub properties: BTreeMap<String, String>,
}

/// A secret reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    /// The key the provider sees.
    pub name: String,
    /// Policy and key in the backend.
    pub properties: SecretSource,
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretSource {
    /// The policy naming the backend.
    pub policy: String,
    /// The secret's name in the backend.
    pub key: String,
}

/// One side of a link with the endpoint's config and secrets. The config's name is `config_name`
/// and a digest of the config and the secret references: wadm 0.21 never puts again a link the
/// host already has, whatever its config, so a link whose config changed must differ by name to
/// be seen (and replaced, see [`crate::pipeline`]).
fn side(name: Option<String>, config_name: &str, endpoint: &Endpoint) -> LinkSide {
    link_side(name, config_name, &endpoint.config, &endpoint.secrets)
}

/// [`side`] from a config and secrets of a link.
pub(crate) fn link_side(
    name: Option<String>,
    config_name: &str,
    config: &BTreeMap<String, crate::spec::ConfigValue>,
    secrets: &BTreeMap<String, String>,
) -> LinkSide {
    let properties: BTreeMap<_, _> = config.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    let secrets: Vec<SecretRef> = secrets
        .iter()
        .map(|(key, secret)| SecretRef {
            name: key.clone(),
            properties: SecretSource {
                policy: SECRETS_POLICY.into(),
                key: secret.clone(),
            },
        })
        .collect();
    let content = serde_json::to_vec(&(&properties, &secrets)).expect("config serializes");
    LinkSide {
        name,
        config: vec![NamedConfig {
            name: format!("{config_name}-{}", crate::digest::short(&content)),
            properties,
        }],
        secrets,
    }
}

/// A pipeline's own provider (image, id, scaler), or a reference to a shared application's.
fn provider_component(
    spec: &PipelineSpec,
    role: &str,
    endpoint: &Endpoint,
    image: &str,
    id: String,
    links: Vec<Trait>,
) -> Component {
    let (properties, mut traits) = match &endpoint.shared {
        Some(app) => (
            Properties {
                image: None,
                id: None,
                application: Some(SharedRef {
                    name: app.clone(),
                    component: endpoint.provider.clone(),
                }),
                config: Vec::new(),
            },
            Vec::new(),
        ),
        None => (
            Properties {
                image: Some(image.to_string()),
                id: Some(id),
                application: None,
                config: provider_config(format!("{}-{role}-provider", spec.name), endpoint),
            },
            vec![Trait::Spreadscaler {
                instances: endpoint.instances.unwrap_or(1),
                spread: Vec::new(),
            }],
        ),
    };
    traits.extend(links);
    Component {
        name: role.into(),
        kind: "capability".into(),
        properties,
        traits,
    }
}

/// A shared wadm application running one instance of each of `providers` on `lattice`, which
/// pipelines use with `shared: <name>` on their source or sink: the provider then serves many
/// pipelines, and undeploying a pipeline deletes only its links. `images` maps each provider's
/// short name to its image.
#[must_use]
pub fn render_shared_providers(name: &str, lattice: &str, providers: &[(ProviderKind, String)]) -> Manifest {
    let components = providers
        .iter()
        .map(|(kind, image)| Component {
            name: kind.name.into(),
            kind: "capability".into(),
            properties: Properties {
                image: Some(image.clone()),
                id: None,
                application: None,
                config: Vec::new(),
            },
            traits: vec![Trait::Spreadscaler {
                instances: 1,
                spread: Vec::new(),
            }],
        })
        .collect();
    Manifest {
        api_version: "core.oam.dev/v1beta1".into(),
        kind: "Application".into(),
        metadata: Metadata {
            name: name.into(),
            annotations: BTreeMap::from([
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                (LATTICE_ANNOTATION.to_string(), lattice.to_string()),
                ("experimental.wasmcloud.dev/shared".to_string(), "true".to_string()),
            ]),
        },
        spec: Spec {
            policies: Vec::new(),
            components,
        },
    }
}

fn provider_config(name: String, endpoint: &Endpoint) -> Vec<NamedConfig> {
    if endpoint.provider_config.is_empty() {
        return Vec::new();
    }
    vec![NamedConfig {
        name,
        properties: endpoint
            .provider_config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
    }]
}

pub(crate) fn link(target: LinkSide, interface: &str, source: Option<LinkSide>, name: Option<String>) -> Trait {
    Trait::Link(Box::new(Link {
        target,
        namespace: WIT_NAMESPACE.into(),
        package: WIT_PACKAGE.into(),
        interfaces: vec![interface.into()],
        source,
        name,
    }))
}

/// Where `sluice render` takes images from when not told: the layout `wash start provider` and a
/// host with `allow_file_load` read (copy `target/par/*.par.gz` and the step there).
pub const DEFAULT_ARTIFACTS: &str = "file:///opt/sluice";

/// Renders `spec` as a wadm manifest with the given images.
#[must_use]
pub fn render(spec: &PipelineSpec, images: &Images) -> Manifest {
    let ids = Ids::of(spec);
    let merged = one_provider_for_both_ends(spec);
    let mut annotations = BTreeMap::from([
        ("version".to_string(), spec.version.clone()),
        (LATTICE_ANNOTATION.to_string(), spec.lattice.clone()),
    ]);
    if let Some(description) = &spec.description {
        annotations.insert("description".into(), description.clone());
    }
    let step = Component {
        name: "step".into(),
        kind: "component".into(),
        properties: Properties {
            image: Some(images.step.clone()),
            id: Some(ids.step),
            application: None,
            config: Vec::new(),
        },
        traits: vec![
            Trait::Spreadscaler {
                instances: spec.step_instances(),
                spread: Vec::new(),
            },
            link(
                side(
                    Some(if merged {
                        spec.sink.provider.clone()
                    } else {
                        "sink".into()
                    }),
                    &format!("{}-sink", spec.name),
                    &spec.sink,
                ),
                "sink",
                None,
                None,
            ),
        ],
    };
    let source_link = link(
        LinkSide {
            name: Some("step".into()),
            config: Vec::new(),
            secrets: Vec::new(),
        },
        "ingest",
        Some(side(None, &format!("{}-source", spec.name), &spec.source)),
        // Named after the pipeline: a shared source provider has one such link per pipeline.
        Some(spec.name.clone()),
    );
    let components = if merged {
        let provider = provider_component(
            spec,
            &spec.source.provider,
            &spec.source,
            &images.source,
            ids.source,
            vec![source_link],
        );
        vec![provider, step]
    } else {
        let source = provider_component(
            spec,
            "source",
            &spec.source,
            &images.source,
            ids.source,
            vec![source_link],
        );
        let sink = provider_component(spec, "sink", &spec.sink, &images.sink, ids.sink, Vec::new());
        vec![source, step, sink]
    };
    Manifest::versioned(&spec.name, &spec.version, &spec.secret_backend, annotations, components)
}

/// A link as the host holds it once wadm has put it: what [`Manifest::links`] expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedLink {
    /// The component or provider calling through the link.
    pub source_id: String,
    /// The one it calls.
    pub target: String,
    /// The link name.
    pub name: String,
    /// The WIT namespace (`sluice`).
    pub namespace: String,
    /// The WIT package (`pipeline`).
    pub package: String,
    /// The names the host gives the link's configs (wadm prefixes them with the application).
    pub config: Vec<String>,
}

impl Manifest {
    /// The application's version (`<spec version>-<digest of the manifest>`).
    #[must_use]
    pub fn version(&self) -> &str {
        self.metadata.annotations.get("version").map_or("", String::as_str)
    }

    /// The links this manifest asks wadm for, as the host will hold them.
    #[must_use]
    pub fn links(&self) -> Vec<ExpectedLink> {
        let app = &self.metadata.name;
        let id = |component: &Component| match (&component.properties.id, &component.properties.application) {
            (Some(id), _) => id.clone(),
            (None, Some(shared)) => wadm_id(&shared.name, &shared.component),
            (None, None) => wadm_id(app, &component.name),
        };
        let by_name = |name: &str| self.spec.components.iter().find(|c| c.name == name);
        let mut links = Vec::new();
        for component in &self.spec.components {
            for t in &component.traits {
                let Trait::Link(link) = t else { continue };
                let target = link
                    .target
                    .name
                    .as_deref()
                    .and_then(by_name)
                    .map_or_else(String::new, id);
                let config = link
                    .source
                    .iter()
                    .chain([&link.target])
                    .flat_map(|side| &side.config)
                    .map(|c| wadm_id(app, &c.name))
                    .collect();
                links.push(ExpectedLink {
                    source_id: id(component),
                    target,
                    name: link.name.clone().unwrap_or_else(|| "default".into()),
                    namespace: link.namespace.clone(),
                    package: link.package.clone(),
                    config,
                });
            }
        }
        links
    }

    /// The manifest as YAML.
    #[must_use]
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a manifest serializes")
    }
}

impl Manifest {
    /// A pipeline's application: `components` under the secrets policy for `secret_backend`,
    /// with `annotations`, versioned `<version>-<digest of the manifest>` (a new version per
    /// change: wadm refuses to store a version twice).
    pub(crate) fn versioned(
        name: &str,
        version: &str,
        secret_backend: &str,
        annotations: BTreeMap<String, String>,
        components: Vec<Component>,
    ) -> Self {
        let mut manifest = Manifest {
            api_version: "core.oam.dev/v1beta1".into(),
            kind: "Application".into(),
            metadata: Metadata {
                name: name.to_owned(),
                annotations,
            },
            spec: Spec {
                policies: vec![Policy {
                    name: SECRETS_POLICY.into(),
                    kind: "policy.secret.wasmcloud.dev/v1alpha1".into(),
                    properties: BTreeMap::from([("backend".to_string(), secret_backend.to_owned())]),
                }],
                components,
            },
        };
        let digest = crate::digest::short(manifest.to_yaml().as_bytes());
        manifest
            .metadata
            .annotations
            .insert("version".into(), format!("{version}-{digest}"));
        manifest
    }
}
