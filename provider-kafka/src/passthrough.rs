//! `kafka.<property>` keys: librdkafka properties passed through to the client as they are.
//!
//! Properties Sluice sets itself are refused. Properties whose value is a secret (keys, key
//! passwords, OAuth client secrets) are accepted only from wasmCloud secrets, named
//! `kafka.<property>` like the config key; as plain link config they are refused, since the host
//! prints and stores link config.

use rdkafka::ClientConfig;
use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::{ConfigError, ConfigReader, Secret};

/// The prefix of pass-through keys.
const PREFIX: &str = "kafka.";

/// librdkafka properties that Sluice sets itself (`sasl.username` and `sasl.password` from
/// `sasl_username` and `sasl_password`).
pub const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "acks",
    "sasl.password",
    "sasl.username",
];

/// librdkafka properties whose value is a secret (librdkafka 2.12 marks them sensitive and they
/// hold key material or a password, not a path): accepted only as wasmCloud secrets.
pub const SECRET_PROPERTIES: &[&str] = &[
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
];

/// The `kafka.<property>` family: librdkafka properties passed through (secret ones only as
/// wasmCloud secrets).
pub const KEYS: &[Key] = &[Key::new(
    PREFIX,
    KeyType::String,
    "Any librdkafka property, passed through; secret properties only as wasmCloud secrets",
)
.plain_or_secret()
.prefix()];

/// Whether `property` holds a secret: listed in [`SECRET_PROPERTIES`], or named like one (so a
/// property of a later librdkafka is refused as plain config too).
fn is_secret(property: &str) -> bool {
    SECRET_PROPERTIES.contains(&property)
        || ["password", "secret", "passphrase", "key.pem"]
            .iter()
            .any(|word| property.contains(word))
}

/// The `kafka.<property>` values of one link.
#[derive(Debug, Clone, Default)]
pub struct PassThrough {
    plain: Vec<(String, String)>,
    secret: Vec<(String, Secret)>,
}

impl PassThrough {
    /// Reads every `kafka.<property>` config key and every secret named `kafka.<property>` for a
    /// property in [`SECRET_PROPERTIES`].
    pub fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let mut plain = Vec::new();
        for key in config.keys_with_prefix(PREFIX) {
            let property = &key[PREFIX.len()..];
            if RESERVED.contains(&property) {
                return Err(ConfigError::invalid(
                    key.clone(),
                    format!("`{property}` is set by Sluice and cannot be passed through"),
                ));
            }
            if is_secret(property) {
                return Err(ConfigError::SecretInConfig { key });
            }
            let value = config.str(&key).unwrap_or_default().to_string();
            plain.push((property.to_string(), value));
        }
        let mut secret = Vec::new();
        for property in SECRET_PROPERTIES {
            let key = format!("{PREFIX}{property}");
            if let Some(value) = config.secret(&key)? {
                if value.expose_str().is_none() {
                    return Err(ConfigError::invalid(key, "the secret is not UTF-8 text"));
                }
                secret.push(((*property).to_string(), value));
            }
        }
        Ok(Self { plain, secret })
    }

    /// Sets every property on `client`.
    pub fn apply(&self, client: &mut ClientConfig) {
        for (property, value) in &self.plain {
            client.set(property, value);
        }
        for (property, value) in &self.secret {
            client.set(property, value.expose_str().unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(values: &[(&str, &str)], secrets: &[(&str, &str)]) -> Result<PassThrough, ConfigError> {
        let values: HashMap<String, String> = values.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let secrets: HashMap<String, Secret> = secrets
            .iter()
            .map(|(k, v)| (k.to_string(), Secret::new(v.as_bytes())))
            .collect();
        PassThrough::parse(&ConfigReader::new(&values, &secrets))
    }

    #[test]
    fn every_secret_property_is_refused_as_plain_config_by_its_key() {
        for property in SECRET_PROPERTIES {
            let key = format!("kafka.{property}");
            let err = parse(&[(key.as_str(), "hunter2")], &[]).unwrap_err();
            assert_eq!(err, ConfigError::SecretInConfig { key: key.clone() }, "{property}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        // Named like a secret but not (yet) listed: refused too.
        for property in ["sasl.kerberos.password", "some.future.client.secret", "x.key.pem"] {
            let key = format!("kafka.{property}");
            assert_eq!(
                parse(&[(key.as_str(), "v")], &[]).unwrap_err(),
                ConfigError::SecretInConfig { key },
            );
        }
    }

    #[test]
    fn secret_properties_are_accepted_from_wasmcloud_secrets() {
        let secrets: Vec<(String, &str)> = SECRET_PROPERTIES
            .iter()
            .map(|p| (format!("kafka.{p}"), "s3cr3t"))
            .collect();
        let secrets: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let pass = parse(&[("kafka.client.id", "line-7")], &secrets).unwrap();
        assert!(!format!("{pass:?}").contains("s3cr3t"), "{pass:?}");
        let mut client = ClientConfig::new();
        pass.apply(&mut client);
        assert_eq!(client.get("client.id"), Some("line-7"));
        for property in SECRET_PROPERTIES {
            assert_eq!(client.get(property), Some("s3cr3t"), "{property}");
        }
    }

    #[test]
    fn reserved_properties_are_refused_and_paths_and_public_certificates_pass() {
        for property in RESERVED {
            let key = format!("kafka.{property}");
            assert_eq!(parse(&[(key.as_str(), "x")], &[]).unwrap_err().key(), key);
        }
        let pass = parse(
            &[
                ("kafka.ssl.key.location", "/etc/kafka/client.key"),
                ("kafka.ssl.certificate.pem", "-----BEGIN CERTIFICATE-----"),
                ("kafka.ssl.ca.pem", "-----BEGIN CERTIFICATE-----"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(pass.plain.len(), 3);
    }
}
