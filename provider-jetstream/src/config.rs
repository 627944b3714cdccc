//! Link config of the JetStream source and sink. Every key is documented in the crate's README.
//!
//! A link is confined to its pipeline's `subject_prefix`: its `subject`, its dead-letter subject,
//! its stream's name and the stream's subjects all live under it, and a value outside it refuses
//! the link naming the key.

use std::time::Duration;

use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::{ConfigError, ConfigReader, LinkKey, RunnerSettings, Secret};

/// The default server.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The keys of the connection, the credentials and the stream, on source and sink links.
pub const CONNECTION_KEYS: &[Key] = &[
    Key::new(
        "url",
        KeyType::List,
        "Server(s), `nats://host:port`, comma separated for several",
    )
    .default(DEFAULT_URL),
    Key::new(
        "subject_prefix",
        KeyType::String,
        "The pipeline's subjects: everything the link touches lives under it",
    )
    .required(),
    Key::new(
        "subject",
        KeyType::String,
        "Sink: publish subject; source: the consumer's filter; under the prefix",
    )
    .required(),
    Key::new(
        "stream",
        KeyType::String,
        "Stream name; must start with the prefix with `.` as `_`",
    ),
    Key::new("user", KeyType::String, "User name (with `password`)").secret(),
    Key::new("password", KeyType::String, "Password (with `user`)").secret(),
    Key::new("nkey_seed", KeyType::String, "NKey user seed (`SU...`)").secret(),
    Key::new(
        "creds",
        KeyType::String,
        "Contents of a `.creds` file (user JWT and NKey seed)",
    )
    .secret(),
    Key::new(
        "connect_timeout",
        KeyType::Duration,
        "How long connecting may take before the link is degraded",
    )
    .default("5s"),
    Key::new(
        "max_bytes",
        KeyType::Size,
        "Stream created with this size limit (default unlimited)",
    ),
    Key::new(
        "max_age",
        KeyType::Duration,
        "Stream created with this message age limit (default unlimited)",
    ),
    Key::new(
        "storage",
        KeyType::Enum(&["file", "memory"]),
        "Stream created on `file` or in `memory`",
    )
    .default("file"),
    Key::new(
        "replicas",
        KeyType::Int { min: 1 },
        "Stream created with this many replicas (1-5)",
    )
    .default("1"),
    Key::new(
        "max_record_size",
        KeyType::Size,
        "Stream created refusing messages larger than this",
    ),
    Key::new(
        "dedup_window",
        KeyType::Duration,
        "Stream created remembering message ids this long",
    )
    .default("2m"),
];

/// The keys of [`SinkConfig`] beyond the connection's.
pub const SINK_KEYS: &[Key] = &[
    Key::new(
        "dedup",
        KeyType::Bool,
        "`Nats-Msg-Id` from each record's origin, so a retried batch is stored once",
    )
    .sink()
    .default("false"),
    Key::new(
        "publish_timeout",
        KeyType::Duration,
        "How long a batch waits for its PubAcks before answering retry",
    )
    .sink()
    .default("10s"),
];

/// The keys of [`SourceConfig`] beyond the connection's.
pub const SOURCE_KEYS: &[Key] = &[
    Key::new(
        "durable",
        KeyType::String,
        "Durable consumer name (default `sluice-<component>-<link>`)",
    )
    .source(),
    Key::new(
        "ack_wait",
        KeyType::Duration,
        "How long the server waits for an acknowledgement before redelivering",
    )
    .source()
    .default("30s"),
    Key::new(
        "max_ack_pending",
        KeyType::Int { min: 1 },
        "Records handed out unacknowledged (default and most: max_in_flight x max_batch_records)",
    )
    .source(),
    Key::new(
        "dead_letter_subject",
        KeyType::String,
        "Where rejected records are published (under the prefix)",
    )
    .source(),
    Key::new(
        "ordered",
        KeyType::Bool,
        "Keep each subject's order through the pipeline",
    )
    .source()
    .default("true"),
];

