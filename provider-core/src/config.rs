//! Typed link configuration.
//!
//! A link arrives as a string map (its config) and a map of secrets. Connectors read both through a
//! [`ConfigReader`], which parses durations (`250ms`, `5s`) and sizes (`64KiB`, `8MiB`), remembers
//! which keys were read so the rest can be warned about, and hands secrets out only as [`Secret`]s,
//! whose `Debug` never shows the value.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use crate::link::Role;
use crate::schema::{KeyType, Schema, Secrecy};

/// How a key is read, for comparing the read with the key's [`Schema`] entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// As text (any type parsed by the caller).
    Text,
    /// As a whole number.
    Int,
    /// As a boolean.
    Bool,
    /// As a duration.
    Duration,
    /// As a size.
    Size,
    /// As a secret.
    Secret,
}

/// A link config value that could not be used. Every variant names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required key is absent.
    #[error("missing required key `{key}`")]
    Missing {
        /// The key that is missing.
        key: String,
    },
    /// A key is present but its value does not parse.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The offending key.
        key: String,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// A secret was passed as plain link config, where the host would print and store it.
    #[error("`{key}` is a secret: pass it as a wasmCloud secret, not as link config")]
    SecretInConfig {
        /// The key that must be a secret.
        key: String,
    },
    /// A key the provider does not know (see its [`Schema`]): a typo, or a key of another provider.
    #[error(
        "unknown key `{key}`: not a link config key of the {provider} provider (`sluice schema {provider}` lists them)"
    )]
    Unknown {
        /// The unknown key.
        key: String,
        /// The provider's short name.
        provider: String,
    },
}

impl ConfigError {
    /// The key this error is about.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Missing { key }
            | Self::Invalid { key, .. }
            | Self::SecretInConfig { key }
            | Self::Unknown { key, .. } => key,
        }
    }

    /// Builds an [`ConfigError::Invalid`] for `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A secret value (password, key, token). Its `Debug` and `Display` are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes. Hand them to the client that needs them, never to a log.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as UTF-8 text, if it is text.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads one link's config and secrets into typed values.
#[derive(Debug)]
pub struct ConfigReader<'a> {
    values: &'a HashMap<String, String>,
    secrets: &'a HashMap<String, Secret>,
    read: Mutex<BTreeSet<String>>,
    schema: Option<(&'a Schema, Role)>,
    drift: Mutex<Vec<String>>,
}

impl<'a> ConfigReader<'a> {
    /// A reader over a link's config values and secrets.
    #[must_use]
    pub fn new(values: &'a HashMap<String, String>, secrets: &'a HashMap<String, Secret>) -> Self {
        Self {
            values,
            secrets,
            read: Mutex::default(),
            schema: None,
            drift: Mutex::default(),
        }
    }

    /// Compares every read with the entry of `role` links in `schema`; what does not match is
    /// listed by [`drift`](Self::drift).
    #[must_use]
    pub fn with_schema(mut self, schema: &'a Schema, role: Role) -> Self {
        self.schema = Some((schema, role));
        self
    }

    /// Reads that did not match the schema given to [`with_schema`](Self::with_schema): a key it
    /// does not document for the role, a key read as another type or with another default, a
    /// secret read as plain config or the reverse. Empty when the parser and the schema agree.
    #[must_use]
    pub fn drift(&self) -> Vec<String> {
        self.drift
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The keys read so far, sorted.
    #[must_use]
    pub fn read_keys(&self) -> Vec<String> {
        let read = self.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        read.iter().cloned().collect()
    }

    fn mark(&self, key: &str) {
        self.read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_string());
    }

