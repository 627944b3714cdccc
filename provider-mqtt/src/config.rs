//! Link config of the MQTT source and sink. Every key is documented in the crate's README.

use std::time::Duration;

use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::{ConfigError, ConfigReader, LinkKey, RunnerSettings, Secret};

use crate::topic_template::TopicTemplate;

/// The keys of [`Connection`] and the QoS, on source and sink links.
pub const CONNECTION_KEYS: &[Key] = &[
    Key::new(
        "url",
        KeyType::String,
        "Broker, `mqtt://host[:port]` or `mqtts://host[:port]`",
    )
    .required(),
    Key::new(
        "protocol",
        KeyType::Enum(&["5", "3.1.1", "5.0", "v5", "4", "v4", "v3.1.1"]),
        "MQTT version",
    )
    .default("5"),
    Key::new(
        "client_id",
        KeyType::String,
        "MQTT client id (default: stable per component and link)",
    ),
    Key::new("keep_alive", KeyType::Duration, "Keep-alive interval").default("30s"),
    Key::new(
        "connect_timeout",
        KeyType::Duration,
        "How long the first connection may take before the link is refused",
    )
    .default("10s"),
    Key::new("username", KeyType::String, "User name (config or secret)").plain_or_secret(),
    Key::new("password", KeyType::String, "Password").secret(),
    Key::new(
        "tls_ca",
        KeyType::String,
        "PEM CA certificate(s) trusted for `mqtts://`",
    ),
    Key::new("tls_client_cert", KeyType::String, "PEM client certificate"),
    Key::new("tls_client_key", KeyType::String, "PEM client private key").secret(),
    Key::new("qos", KeyType::Enum(&["0", "1", "2"]), "Subscription / publish QoS").default("1"),
];

/// The keys of [`SourceConfig`] beyond the connection's.
pub const SOURCE_KEYS: &[Key] = &[
    Key::new(
        "topics",
        KeyType::List,
        "Comma-separated topic filters, wildcards allowed",
    )
    .source()
    .required(),
    Key::new(
        "dead_letter_topic",
        KeyType::String,
        "Where rejected records are published (QoS 1)",
    )
    .source(),
    Key::new(
        "session_expiry",
        KeyType::Duration,
        "MQTT 5 session expiry while the provider is away",
    )
    .source()
    .default("1h"),
    Key::new(
        "receive_maximum",
        KeyType::Int { min: 1 },
        "MQTT 5 receive maximum (default: max_in_flight x max_batch_records)",
    )
    .source(),
    Key::new(
        "max_buffered",
        KeyType::Int { min: 1 },
        "QoS 0 messages buffered ahead of the pipeline",
    )
    .source()
    .default("10000"),
    Key::new("ordered", KeyType::Bool, "Keep each topic's order through the pipeline")
        .source()
        .default("true"),
];

/// The keys of [`SinkConfig`] beyond the connection's.
pub const SINK_KEYS: &[Key] = &[
    Key::new(
        "topic",
        KeyType::String,
        "Publish topic, fixed or a template with `{key}` and `{header:NAME}`",
    )
    .sink()
    .required(),
    Key::new("retain", KeyType::Bool, "Publish with the retain flag")
        .sink()
        .default("false"),
    Key::new(
        "publish_timeout",
        KeyType::Duration,
        "How long a batch waits for the broker's acknowledgements",
    )
    .sink()
    .default("30s"),
];

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 5.
    V5,
    /// MQTT 3.1.1.
    V311,
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Qos {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

/// TLS settings for `mqtts://` brokers.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// PEM CA certificate(s) to trust (config `tls_ca`); the system roots are not used.
    pub ca_pem: Option<String>,
    /// PEM client certificate (config `tls_client_cert`).
    pub client_cert_pem: Option<String>,
    /// PEM client private key (secret `tls_client_key`).
    pub client_key_pem: Option<Secret>,
}

/// How to reach and log in to a broker; shared by source and sink links.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `Some` for `mqtts://`.
    pub tls: Option<Tls>,
    /// Protocol version (`protocol`: `5` or `3.1.1`).
    pub protocol: Protocol,
    /// Client id (`client_id`); `None`: derived from the component and link by [`Connection::client_id`].
    pub client_id: Option<String>,
    /// Keep-alive interval (`keep_alive`).
    pub keep_alive: Duration,
    /// `username` (config or secret) and secret `password`.
    pub credentials: Option<(String, Secret)>,
    /// How long connecting may take (`connect_timeout`).
    pub connect_timeout: Duration,
}