/// How a link logs in, from wasmCloud secrets only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No authentication.
    None,
    /// Secrets `user` and `password`.
    UserPassword {
        /// `user`.
        user: Secret,
        /// `password`.
        password: Secret,
    },
    /// Secret `nkey_seed`: an NKey user seed (`SU...`).
    NkeySeed(Secret),
    /// Secret `creds`: the contents of a `.creds` file (user JWT and seed).
    Creds(Secret),
}

impl Credentials {
    fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let user = config.secret("user")?;
        let password = config.secret("password")?;
        let seed = config.secret("nkey_seed")?;
        let creds = config.secret("creds")?;
        let chosen = [user.is_some() || password.is_some(), seed.is_some(), creds.is_some()];
        if chosen.iter().filter(|c| **c).count() > 1 {
            return Err(ConfigError::invalid(
                "creds",
                "give one of `user`/`password`, `nkey_seed` or `creds`, not several",
            ));
        }
        Ok(match (user, password, seed, creds) {
            (Some(user), Some(password), _, _) => Self::UserPassword { user, password },
            (Some(_), None, _, _) => return Err(ConfigError::Missing { key: "password".into() }),
            (None, Some(_), _, _) => return Err(ConfigError::Missing { key: "user".into() }),
            (_, _, Some(seed), _) => Self::NkeySeed(seed),
            (_, _, _, Some(creds)) => Self::Creds(creds),
            _ => Self::None,
        })
    }
}

/// Where a stream keeps its messages (`storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// On disk (default).
    File,
    /// In memory: lost when the server restarts.
    Memory,
}

/// The stream a link uses, and the limits it is created with when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// `stream`: its name; by default the prefix with `.` as `_`. Always starts with that.
    pub name: String,
    /// The subjects it is created with: `<subject_prefix>.>`.
    pub subjects: Vec<String>,
    /// `max_bytes`: the stream's size limit (oldest messages go first); `None`: unlimited.
    pub max_bytes: Option<u64>,
    /// `max_age`: how long messages are kept; `None`: for ever.
    pub max_age: Option<Duration>,
    /// `storage`: `file` or `memory`.
    pub storage: Storage,
    /// `replicas`: copies in a cluster (1 to 5).
    pub replicas: usize,
    /// `max_record_size`: the largest message the stream stores; `None`: the server's limit.
    pub max_record_size: Option<u64>,
    /// `dedup_window`: how long the stream remembers message ids (`dedup`).
    pub dedup_window: Duration,
}

/// How to reach the server and which part of it the link may use; shared by source and sink.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `url`: one server or several, comma separated.
    pub url: String,
    /// Secrets `user`+`password`, `nkey_seed` or `creds`.
    pub credentials: Credentials,
    /// `connect_timeout`: how long connecting may take.
    pub connect_timeout: Duration,
    /// `subject_prefix`: the pipeline's subjects; nothing outside it is touched.
    pub subject_prefix: String,
    /// The stream and its limits.
    pub stream: StreamSettings,
}

