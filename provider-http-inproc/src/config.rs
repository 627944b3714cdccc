//! The provider's config (its one listener) and each link's config (its route). Every key is
//! documented in the crate README.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::header::HeaderName;
use hyper::{Method, StatusCode};
use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::{ConfigError, ConfigReader, Secret};

/// The keys of [`ServerConfig`]: the provider's own config (one listener for all links).
pub const SERVER_KEYS: &[Key] = &[
    Key::new("address", KeyType::String, "Where to listen").default("0.0.0.0:8080"),
    Key::new(
        "tls_cert_file",
        KeyType::String,
        "PEM certificate chain; with `tls_key_file` the listener speaks TLS only",
    ),
    Key::new("tls_key_file", KeyType::String, "PEM private key"),
    Key::new("max_connections", KeyType::Int { min: 1 }, "Open connections at most").default("10000"),
    Key::new("header_timeout", KeyType::Duration, "Time to send a request's headers").default("10s"),
    Key::new(
        "http_threads",
        KeyType::Int { min: 1 },
        "Worker threads serving connections (default: number of CPUs)",
    ),
    Key::new(
        "shutdown_timeout",
        KeyType::Duration,
        "At shutdown, how long open connections may take",
    )
    .default("10s"),
    Key::new(
        "metrics_address",
        KeyType::String,
        "Where `GET /metrics` is served (default: nowhere)",
    ),
];

/// The keys of [`RouteConfig`]: a link's route.
pub const ROUTE_KEYS: &[Key] = &[
    Key::new(
        "path",
        KeyType::String,
        "The path prefix this link serves; must start with `/`",
    )
    .source()
    .required(),
    Key::new(
        "nested_routes",
        KeyType::List,
        "Prefixes under `path` other links' routes may serve, or `*`",
    )
    .source(),
    Key::new("host", KeyType::String, "Serve only requests whose `Host` is this name").source(),
    Key::new("methods", KeyType::List, "Comma-separated methods, or `*` for any")
        .source()
        .default("POST,PUT"),
    Key::new(
        "token",
        KeyType::String,
        "Requests must carry `Authorization: Bearer <token>`",
    )
    .source()
    .secret(),
    Key::new("max_body", KeyType::Size, "Largest body accepted; larger is 413")
        .source()
        .default("1MiB"),
    Key::new("body_timeout", KeyType::Duration, "Time to receive the body; then 408")
        .source()
        .default("10s"),
    Key::new(
        "request_timeout",
        KeyType::Duration,
        "How long a request may wait for the step; then 503",
    )
    .source()
    .default("10s"),
    Key::new("headers", KeyType::List, "Request headers copied into every record")
        .source()
        .default("content-type"),
    Key::new(
        "body",
        KeyType::Enum(&["auto", "whole"]),
        "`auto`: NDJSON by content type; `whole`: one record",
    )
    .source()
    .default("auto"),
    Key::new(
        "success_status",
        KeyType::Enum(&["200", "202"]),
        "Status of an accepted request",
    )
    .source()
    .default("200"),
];

/// Paths no route may claim: `/healthz`, answered by the listener on every host, and `/metrics`,
/// served only on `metrics_address` (so that a scraper pointed at the listener gets a `404`,
/// never a tenant's route).
pub const RESERVED_PATHS: [&str; 2] = ["/healthz", "/metrics"];

/// Whether a normalized `path` is one of [`RESERVED_PATHS`] or under one (any case).
pub fn reserved(path: &str) -> bool {
    let path = path.to_ascii_lowercase();
    RESERVED_PATHS.iter().any(|r| path == *r || strictly_under(&path, r))
}