impl Connection {
    fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let url = config.required_str("url")?;
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            ConfigError::invalid(
                "url",
                format!("expected mqtt://host:port or mqtts://host:port, got `{url}`"),
            )
        })?;
        let tls = match scheme {
            "mqtt" | "tcp" => None,
            "mqtts" | "ssl" => Some(Tls {
                ca_pem: config.str("tls_ca").map(str::to_string),
                client_cert_pem: config.str("tls_client_cert").map(str::to_string),
                client_key_pem: config.secret("tls_client_key")?,
            }),
            other => {
                return Err(ConfigError::invalid(
                    "url",
                    format!("unknown scheme `{other}`: use mqtt:// or mqtts://"),
                ))
            }
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| ConfigError::invalid("url", format!("bad port `{port}` in `{url}`")))?,
            ),
            None => (rest, if tls.is_some() { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(ConfigError::invalid("url", format!("no host in `{url}`")));
        }
        let protocol = match config.str("protocol").unwrap_or("5") {
            "5" | "5.0" | "v5" => Protocol::V5,
            "3.1.1" | "4" | "v4" | "v3.1.1" => Protocol::V311,
            other => {
                return Err(ConfigError::invalid(
                    "protocol",
                    format!("expected `5` or `3.1.1`, got `{other}`"),
                ))
            }
        };
        let client_id = config.str("client_id").filter(|id| !id.is_empty()).map(str::to_string);
        let username = match config.str("username") {
            Some(u) => Some(u.to_string()),
            None => config
                .secret("username")?
                .map(|s| s.expose_str().unwrap_or_default().to_string()),
        };
        let password = config.secret("password")?;
        let credentials = match (username, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (Some(u), None) => Some((u, Secret::new(Vec::new()))),
            (None, Some(_)) => return Err(ConfigError::Missing { key: "username".into() }),
            (None, None) => None,
        };
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
            protocol,
            client_id,
            keep_alive: config.duration_or("keep_alive", Duration::from_secs(30))?,
            credentials,
            connect_timeout: config.duration_or("connect_timeout", Duration::from_secs(10))?,
        })
    }

    /// The configured client id, or a stable one derived from the link (`role` tells a link's
    /// source, sink and dead-letter connections apart), so a restarted provider resumes its session.
    pub fn client_id(&self, link: &LinkKey, role: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| link.identifier(&format!("sluice-{role}")))
    }

    /// `host:port`, for origins and logs.
    pub fn broker(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn parse_qos(config: &ConfigReader<'_>) -> Result<Qos, ConfigError> {
    match config.str("qos").unwrap_or("1") {
        "0" => Ok(Qos::AtMostOnce),
        "1" => Ok(Qos::AtLeastOnce),
        "2" => Ok(Qos::ExactlyOnce),
        other => Err(ConfigError::invalid(
            "qos",
            format!("expected 0, 1 or 2, got `{other}`"),
        )),
    }
}

/// Config of a source link.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Broker connection.
    pub connection: Connection,
    /// Topic filters to subscribe to (`topics`, comma separated, wildcards allowed).
    pub topics: Vec<String>,
    /// Subscription QoS (`qos`).
    pub qos: Qos,
    /// Where rejected records are published (`dead_letter_topic`).
    pub dead_letter_topic: Option<String>,
    /// v5 session expiry (`session_expiry`): how long the broker keeps unacknowledged messages.
    pub session_expiry: Duration,
    /// Most unacknowledged messages the broker may send at once (`receive_maximum`, v5). By
    /// default the link's unacknowledged bound ([`RunnerSettings::max_unacknowledged`]), so the
    /// broker never holds back what the pipeline would take.
    pub receive_maximum: u16,
    /// QoS 0 messages buffered ahead of the pipeline before new ones are dropped (`max_buffered`).
    pub max_buffered: usize,
    /// Keep each topic's messages in order through the pipeline (`ordered`, default true); off lets
    /// batches of one topic be in flight together.
    pub ordered: bool,
}

impl SourceConfig {
    /// Parses a source link's config.
    pub fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let connection = Connection::parse(config)?;
        let topics: Vec<String> = config
            .required_str("topics")?
            .split(',')
            .map(|t| t.trim().to_string())
            .collect();
        if let Some(bad) = topics.iter().find(|t| !valid_filter(t)) {
            return Err(ConfigError::invalid("topics", format!("invalid topic filter `{bad}`")));
        }
        let unacknowledged = RunnerSettings::from_config(config)?.max_unacknowledged();
        let receive_maximum = config.positive_or("receive_maximum", unacknowledged.min(usize::from(u16::MAX)))?;
        Ok(Self {
            connection,
            topics,
            qos: parse_qos(config)?,
            dead_letter_topic: config
                .str("dead_letter_topic")
                .filter(|t| !t.is_empty())
                .map(str::to_string),
            session_expiry: config.duration_or("session_expiry", Duration::from_secs(3600))?,
            max_buffered: config.positive_or("max_buffered", 10_000)?,
            ordered: config.bool_or("ordered", true)?,
            receive_maximum: u16::try_from(receive_maximum)
                .map_err(|_| ConfigError::invalid("receive_maximum", "expected at most 65535"))?,
        })
    }
}