impl Connection {
    fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let url = config.str("url").filter(|u| !u.is_empty()).unwrap_or(DEFAULT_URL);
        for server in url.split(',') {
            let server = server.trim();
            let scheme_ok = server.starts_with("nats://") || server.starts_with("tls://") || !server.contains("://");
            if server.is_empty() || !scheme_ok {
                return Err(ConfigError::invalid(
                    "url",
                    format!("expected nats://host:port (comma separated for several), got `{url}`"),
                ));
            }
        }
        let prefix = config.required_str("subject_prefix")?;
        if let Err(reason) = check_subject(prefix, false) {
            return Err(ConfigError::invalid("subject_prefix", reason));
        }
        let prefix_name = prefix.replace('.', "_");
        let name = config.str("stream").filter(|s| !s.is_empty()).unwrap_or(&prefix_name);
        if name.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
            return Err(ConfigError::invalid(
                "stream",
                format!("`{name}` is not a stream name (no spaces, `.`, `*`, `>`, `/` or `\\`)"),
            ));
        }
        if !name.starts_with(&prefix_name) {
            return Err(ConfigError::invalid(
                "stream",
                format!(
                    "stream `{name}` is outside `subject_prefix` `{prefix}`: its name must start with `{prefix_name}`"
                ),
            ));
        }
        let storage = match config.str("storage").unwrap_or("file") {
            "file" => Storage::File,
            "memory" => Storage::Memory,
            other => {
                return Err(ConfigError::invalid(
                    "storage",
                    format!("expected `file` or `memory`, got `{other}`"),
                ))
            }
        };
        let replicas = config.positive_or("replicas", 1)?;
        if replicas > 5 {
            return Err(ConfigError::invalid("replicas", "expected 1 to 5"));
        }
        let optional_size = |key: &str| config.str(key).map(|_| config.size_or(key, 0)).transpose();
        let max_age = config.duration_or("max_age", Duration::ZERO)?;
        Ok(Self {
            url: url.to_string(),
            credentials: Credentials::parse(config)?,
            connect_timeout: config.duration_or("connect_timeout", Duration::from_secs(5))?,
            subject_prefix: prefix.to_string(),
            stream: StreamSettings {
                name: name.to_string(),
                subjects: vec![format!("{prefix}.>")],
                max_bytes: optional_size("max_bytes")?,
                max_age: (!max_age.is_zero()).then_some(max_age),
                storage,
                replicas,
                max_record_size: optional_size("max_record_size")?,
                dedup_window: config.duration_or("dedup_window", Duration::from_secs(120))?,
            },
        })
    }

    /// Checks that `subject` (the value of `key`) lies under the prefix; wildcards only where
    /// `wildcards` allows.
    fn confine(&self, key: &str, subject: &str, wildcards: bool) -> Result<(), ConfigError> {
        check_subject(subject, wildcards).map_err(|reason| ConfigError::invalid(key, reason))?;
        if !under_prefix(subject, &self.subject_prefix) {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "subject `{subject}` is outside `subject_prefix` `{}`: use `{}.<name>`",
                    self.subject_prefix, self.subject_prefix
                ),
            ));
        }
        Ok(())
    }
}

/// Whether `subject` is `prefix` followed by at least one more token.
#[must_use]
pub fn under_prefix(subject: &str, prefix: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| !rest.is_empty())
}

/// A NATS subject: non-empty tokens separated by `.`, no whitespace; `*` and a final `>` as whole
/// tokens only when `wildcards`.
fn check_subject(subject: &str, wildcards: bool) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        let wildcard = *token == "*" || (*token == ">" && i == tokens.len() - 1);
        let bad = token.is_empty()
            || token.contains(|c: char| c.is_whitespace() || c.is_control())
            || (!wildcard && token.contains(['*', '>']))
            || (wildcard && !wildcards);
        if bad {
            return Err(format!(
                "`{subject}` is not a valid subject{}",
                if wildcards { "" } else { " (no wildcards here)" }
            ));
        }
    }
    Ok(())
}

/// Config of a sink link.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Server, credentials, prefix and stream.
    pub connection: Connection,
    /// `subject`: where records are published (under the prefix, no wildcards).
    pub subject: String,
    /// `dedup`: give each record a `Nats-Msg-Id` made from its origin.
    pub dedup: bool,
    /// `publish_timeout`: how long a batch waits for its PubAcks before answering `retry`.
    pub publish_timeout: Duration,
}

impl SinkConfig {
    /// Parses a sink link's config.
    pub fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let connection = Connection::parse(config)?;
        let subject = config.required_str("subject")?;
        connection.confine("subject", subject, false)?;
        Ok(Self {
            subject: subject.to_string(),
            dedup: config.bool_or("dedup", false)?,
            publish_timeout: config.duration_or("publish_timeout", Duration::from_secs(10))?,
            connection,
        })
    }
}

