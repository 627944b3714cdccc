//! Links: which component a provider feeds or serves, under which link name, with which config.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::config::{ConfigError, Secret};
use crate::ConnectorError;

/// Which end of a link this provider is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The provider is the link's source: it calls the component's `ingest.deliver`.
    Source,
    /// The provider is the link's target: the component calls its `sink.write`.
    Sink,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Source => "source",
            Self::Sink => "sink",
        })
    }
}

/// Identifies a link from this provider's point of view: the component at its other end and the
/// link's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LinkKey {
    /// The component at the other end of the link.
    pub component: String,
    /// The link's name (`default` unless the manifest names it).
    pub name: String,
}

impl LinkKey {
    /// A key for `component`'s link named `name`.
    pub fn new(component: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            component: component.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link `{}` of component `{}`", self.name, self.component)
    }
}

/// Everything a link brings: who is at the other end, and its config and secrets.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// The component and link name.
    pub key: LinkKey,
    /// The link's config values.
    pub config: HashMap<String, String>,
    /// The link's secrets, already decrypted.
    pub secrets: HashMap<String, Secret>,
}

impl LinkSpec {
    /// A link spec with config and no secrets.
    pub fn new(key: LinkKey, config: HashMap<String, String>) -> Self {
        Self {
            key,
            config,
            secrets: HashMap::new(),
        }
    }
}

/// Why a link was refused. Its message names the link, the component and (for config) the key.
#[derive(Debug, thiserror::Error)]
#[error("refused {role} {key}: {reason}")]
pub struct LinkError {
    /// The link that was refused.
    pub key: LinkKey,
    /// Which end of it this provider is.
    pub role: Role,
    /// What went wrong.
    #[source]
    pub reason: LinkErrorReason,
}

/// What went wrong with a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkErrorReason {
    /// Its config did not parse.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The connector could not reach or set up its system.
    #[error("could not open the connection: {0}")]
    Open(#[source] ConnectorError),
    /// The connector refused the link (e.g. its HTTP route is already another link's); the
    /// message says why.
    #[error("{0}")]
    Connector(#[source] ConnectorError),
    /// This provider has no such role (e.g. a source-only provider linked as a sink).
    #[error("this provider cannot act as a {0}")]
    Unsupported(Role),
}