/// The listener: provider config (HostData `config`), read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `address`: where to listen (default `0.0.0.0:8080`).
    pub address: SocketAddr,
    /// `tls_cert_file` + `tls_key_file`: PEM files; with both, the listener speaks TLS only.
    pub tls: Option<TlsFiles>,
    /// `max_connections`: open connections at most; more wait in the kernel's backlog
    /// (default 10000).
    pub max_connections: usize,
    /// `header_timeout`: how long a client may take to send a request's headers, and the TLS
    /// handshake (default 10s).
    pub header_timeout: Duration,
    /// `http_threads`: worker threads serving connections, apart from the provider's own
    /// (default: the number of CPUs).
    pub http_threads: usize,
    /// `shutdown_timeout`: at shutdown, how long open connections may take to finish their
    /// current request once every link has drained (default 10s).
    pub shutdown_timeout: Duration,
    /// `metrics_address`: where `GET /metrics` is served, apart from the ingress listener
    /// (default: nowhere). Its text names every route and component.
    pub metrics_address: Option<SocketAddr>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls_cert_file`: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// `tls_key_file`: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl ServerConfig {
    /// Reads the provider config.
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let address = config.parse_or(
            "address",
            "an address like `0.0.0.0:8080`",
            SocketAddr::from(([0, 0, 0, 0], 8080)),
        )?;
        let tls = match (config.str("tls_cert_file"), config.str("tls_key_file")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    key: "tls_key_file".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    key: "tls_cert_file".into(),
                })
            }
        };
        Ok(Self {
            address,
            tls,
            max_connections: config.positive_or("max_connections", 10_000)?,
            header_timeout: config.duration_or("header_timeout", Duration::from_secs(10))?,
            http_threads: config.positive_or(
                "http_threads",
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            )?,
            shutdown_timeout: config.duration_or("shutdown_timeout", Duration::from_secs(10))?,
            metrics_address: config.parse("metrics_address", "an address like `127.0.0.1:9090`")?,
        })
    }
}

/// How a request body becomes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// By `Content-Type`: one record per line for `application/x-ndjson`, else one per request.
    Auto,
    /// One record per request, whatever its type.
    Whole,
}

/// One link's route and request handling: the link's source config and secrets.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `path`: the path prefix this link serves (required), e.g. `/orders`, normalized and in
    /// lower case. Matches `/orders` and `/orders/...` (any case), not `/orders-old`.
    pub prefix: String,
    /// `host`: serve only requests for this host (without port; default: any host).
    pub host: Option<String>,
    /// `methods`: comma-separated methods served (default `POST,PUT`; `*` for any).
    pub methods: Option<Vec<Method>>,
    /// Secret `token`: when set, requests must carry `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// `max_body`: largest body accepted (default 1MiB); larger is answered 413.
    pub max_body: u64,
    /// `body_timeout`: how long a client may take to send the body (default 10s); then 408.
    pub body_timeout: Duration,
    /// `request_timeout`: how long a request may wait for the step, across retries, counted
    /// from its arrival (default 10s); then 503. Each `deliver` call is bounded by the engine's
    /// `deliver_timeout` as well.
    pub request_timeout: Duration,
    /// `headers`: comma-separated request headers copied into each record (default
    /// `content-type`); `traceparent` and `tracestate` are always copied.
    pub headers: Vec<HeaderName>,
    /// `body`: `auto` (default) or `whole`.
    pub format: BodyFormat,
    /// `success_status`: `200` (default) or `202`.
    pub success: StatusCode,
    /// `nested_routes`: routes of other links allowed under this prefix (default none).
    pub nested_routes: NestedRoutes,
}

/// Normalizes a path prefix the way request paths are ([`crate::path::normalize`]), in lower
/// case (routes match case-insensitively); a trailing `/` is dropped (but `/` stays).
pub fn normalize_prefix(key: &str, raw: &str) -> Result<String, ConfigError> {
    let bad = |reason: String| {
        ConfigError::invalid(
            key,
            format!("expected a path prefix like `/orders`, got `{raw}`{reason}"),
        )
    };
    if raw.contains(['?', '#']) || raw.chars().any(char::is_whitespace) {
        return Err(bad(String::new()));
    }
    let normal = crate::path::normalize(raw).map_err(|e| bad(format!(": {e}")))?;
    let trimmed = normal.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.to_ascii_lowercase()
    })
}

/// Whether `inner` lies strictly under `outer` on a segment boundary (`/o/deep` under `/o` and
/// under `/`; `/orders` not under `/o`). Both normalized prefixes.
pub fn strictly_under(inner: &str, outer: &str) -> bool {
    inner != outer && (outer == "/" || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/')))
}

/// `nested_routes`: which routes of other links may lie under this route's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NestedRoutes {
    /// None (the default): this route owns its whole subtree.
    None,
    /// `*`: any route under this prefix.
    Any,
    /// These prefixes and everything under them.
    Under(Vec<String>),
}