/// Config of a source link.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Server, credentials, prefix and stream.
    pub connection: Connection,
    /// `subject`: the consumer's filter (under the prefix, wildcards allowed).
    pub subject: String,
    /// `durable`: the consumer's name; `None`: derived from the link by [`SourceConfig::durable`].
    pub durable: Option<String>,
    /// `ack_wait`: how long the server waits for an acknowledgement before delivering a record
    /// again. Records the pipeline still holds are kept alive with progress notices meanwhile.
    pub ack_wait: Duration,
    /// `max_ack_pending`: records the server hands out unacknowledged; at most (and by default)
    /// the link's unacknowledged bound ([`RunnerSettings::max_unacknowledged`]).
    pub max_ack_pending: usize,
    /// `dead_letter_subject`: where rejected records are published (under the prefix, outside
    /// `subject`); `None`: they are logged.
    pub dead_letter_subject: Option<String>,
    /// `ordered`: keep each subject's order through the pipeline (one batch per subject in flight).
    pub ordered: bool,
}

impl SourceConfig {
    /// Parses a source link's config.
    pub fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let connection = Connection::parse(config)?;
        let subject = config.required_str("subject")?;
        connection.confine("subject", subject, true)?;
        let dead_letter_subject = config.str("dead_letter_subject").filter(|s| !s.is_empty());
        if let Some(dlq) = dead_letter_subject {
            connection.confine("dead_letter_subject", dlq, false)?;
            if subject_matches(subject, dlq) {
                return Err(ConfigError::invalid(
                    "dead_letter_subject",
                    format!("`{dlq}` matches `subject` `{subject}`: dead letters would be read again"),
                ));
            }
        }
        let durable = config.str("durable").filter(|d| !d.is_empty());
        if let Some(d) = durable {
            if d.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
                return Err(ConfigError::invalid(
                    "durable",
                    format!("`{d}` is not a consumer name (no spaces, `.`, `*`, `>`, `/` or `\\`)"),
                ));
            }
        }
        let bound = RunnerSettings::from_config(config)?.max_unacknowledged();
        let max_ack_pending = config.positive_or("max_ack_pending", bound)?;
        if max_ack_pending > bound {
            return Err(ConfigError::invalid(
                "max_ack_pending",
                format!(
                    "{max_ack_pending} is above the link's unacknowledged bound {bound} (max_in_flight x max_batch_records)"
                ),
            ));
        }
        Ok(Self {
            subject: subject.to_string(),
            durable: durable.map(str::to_string),
            ack_wait: config.duration_or("ack_wait", Duration::from_secs(30))?,
            max_ack_pending,
            dead_letter_subject: dead_letter_subject.map(str::to_string),
            ordered: config.bool_or("ordered", true)?,
            connection,
        })
    }

    /// The configured consumer name, or a stable one derived from the link, so a restarted
    /// provider resumes where the last one stopped.
    #[must_use]
    pub fn durable(&self, link: &LinkKey) -> String {
        self.durable.clone().unwrap_or_else(|| link.identifier("sluice"))
    }
}

