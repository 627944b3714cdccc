//! Link config of the Kafka source and sink. Every key is documented in the crate's README.

use std::time::Duration;

use rdkafka::ClientConfig;
use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::{ConfigError, ConfigReader, LinkKey, Secret};

use crate::passthrough::PassThrough;
use crate::routing::TopicPolicy;

/// The keys of [`Connection`], on source and sink links.
pub const CONNECTION_KEYS: &[Key] = &[
    Key::new(
        "bootstrap_servers",
        KeyType::List,
        "Brokers, `host:port[,host:port...]`",
    )
    .required(),
    Key::new(
        "security_protocol",
        KeyType::Enum(&["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]),
        "How to reach the brokers",
    )
    .default("plaintext"),
    Key::new(
        "sasl_mechanism",
        KeyType::Enum(&["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
        "SASL mechanism",
    ),
    Key::new("sasl_username", KeyType::String, "SASL user (config or secret)").plain_or_secret(),
    Key::new("sasl_password", KeyType::String, "SASL password").secret(),
    Key::new(
        "tls_ca",
        KeyType::String,
        "PEM CA certificate(s) for `ssl` / `sasl_ssl`",
    ),
    Key::new(
        "connect_timeout",
        KeyType::Duration,
        "How long the brokers may take to answer when a link is put",
    )
    .default("10s"),
];

/// The keys of [`SourceConfig`] beyond the connection's.
pub const SOURCE_KEYS: &[Key] = &[
    Key::new(
        "topics",
        KeyType::List,
        "Comma-separated topics, or one regex starting with `^`",
    )
    .source()
    .required(),
    Key::new(
        "group_id",
        KeyType::String,
        "Consumer group (default `sluice-<component>-<link>`)",
    )
    .source(),
    Key::new(
        "start",
        KeyType::Enum(&["earliest", "latest"]),
        "Where a group without a committed offset starts",
    )
    .source()
    .default("earliest"),
    Key::new(
        "dead_letter_topic",
        KeyType::String,
        "Where rejected records are produced",
    )
    .source(),
    Key::new(
        "group_instance_id",
        KeyType::String,
        "Static group membership: a value unique per provider instance",
    )
    .source(),
    Key::new(
        "session_timeout",
        KeyType::Duration,
        "How long the group waits for a silent member",
    )
    .source()
    .default("30s"),
];

/// The keys of [`SinkConfig`] beyond the connection's and the topic policy's.
pub const SINK_KEYS: &[Key] = &[
    Key::new("compression", KeyType::Enum(COMPRESSION), "Producer compression")
        .sink()
        .default("lz4"),
    Key::new(
        "delivery_timeout",
        KeyType::Duration,
        "How long librdkafka may retry one record",
    )
    .sink()
    .default("30s"),
    Key::new(
        "producer_linger",
        KeyType::Duration,
        "Producer batching delay (`linger.ms`)",
    )
    .sink()
    .default("5ms"),
];

/// Connection and security settings shared by source and sink links.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `bootstrap_servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `security_protocol`: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: String,
    /// `sasl_mechanism`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// `sasl_username` (config or secret) and secret `sasl_password`.
    pub sasl: Option<(String, Secret)>,
    /// `tls_ca`: PEM CA certificate(s).
    pub tls_ca: Option<String>,
    /// `kafka.<property>`: librdkafka properties passed through, secret ones from wasmCloud secrets.
    pub pass_through: PassThrough,
    /// `connect_timeout`: how long checking the broker and topics may take when a link is put.
    pub connect_timeout: Duration,
}

impl Connection {
    fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let bootstrap_servers = config.required_str("bootstrap_servers")?.to_string();
        if bootstrap_servers.split(',').any(|s| {
            s.trim()
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err(ConfigError::invalid(
                "bootstrap_servers",
                format!("expected host:port[,host:port...], got `{bootstrap_servers}`"),
            ));
        }
        let security_protocol = config
            .str("security_protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase();
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&security_protocol.as_str()) {
            return Err(ConfigError::invalid(
                "security_protocol",
                format!("expected plaintext, ssl, sasl_plaintext or sasl_ssl, got `{security_protocol}`"),
            ));
        }
        let sasl_mechanism = config.str("sasl_mechanism").map(str::to_ascii_uppercase);
        if let Some(m) = &sasl_mechanism {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m.as_str()) {
                return Err(ConfigError::invalid(
                    "sasl_mechanism",
                    format!("expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, got `{m}`"),
                ));
            }
        }
        let username = match config.str("sasl_username") {
            Some(u) => Some(u.to_string()),
            None => config
                .secret("sasl_username")?
                .and_then(|s| s.expose_str().map(str::to_string)),
        };
        let sasl = match (username, config.secret("sasl_password")?) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    key: "sasl_username".into(),
                })
            }
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    key: "sasl_password".into(),
                })
            }
        };
        Ok(Self {
            bootstrap_servers,
            security_protocol,
            sasl_mechanism,
            sasl,
            tls_ca: config.str("tls_ca").map(str::to_string),
            pass_through: PassThrough::parse(config)?,
            connect_timeout: config.duration_or("connect_timeout", Duration::from_secs(10))?,
        })
    }

    /// A librdkafka config with the connection and security settings applied.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", &self.security_protocol)
            .set("socket.timeout.ms", "10000");
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some((user, password)) = &self.sasl {
            c.set("sasl.username", user)
                .set("sasl.password", password.expose_str().unwrap_or_default());
        }
        if let Some(ca) = &self.tls_ca {
            c.set("ssl.ca.pem", ca);
        }
        self.pass_through.apply(&mut c);
        c
    }
}

