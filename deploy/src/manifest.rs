//! A [`PipelineSpec`] rendered as a wadm `core.oam.dev/v1beta1` Application: the source provider,
//! the step component and the sink provider (each with a fixed id derived from the pipeline name),
//! the secrets policy, and two links of the `sluice:pipeline` package:
//!
//! - source provider -> step, interface `ingest`, the source's config and secrets on the source side;
//! - step -> sink provider, interface `sink`, the sink's config and secrets on the target side.
//!
//! Link config is wadm named config (`<pipeline>-source`, `<pipeline>-sink`). Output is deterministic
//! (sorted maps), so a rendered manifest can be committed and compared.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::spec::{Endpoint, PipelineSpec};

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
    /// Everything under one base: `<base>/sluice-provider-<name>.par.gz` for providers and
    /// `<base>/<step file name>` for the step, e.g. base `file:///opt/sluice`.
    #[must_use]
    pub fn under(base: &str, spec: &PipelineSpec) -> Self {
        let base = base.trim_end_matches('/');
        let step = spec
            .step
            .component
            .file_name()
            .map_or_else(|| "step.wasm".into(), |n| n.to_string_lossy().into_owned());
        Self {
            source: format!("{base}/{}.par.gz", spec.source_kind().package()),
            step: format!("{base}/{step}"),
            sink: format!("{base}/{}.par.gz", spec.sink_kind().package()),
        }
    }

    /// Local files: archives in `par_dir`, the step at its path relative to `spec_dir`.
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
    /// `<pipeline>-source`, `<pipeline>-step`, `<pipeline>-sink`.
    #[must_use]
    pub fn of(spec: &PipelineSpec) -> Self {
        Self {
            source: format!("{}-source", spec.name),
            step: format!("{}-step", spec.name),
            sink: format!("{}-sink", spec.name),
        }
    }
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

/// A component's image and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Properties {
    /// Where the host fetches it from.
    pub image: String,
    /// The id the host gives it.
    pub id: String,
}

/// A trait: a scaler or a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "properties", rename_all = "lowercase")]
pub enum Trait {
    /// How many instances run.
    Spreadscaler {
        /// The instance count.
        instances: usize,
    },
    /// A link from this component to another.
    Link(Box<Link>),
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

fn side(name: Option<String>, config_name: String, endpoint: &Endpoint) -> LinkSide {
    let properties: BTreeMap<_, _> = endpoint
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    LinkSide {
        name,
        config: vec![NamedConfig {
            name: config_name,
            properties,
        }],
        secrets: endpoint
            .secrets
            .iter()
            .map(|(key, secret)| SecretRef {
                name: key.clone(),
                properties: SecretSource {
                    policy: SECRETS_POLICY.into(),
                    key: secret.clone(),
                },
            })
            .collect(),
    }
}

fn link(target: LinkSide, interface: &str, source: Option<LinkSide>) -> Trait {
    Trait::Link(Box::new(Link {
        target,
        namespace: WIT_NAMESPACE.into(),
        package: WIT_PACKAGE.into(),
        interfaces: vec![interface.into()],
        source,
    }))
}

/// Renders `spec` as a wadm manifest with the given images.
#[must_use]
pub fn render(spec: &PipelineSpec, images: &Images) -> Manifest {
    let ids = Ids::of(spec);
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
            image: images.step.clone(),
            id: ids.step,
        },
        traits: vec![
            Trait::Spreadscaler {
                instances: spec.step.instances,
            },
            link(
                side(Some("sink".into()), format!("{}-sink", spec.name), &spec.sink),
                "sink",
                None,
            ),
        ],
    };
    let source = Component {
        name: "source".into(),
        kind: "capability".into(),
        properties: Properties {
            image: images.source.clone(),
            id: ids.source,
        },
        traits: vec![
            Trait::Spreadscaler { instances: 1 },
            link(
                LinkSide {
                    name: Some("step".into()),
                    config: Vec::new(),
                    secrets: Vec::new(),
                },
                "ingest",
                Some(side(None, format!("{}-source", spec.name), &spec.source)),
            ),
        ],
    };
    let sink = Component {
        name: "sink".into(),
        kind: "capability".into(),
        properties: Properties {
            image: images.sink.clone(),
            id: ids.sink,
        },
        traits: vec![Trait::Spreadscaler { instances: 1 }],
    };
    Manifest {
        api_version: "core.oam.dev/v1beta1".into(),
        kind: "Application".into(),
        metadata: Metadata {
            name: spec.name.clone(),
            annotations,
        },
        spec: Spec {
            policies: vec![Policy {
                name: SECRETS_POLICY.into(),
                kind: "policy.secret.wasmcloud.dev/v1alpha1".into(),
                properties: BTreeMap::from([("backend".to_string(), spec.secret_backend.clone())]),
            }],
            components: vec![source, step, sink],
        },
    }
}

impl Manifest {
    /// The manifest as YAML.
    #[must_use]
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a manifest serializes")
    }
}