/// An MQTT topic filter: non-empty, `#` only last and alone in its level, `+` alone in its level.
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains('#') && !l.contains('+'),
    })
}

/// Config of a sink link.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Broker connection.
    pub connection: Connection,
    /// Topic to publish to (`topic`): fixed, or a template with `{key}` and `{header:NAME}`.
    pub topic: TopicTemplate,
    /// Publish QoS (`qos`).
    pub qos: Qos,
    /// Publish with the retain flag (`retain`).
    pub retain: bool,
    /// How long a batch may wait for the broker's acknowledgements (`publish_timeout`).
    pub publish_timeout: Duration,
}

impl SinkConfig {
    /// Parses a sink link's config.
    pub fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            connection: Connection::parse(config)?,
            topic: TopicTemplate::parse(config.required_str("topic")?)?,
            qos: parse_qos(config)?,
            retain: config.bool_or("retain", false)?,
            publish_timeout: config.duration_or("publish_timeout", Duration::from_secs(30))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse_source(pairs: &[(&str, &str)]) -> Result<SourceConfig, ConfigError> {
        let values: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let secrets = HashMap::new();
        SourceConfig::parse(&ConfigReader::new(&values, &secrets))
    }

    #[test]
    fn source_defaults() {
        let c = parse_source(&[("url", "mqtt://127.0.0.1:1884"), ("topics", "a/+/c, d/#")]).unwrap();
        assert_eq!(c.connection.host, "127.0.0.1");
        assert_eq!(c.connection.port, 1884);
        assert!(c.connection.tls.is_none());
        assert_eq!(c.connection.protocol, Protocol::V5);
        assert_eq!(
            c.connection.client_id(&LinkKey::new("comp/a", "default"), "src"),
            "sluice-src-comp_a-default"
        );
        assert_eq!(c.topics, vec!["a/+/c", "d/#"]);
        assert_eq!(c.qos, Qos::AtLeastOnce);
        let tls = parse_source(&[("url", "mqtts://broker"), ("topics", "x"), ("protocol", "3.1.1")]).unwrap();
        assert_eq!(tls.connection.port, 8883);
        assert_eq!(tls.connection.protocol, Protocol::V311);
    }

    #[test]
    fn the_receive_maximum_follows_the_links_unacknowledged_bound() {
        let base = [("url", "mqtt://127.0.0.1"), ("topics", "t")];
        let default = parse_source(&base).unwrap();
        let window = RunnerSettings::default().max_unacknowledged();
        assert_eq!(usize::from(default.receive_maximum), window);
        let small = parse_source(&[base[0], base[1], ("max_in_flight", "2"), ("max_batch_records", "10")]).unwrap();
        assert_eq!(small.receive_maximum, 20);
        let huge = parse_source(&[base[0], base[1], ("max_in_flight", "64"), ("max_batch_records", "4096")]).unwrap();
        assert_eq!(huge.receive_maximum, u16::MAX);
        let set = parse_source(&[base[0], base[1], ("receive_maximum", "100")]).unwrap();
        assert_eq!(set.receive_maximum, 100);
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |pairs: &[(&str, &str)]| parse_source(pairs).unwrap_err().key().to_string();
        assert_eq!(key(&[("url", "mqtt://h"), ("topics", "a"), ("qos", "3")]), "qos");
        assert_eq!(key(&[("url", "mqtt://h"), ("topics", "")]), "topics");
        assert_eq!(key(&[("url", "mqtt://h"), ("topics", "a,,b")]), "topics");
        assert_eq!(key(&[("url", "mqtt://h"), ("topics", "a/#/b")]), "topics");
        assert_eq!(
            key(&[("url", "mqtt://h"), ("topics", "a"), ("protocol", "4.0")]),
            "protocol"
        );
        assert_eq!(key(&[("url", "http://h"), ("topics", "a")]), "url");
        assert_eq!(key(&[("url", "mqtt://h:port"), ("topics", "a")]), "url");
        assert_eq!(key(&[("topics", "a")]), "url");
        assert_eq!(
            key(&[("url", "mqtt://h"), ("topics", "a"), ("password", "p")]),
            "password"
        );
    }
}