/// Whether the subject `filter` (wildcards allowed) matches the literal `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn reader<'a>(values: &'a HashMap<String, String>, secrets: &'a HashMap<String, Secret>) -> ConfigReader<'a> {
        ConfigReader::new(values, secrets)
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn source(pairs: &[(&str, &str)]) -> Result<SourceConfig, ConfigError> {
        SourceConfig::parse(&reader(&map(pairs), &HashMap::new()))
    }

    fn sink(pairs: &[(&str, &str)]) -> Result<SinkConfig, ConfigError> {
        SinkConfig::parse(&reader(&map(pairs), &HashMap::new()))
    }

    #[test]
    fn defaults() {
        let c = source(&[("subject_prefix", "acme.p1"), ("subject", "acme.p1.readings")]).unwrap();
        assert_eq!(c.connection.url, DEFAULT_URL);
        assert_eq!(c.connection.stream.name, "acme_p1");
        assert_eq!(c.connection.stream.subjects, ["acme.p1.>"]);
        assert_eq!(c.connection.stream.storage, Storage::File);
        assert_eq!(c.connection.credentials, Credentials::None);
        assert_eq!(c.max_ack_pending, RunnerSettings::default().max_unacknowledged());
        assert_eq!(c.durable(&LinkKey::new("step.a", "default")), "sluice-step_a-default");
        let s = sink(&[
            ("subject_prefix", "acme.p1"),
            ("subject", "acme.p1.out"),
            ("dedup", "true"),
        ])
        .unwrap();
        assert!(s.dedup);
    }

    #[test]
    fn everything_stays_under_the_prefix() {
        let key = |r: Result<SinkConfig, ConfigError>| r.unwrap_err().key().to_string();
        let p = ("subject_prefix", "acme.p1");
        for outside in ["acme.p2.x", "acme.p1", "acme.p1x.y", "other", "acme.*.x", "acme.p1.>"] {
            assert_eq!(key(sink(&[p, ("subject", outside)])), "subject", "{outside}");
        }
        assert_eq!(key(sink(&[p, ("subject", "acme.p1.x"), ("stream", "OTHER")])), "stream");
        assert_eq!(
            key(sink(&[("subject_prefix", "a.>"), ("subject", "a.b")])),
            "subject_prefix"
        );
        assert_eq!(key(sink(&[("subject", "a.b")])), "subject_prefix");
        let err = sink(&[p, ("subject", "acme.p2.x")]).unwrap_err().to_string();
        assert!(err.contains("outside `subject_prefix`"), "{err}");
        assert!(source(&[p, ("subject", "acme.p1.>")]).is_ok());
        let dlq = source(&[p, ("subject", "acme.p1.>"), ("dead_letter_subject", "acme.p1.dlq")]);
        assert_eq!(dlq.unwrap_err().key(), "dead_letter_subject");
        let dlq = source(&[p, ("subject", "acme.p1.in"), ("dead_letter_subject", "acme.dlq")]);
        assert_eq!(dlq.unwrap_err().key(), "dead_letter_subject");
    }

    #[test]
    fn credentials_come_only_from_secrets() {
        let values = map(&[("subject_prefix", "a"), ("subject", "a.b"), ("password", "hunter2")]);
        let err = SinkConfig::parse(&reader(&values, &HashMap::new())).unwrap_err();
        assert_eq!(err, ConfigError::SecretInConfig { key: "password".into() });
        let values = map(&[("subject_prefix", "a"), ("subject", "a.b")]);
        let secrets: HashMap<String, Secret> =
            [("user".into(), Secret::new("u")), ("password".into(), Secret::new("p"))].into();
        let c = SinkConfig::parse(&reader(&values, &secrets)).unwrap();
        assert!(matches!(c.connection.credentials, Credentials::UserPassword { .. }));
        let secrets: HashMap<String, Secret> = [("user".into(), Secret::new("u"))].into();
        assert_eq!(
            SinkConfig::parse(&reader(&values, &secrets)).unwrap_err().key(),
            "password"
        );
    }

    #[test]
    fn max_ack_pending_is_bounded_by_the_engine() {
        let base = [("subject_prefix", "a"), ("subject", "a.b")];
        let small = source(&[base[0], base[1], ("max_in_flight", "2"), ("max_batch_records", "10")]).unwrap();
        assert_eq!(small.max_ack_pending, 20);
        let over = source(&[
            base[0],
            base[1],
            ("max_in_flight", "2"),
            ("max_batch_records", "10"),
            ("max_ack_pending", "21"),
        ]);
        assert_eq!(over.unwrap_err().key(), "max_ack_pending");
    }

    #[test]
    fn filters_match_subjects() {
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(!subject_matches("a.b", "a.c"));
        assert!(under_prefix("a.b", "a"));
        assert!(!under_prefix("ab.c", "a"));
    }
}