impl NestedRoutes {
    /// Whether a route with `prefix` may lie under the route declaring this.
    pub fn allows(&self, prefix: &str) -> bool {
        match self {
            Self::None => false,
            Self::Any => true,
            Self::Under(declared) => declared.iter().any(|d| d == prefix || strictly_under(prefix, d)),
        }
    }

    fn parse(config: &ConfigReader<'_>, prefix: &str) -> Result<Self, ConfigError> {
        let Some(list) = config.str("nested_routes").filter(|v| !v.is_empty()) else {
            return Ok(Self::None);
        };
        if list == "*" {
            return Ok(Self::Any);
        }
        let mut declared = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let nested = normalize_prefix("nested_routes", raw)?;
            if !strictly_under(&nested, prefix) {
                return Err(ConfigError::invalid(
                    "nested_routes",
                    format!("`{raw}` is not under this route's path `{prefix}`"),
                ));
            }
            declared.push(nested);
        }
        Ok(Self::Under(declared))
    }
}

impl RouteConfig {
    /// Reads a link's config and secrets.
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let prefix = normalize_prefix("path", config.required_str("path")?)?;
        if reserved(&prefix) {
            return Err(ConfigError::invalid(
                "path",
                format!("`{prefix}` is reserved for the provider's own endpoint"),
            ));
        }
        let host = config
            .str("host")
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(['/', ' ', ':']) {
                    Err(ConfigError::invalid(
                        "host",
                        format!("expected a host name without port, got `{h}`"),
                    ))
                } else {
                    Ok(h.to_ascii_lowercase())
                }
            })
            .transpose()?;
        let methods = match config.str("methods").unwrap_or("POST,PUT") {
            "*" => None,
            list => {
                let mut methods = Vec::new();
                for m in list.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| ConfigError::invalid("methods", format!("`{m}` is not an HTTP method")))?;
                    if !methods.contains(&method) {
                        methods.push(method);
                    }
                }
                if methods.is_empty() {
                    return Err(ConfigError::invalid("methods", "expected at least one method, or `*`"));
                }
                methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                Some(methods)
            }
        };
        let headers = config
            .str("headers")
            .unwrap_or("content-type")
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ConfigError::invalid("headers", format!("`{h}` is not a header name")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let format = match config.str("body").unwrap_or("auto") {
            "auto" => BodyFormat::Auto,
            "whole" => BodyFormat::Whole,
            other => {
                return Err(ConfigError::invalid(
                    "body",
                    format!("expected `auto` or `whole`, got `{other}`"),
                ))
            }
        };
        let success = match config.parse_or::<u16>("success_status", "200 or 202", 200)? {
            200 => StatusCode::OK,
            202 => StatusCode::ACCEPTED,
            other => {
                return Err(ConfigError::invalid(
                    "success_status",
                    format!("expected 200 or 202, got `{other}`"),
                ))
            }
        };
        let token = config.secret("token")?;
        if token.as_ref().is_some_and(|t| t.expose().is_empty()) {
            return Err(ConfigError::invalid("token", "the token is empty"));
        }
        Ok(Self {
            host,
            methods,
            token,
            max_body: config.size_or("max_body", 1 << 20)?,
            body_timeout: config.duration_or("body_timeout", Duration::from_secs(10))?,
            request_timeout: config.duration_or("request_timeout", Duration::from_secs(10))?,
            headers,
            format,
            success,
            nested_routes: NestedRoutes::parse(config, &prefix)?,
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn route(pairs: &[(&str, &str)]) -> Result<RouteConfig, ConfigError> {
        let values: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let secrets = HashMap::new();
        RouteConfig::from_config(&ConfigReader::new(&values, &secrets))
    }

    #[test]
    fn defaults() {
        let r = route(&[("path", "/orders/")]).unwrap();
        assert_eq!(r.prefix, "/orders");
        assert_eq!(r.host, None);
        assert_eq!(r.methods, Some(vec![Method::POST, Method::PUT]));
        assert_eq!(r.max_body, 1 << 20);
        assert_eq!(r.headers, vec![HeaderName::from_static("content-type")]);
        assert_eq!(r.success, StatusCode::OK);
        assert_eq!(route(&[("path", "/")]).unwrap().prefix, "/");
    }

    #[test]
    fn errors_name_the_key() {
        for (pairs, key) in [
            (vec![], "path"),
            (vec![("path", "orders")], "path"),
            (vec![("path", "/metrics")], "path"),
            (vec![("path", "/healthz/x")], "path"),
            (vec![("path", "/a"), ("methods", "PO ST")], "methods"),
            (vec![("path", "/a"), ("host", "a.example:80")], "host"),
            (vec![("path", "/a"), ("max_body", "lots")], "max_body"),
            (vec![("path", "/a"), ("success_status", "201")], "success_status"),
            (vec![("path", "/a"), ("body", "lines")], "body"),
            (vec![("path", "/a"), ("token", "in-plain-config")], "token"),
        ] {
            assert_eq!(route(&pairs).unwrap_err().key(), key, "{pairs:?}");
        }
        assert!(route(&[("path", "/metricsx")]).is_ok());
        for path in ["/a%2Fb", "/../a", "/a/%2e%2e", "/a%zz", "/METRICS", "//healthz/"] {
            assert_eq!(route(&[("path", path)]).unwrap_err().key(), "path", "{path}");
        }
        for nested in ["/b", "/a", "/ab", "/a/x%2Fy"] {
            assert_eq!(
                route(&[("path", "/a"), ("nested_routes", nested)]).unwrap_err().key(),
                "nested_routes",
                "{nested}"
            );
        }
    }

    #[test]
    fn prefixes_are_normal_and_lower_case() {
        for (raw, prefix) in [
            ("//Orders//eu/", "/orders/eu"),
            ("/a/./b/../c", "/a/c"),
            ("/%7Ex", "/~x"),
        ] {
            assert_eq!(route(&[("path", raw)]).unwrap().prefix, prefix, "{raw}");
        }
    }

    #[test]
    fn nested_routes_declare_subtrees() {
        assert_eq!(route(&[("path", "/a")]).unwrap().nested_routes, NestedRoutes::None);
        let any = route(&[("path", "/"), ("nested_routes", "*")]).unwrap().nested_routes;
        assert!(any.allows("/x/y"));
        let some = route(&[("path", "/o"), ("nested_routes", "/o/Deep, /o/x/")])
            .unwrap()
            .nested_routes;
        assert_eq!(some, NestedRoutes::Under(vec!["/o/deep".into(), "/o/x".into()]));
        assert!(some.allows("/o/deep") && some.allows("/o/deep/er") && some.allows("/o/x/1"));
        assert!(!some.allows("/o/deeper") && !some.allows("/o/y") && !NestedRoutes::None.allows("/o/deep"));
        assert!(strictly_under("/o/deep", "/o") && strictly_under("/o", "/"));
        assert!(!strictly_under("/o", "/o") && !strictly_under("/orders", "/o") && !strictly_under("/", "/"));
    }

    #[test]
    fn any_method() {
        assert_eq!(route(&[("path", "/a"), ("methods", "*")]).unwrap().methods, None);
        assert_eq!(
            route(&[("path", "/a"), ("methods", "put, post,PUT")]).unwrap().methods,
            Some(vec![Method::POST, Method::PUT])
        );
    }

    #[test]
    fn server_config() {
        let values: HashMap<String, String> = [("address".to_string(), "127.0.0.1:9000".to_string())].into();
        let secrets = HashMap::new();
        let c = ServerConfig::from_config(&ConfigReader::new(&values, &secrets)).unwrap();
        assert_eq!(c.address, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(c.tls, None);
        assert_eq!(c.metrics_address, None);
        let values: HashMap<String, String> = [("tls_cert_file".to_string(), "c.pem".to_string())].into();
        let err = ServerConfig::from_config(&ConfigReader::new(&values, &secrets)).unwrap_err();
        assert_eq!(err.key(), "tls_key_file");
    }
}