/// Where a consumer group without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record still kept.
    Earliest,
    /// Only records produced from now on.
    Latest,
}

/// Config of a source link.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Broker connection.
    pub connection: Connection,
    /// `topics`: comma-separated topic names, or one regex starting with `^`.
    pub topics: Vec<String>,
    /// `group_id`; `None`: derived from the component and link.
    pub group_id: Option<String>,
    /// `start`: `earliest` or `latest`.
    pub start: Start,
    /// `dead_letter_topic`: where rejected records are produced.
    pub dead_letter_topic: Option<String>,
    /// `group_instance_id`: static group membership (KIP-345), unique per provider instance.
    pub group_instance_id: Option<String>,
    /// `session_timeout`: how long the group waits for a silent member (a crashed provider)
    /// before giving its partitions to others.
    pub session_timeout: Duration,
}

impl SourceConfig {
    /// Parses a source link's config.
    pub fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let topics: Vec<String> = config
            .required_str("topics")?
            .split(',')
            .map(|t| t.trim().to_string())
            .collect();
        if topics.iter().any(String::is_empty) {
            return Err(ConfigError::invalid("topics", "empty topic name"));
        }
        let start = match config.str("start").unwrap_or("earliest") {
            "earliest" => Start::Earliest,
            "latest" => Start::Latest,
            other => {
                return Err(ConfigError::invalid(
                    "start",
                    format!("expected earliest or latest, got `{other}`"),
                ))
            }
        };
        Ok(Self {
            connection: Connection::parse(config)?,
            topics,
            group_id: config.str("group_id").filter(|g| !g.is_empty()).map(str::to_string),
            start,
            dead_letter_topic: config
                .str("dead_letter_topic")
                .filter(|t| !t.is_empty())
                .map(str::to_string),
            group_instance_id: config
                .str("group_instance_id")
                .filter(|g| !g.is_empty())
                .map(str::to_string),
            session_timeout: config.duration_or("session_timeout", Duration::from_secs(30))?,
        })
    }

    /// The consumer group: configured, or stable per component and link.
    pub fn group_id(&self, link: &LinkKey) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}-{}", link.component, link.name))
    }
}

/// Compression codecs the sink offers.
const COMPRESSION: &[&str] = &["none", "gzip", "lz4", "zstd"];

/// Config of a sink link.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Broker connection.
    pub connection: Connection,
    /// `topic`, `topic_from_header`, `allowed_topics`, `topic_prefix`: where records go.
    pub topics: TopicPolicy,
    /// `compression`: `none`, `gzip`, `lz4` or `zstd`.
    pub compression: String,
    /// `delivery_timeout`: how long librdkafka may keep retrying one record.
    pub delivery_timeout: Duration,
    /// `linger`: producer batching delay.
    pub linger: Duration,
}

impl SinkConfig {
    /// Parses a sink link's config.
    pub fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let compression = config.str("compression").unwrap_or("lz4").to_ascii_lowercase();
        if !COMPRESSION.contains(&compression.as_str()) {
            return Err(ConfigError::invalid(
                "compression",
                format!("expected one of {}, got `{compression}`", COMPRESSION.join(", ")),
            ));
        }
        Ok(Self {
            connection: Connection::parse(config)?,
            topics: TopicPolicy::parse(config)?,
            compression,
            delivery_timeout: config.duration_or("delivery_timeout", Duration::from_secs(30))?,
            linger: config.duration_or("producer_linger", Duration::from_millis(5))?,
        })
    }
}
