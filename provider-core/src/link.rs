//! Links: which component a provider feeds or serves, under which link name, with which config.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::backoff::Backoff;
use crate::config::{ConfigError, Secret};
use crate::ConnectorError;

/// Which end of a link this provider is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
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

impl LinkKey {
    /// This link's own directory under `root`: `root/<component>/<name>`, each part
    /// [percent-encoded](path_segment) so that every link gets a distinct directory.
    #[must_use]
    pub fn dir_in(&self, root: &std::path::Path) -> std::path::PathBuf {
        root.join(path_segment(&self.component)).join(path_segment(&self.name))
    }

    /// `{prefix}-{component}-{name}` with every character other than ASCII letters, digits, `-`
    /// and `_` replaced by `_`: this link's name in a system that allows only those (an MQTT
    /// client id, a JetStream durable consumer). Readable rather than injective: a config key
    /// lets a user choose the name where two links would meet.
    #[must_use]
    pub fn identifier(&self, prefix: &str) -> String {
        identifier(&format!("{prefix}-{}-{}", self.component, self.name))
    }
}

/// `text` with every character other than ASCII letters, digits, `-` and `_` replaced by `_`: a
/// name for systems that allow only those (readable rather than injective).
#[must_use]
pub fn identifier(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `text` as one file name: bytes outside `A-Z a-z 0-9 - _ .` are percent-encoded (`/` is `%2F`,
/// `%` is `%25`), so two different texts never share a name; an empty text is `%`, and `.` and
/// `..` are `%2E` and `%2E%2E`.
#[must_use]
pub fn path_segment(text: &str) -> String {
    if text.is_empty() {
        return "%".into();
    }
    if text.bytes().all(|b| b == b'.') {
        return "%2E".repeat(text.len());
    }
    crate::percent::encode(text.as_bytes(), |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
    })
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

/// How many times a link is opened while its put waits, before a transient error leaves it
/// degraded (and [`keep_opening`] tries on in the background).
const OPEN_ATTEMPTS: u32 = 3;

/// Delays between attempts: about 1.5 s over the first three, then growing to 10 s.
const OPEN_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(10),
};

/// Runs `open` until it succeeds, fails for good, or has failed [`OPEN_ATTEMPTS`] times with a
/// [transient](ConnectorError::is_transient) error (a server still starting, a busy endpoint).
pub(crate) async fn open_with_retry<T, F, Fut>(key: &LinkKey, role: Role, mut open: F) -> Result<T, ConnectorError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ConnectorError>>,
{
    let mut attempt = 1;
    loop {
        match open().await {
            Err(error) if error.is_transient() && attempt < OPEN_ATTEMPTS => {
                let delay = OPEN_BACKOFF.delay(attempt);
                tracing::warn!(%key, %role, %error, attempt, ?delay, "could not open the link yet, trying again");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// After [`open_with_retry`] gave up on a transient error: keeps trying with backoff (capped at
/// 10 s), reporting each transient error to `degraded`, until the link opens or fails for good.
pub(crate) async fn keep_opening<T, F, Fut>(
    key: &LinkKey,
    role: Role,
    mut open: F,
    mut degraded: impl FnMut(&ConnectorError),
) -> Result<T, ConnectorError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ConnectorError>>,
{
    let mut attempt = OPEN_ATTEMPTS;
    loop {
        let delay = OPEN_BACKOFF.delay(attempt);
        tokio::time::sleep(delay).await;
        attempt = attempt.saturating_add(1);
        match open().await {
            Err(error) if error.is_transient() => {
                tracing::debug!(%key, %role, %error, attempt, "link still cannot connect");
                degraded(&error);
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn an_identifier_keeps_letters_digits_dashes_and_underscores() {
        let key = LinkKey::new("acme:step/v1", "out.0");
        assert_eq!(key.identifier("sluice-sink"), "sluice-sink-acme_step_v1-out_0");
        assert_eq!(LinkKey::new("c", "d").identifier("p"), "p-c-d");
    }

    /// Opens with `open`, counting its calls.
    async fn open_counting(fail: impl Fn(u32) -> Option<ConnectorError>) -> (Result<(), ConnectorError>, u32) {
        let calls = AtomicU32::new(0);
        let key = LinkKey::new("component", "link");
        let result = open_with_retry(&key, Role::Sink, || {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let outcome = fail(call).map_or(Ok(()), Err);
            async move { outcome }
        })
        .await;
        (result, calls.load(Ordering::SeqCst))
    }

    #[test]
    fn link_directories_are_one_segment_each_and_distinct() {
        let root = std::path::Path::new("buffers");
        let dir = LinkKey::new("my/comp onent", "default").dir_in(root);
        assert_eq!(dir, root.join("my%2Fcomp%20onent").join("default"));
        let names = ["a/b", "a_b", "a%2Fb", "", ".", "..", "é"];
        let segments: std::collections::HashSet<String> = names.iter().map(|n| path_segment(n)).collect();
        assert_eq!(segments.len(), names.len(), "{segments:?}");
        for segment in &segments {
            assert!(!segment.is_empty() && segment != "." && segment != ".." && !segment.contains('/'));
        }
    }

    #[tokio::test]
    async fn a_transient_error_is_tried_again_until_the_link_opens() {
        let (result, calls) =
            open_counting(|call| (call < 3).then(|| ConnectorError::transient("503 Service Unavailable"))).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn a_permanent_error_refuses_at_once() {
        let (result, calls) = open_counting(|_| Some(ConnectorError::msg("NoSuchBucket"))).await;
        assert_eq!(result.unwrap_err().to_string(), "NoSuchBucket");
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn a_lasting_transient_error_refuses_after_the_last_attempt() {
        let (result, calls) = open_counting(|_| Some(ConnectorError::transient("connection refused"))).await;
        let error = result.unwrap_err();
        assert!(error.is_transient());
        assert_eq!(error.to_string(), "connection refused");
        assert_eq!(calls, OPEN_ATTEMPTS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_degraded_link_keeps_trying_until_it_opens() {
        let calls = AtomicU32::new(0);
        let mut reported = Vec::new();
        let key = LinkKey::new("component", "link");
        let result = keep_opening(
            &key,
            Role::Sink,
            || {
                let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if call < 20 {
                        Err(ConnectorError::transient(format!("connection refused ({call})")))
                    } else {
                        Ok(call)
                    }
                }
            },
            |error| reported.push(error.to_string()),
        )
        .await;
        assert_eq!(result.unwrap(), 20, "it never gives up on a transient error");
        assert_eq!(reported.len(), 19);
        assert_eq!(reported[18], "connection refused (19)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_degraded_link_stops_trying_at_a_permanent_error() {
        let calls = AtomicU32::new(0);
        let key = LinkKey::new("component", "link");
        let result: Result<(), _> = keep_opening(
            &key,
            Role::Source,
            || {
                let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    Err(if call < 3 {
                        ConnectorError::transient("connection refused")
                    } else {
                        ConnectorError::msg("NoSuchBucket")
                    })
                }
            },
            |_| {},
        )
        .await;
        assert_eq!(result.unwrap_err().to_string(), "NoSuchBucket");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