    /// Marks `key` read as `access` with `default` (`Some(true)` when the default given matches
    /// the schema's, `Some(false)` when not, `None` when there is none to compare).
    fn mark_as(&self, key: &str, access: Access, default: impl FnOnce(&str) -> bool) {
        self.mark(key);
        let Some((schema, role)) = self.schema else {
            return;
        };
        let problem = match schema.key(role, key) {
            None => Some(format!("`{key}` is read but not documented for {role} links")),
            Some(entry) => {
                let type_ok = match (access, entry.ty) {
                    (Access::Secret, _) => entry.secrecy != Secrecy::Plain,
                    (_, _) if entry.secrecy == Secrecy::Secret => false,
                    (Access::Text, _) => true,
                    (Access::Int, KeyType::Int { .. })
                    | (Access::Bool, KeyType::Bool)
                    | (Access::Duration, KeyType::Duration)
                    | (Access::Size, KeyType::Size) => true,
                    _ => false,
                };
                if !type_ok {
                    Some(format!(
                        "`{key}` is read as {access:?} but documented as {:?} ({:?})",
                        entry.ty, entry.secrecy
                    ))
                } else if entry.default.is_some_and(|d| !default(d)) {
                    Some(format!(
                        "`{key}` is read with another default than the documented `{}`",
                        entry.default.unwrap_or_default()
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(problem) = problem {
            self.drift
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(problem);
        }
    }

    /// The raw value of `key`, trimmed, if present.
    #[must_use]
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.mark_as(key, Access::Text, |_| true);
        self.values.get(key).map(|v| v.trim())
    }

    fn value(&self, key: &str, access: Access, default: impl FnOnce(&str) -> bool) -> Option<&'a str> {
        self.mark_as(key, access, default);
        self.values.get(key).map(|v| v.trim())
    }

    /// The raw value of `key`, or [`ConfigError::Missing`].
    pub fn required_str(&self, key: &str) -> Result<&'a str, ConfigError> {
        match self.str(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ConfigError::Missing { key: key.into() }),
        }
    }

    /// `key` parsed with [`FromStr`], if present.
    pub fn parse<T>(&self, key: &str, expected: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
    {
        self.str(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| ConfigError::invalid(key, format!("expected {expected}, got `{v}`")))
            })
            .transpose()
    }

    /// `key` parsed with [`FromStr`], or `default` when absent.
    pub fn parse_or<T: FromStr>(&self, key: &str, expected: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.parse(key, expected)?.unwrap_or(default))
    }

    /// A count that must be at least 1, or `default` when absent.
    pub fn positive_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        let value = self.value(key, Access::Int, |d| d.parse() == Ok(default));
        let parsed = value
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| ConfigError::invalid(key, format!("expected a positive integer, got `{v}`")))
            })
            .transpose()?;
        match parsed {
            Some(0) => Err(ConfigError::invalid(key, "expected a positive integer, got `0`")),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    }

    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`), or `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        let value = self.value(key, Access::Bool, |d| d == default.to_string());
        match value.map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "yes" | "on" | "1") => Ok(true),
            Some("false" | "no" | "off" | "0") => Ok(false),
            Some(other) => Err(ConfigError::invalid(
                key,
                format!("expected true or false, got `{other}`"),
            )),
        }
    }

    /// A duration such as `250ms`, `5s`, `2m` or `1h`, or `default` when absent.
    pub fn duration_or(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.value(key, Access::Duration, |d| parse_duration(d) == Ok(default))
            .map(|v| parse_duration(v).map_err(|reason| ConfigError::invalid(key, reason)))
            .transpose()
            .map(|d| d.unwrap_or(default))
    }

    /// A size such as `512`, `64KiB`, `8MiB` or `1GB`, in bytes, or `default` when absent.
    pub fn size_or(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        self.value(key, Access::Size, |d| parse_size(d) == Ok(default))
            .map(|v| parse_size(v).map_err(|reason| ConfigError::invalid(key, reason)))
            .transpose()
            .map(|d| d.unwrap_or(default))
    }

    /// The secret `key`, if the link carries it. A secret passed as plain config is refused.
    pub fn secret(&self, key: &str) -> Result<Option<Secret>, ConfigError> {
        self.mark_as(key, Access::Secret, |_| true);
        if self.values.contains_key(key) {
            return Err(ConfigError::SecretInConfig { key: key.into() });
        }
        Ok(self.secrets.get(key).cloned())
    }

    /// The secret `key`, or [`ConfigError::Missing`].
    pub fn required_secret(&self, key: &str) -> Result<Secret, ConfigError> {
        self.secret(key)?
            .ok_or_else(|| ConfigError::Missing { key: key.into() })
    }

    /// Config keys (not secrets) starting with `prefix`, sorted, e.g. pass-through properties.
    #[must_use]
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.values.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.sort();
        keys
    }

    /// Config keys and secret names that nothing has read so far, sorted.
    #[must_use]
    pub fn unread_keys(&self) -> Vec<String> {
        let read = self.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut keys: Vec<String> = self
            .values
            .keys()
            .chain(self.secrets.keys())
            .filter(|k| !read.contains(*k))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// The provider's own config: the string map and secrets the host gives the provider at start
/// (HostData `config` and `secrets`, e.g. from `wash start provider --config` or a wadm
/// manifest's provider `config`), as opposed to a link's.
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    /// Config values.
    pub values: HashMap<String, String>,
    /// Secrets, already decrypted.
    pub secrets: HashMap<String, Secret>,
}

impl ProviderConfig {
    /// Config from values, with no secrets.
    #[must_use]
    pub fn new(values: HashMap<String, String>) -> Self {
        Self {
            values,
            secrets: HashMap::new(),
        }
    }

    /// A reader over the values and secrets.
    #[must_use]
    pub fn reader(&self) -> ConfigReader<'_> {
        ConfigReader::new(&self.values, &self.secrets)
    }
}

/// Parses `250ms`, `5s`, `1.5s`, `2m`, `1h` or `100us` into a [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let expected = || format!("expected a duration like `250ms`, `5s` or `2m`, got `{text}`");
    let number: f64 = number.parse().map_err(|_| expected())?;
    let seconds = match unit.trim() {
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(expected()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| expected())
}

/// Parses `512`, `512B`, `64KiB`, `8MiB`, `1GiB` (binary) or `64KB`, `8MB`, `1GB` (decimal) into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let expected = || format!("expected a size like `512`, `64KiB` or `8MiB`, got `{text}`");
    let number: u64 = number.parse().map_err(|_| expected())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(expected()),
    };
    number.checked_mul(factor).ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        for bad in ["", "5", "ms", "5 parsecs", "-1s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        for bad in ["", "KiB", "1.5MiB", "8 furlongs", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let values = map(&[("max_in_flight", "abc"), ("linger", "soon"), ("password", "hunter2")]);
        let secrets = HashMap::new();
        let cfg = ConfigReader::new(&values, &secrets);
        let err = cfg.positive_or("max_in_flight", 4).unwrap_err();
        assert_eq!(err.key(), "max_in_flight");
        assert!(err.to_string().contains("`max_in_flight`"), "{err}");
        assert_eq!(cfg.duration_or("linger", Duration::ZERO).unwrap_err().key(), "linger");
        assert_eq!(
            cfg.required_str("topic").unwrap_err(),
            ConfigError::Missing { key: "topic".into() }
        );
        let err = cfg.secret("password").unwrap_err();
        assert_eq!(err, ConfigError::SecretInConfig { key: "password".into() });
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn zero_is_not_positive() {
        let values = map(&[("max_in_flight", "0")]);
        let secrets = HashMap::new();
        let cfg = ConfigReader::new(&values, &secrets);
        assert!(cfg.positive_or("max_in_flight", 4).is_err());
    }

    #[test]
    fn unread_keys_are_reported() {
        let values = map(&[("topic", "t"), ("tpoic", "typo")]);
        let secrets: HashMap<String, Secret> = [("token".to_string(), Secret::new("x"))].into();
        let cfg = ConfigReader::new(&values, &secrets);
        assert_eq!(cfg.required_str("topic"), Ok("t"));
        assert_eq!(cfg.unread_keys(), vec!["token".to_string(), "tpoic".to_string()]);
        assert_eq!(cfg.required_secret("token").unwrap().expose(), b"x");
        assert_eq!(cfg.unread_keys(), vec!["tpoic".to_string()]);
    }

    #[test]
    fn secrets_are_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(secret.expose_str(), Some("hunter2"));
    }

    #[test]
    fn booleans() {
        let values = map(&[("a", "yes"), ("b", "off"), ("c", "maybe")]);
        let secrets = HashMap::new();
        let cfg = ConfigReader::new(&values, &secrets);
        assert_eq!(cfg.bool_or("a", false), Ok(true));
        assert_eq!(cfg.bool_or("b", true), Ok(false));
        assert_eq!(cfg.bool_or("d", true), Ok(true));
        assert_eq!(cfg.bool_or("c", true).unwrap_err().key(), "c");
    }
}
