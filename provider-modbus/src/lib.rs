//! Modbus TCP for Sluice: a polling source and a guarded register sink.
//!
//! Both read a **register map** (link config key `register_map`, JSON or TOML; see
//! [`map`] and the crate README): devices (`host:port`, unit id, timeout, poll interval) and tags
//! (table, address, data type, byte and word order, scale and offset, unit, writable, min/max).
//!
//! - [`ModbusSource`] polls each device at its interval, merging adjacent tags into as few read
//!   requests as the protocol allows ([`plan`]), and emits one record per device poll or one per
//!   tag, optionally only on change (with per-tag deadbands). Device failures are reported as
//!   quality, and the device is reconnected with backoff while the others keep polling.
//! - [`ModbusSink`] writes records naming a tag and a value, only to tags declared writable and
//!   within their limits; anything else is rejected per record with the reason.
//!
//! Source link config: `register_map` (required), `record_per` (`device` or `tag`, default
//! `device`), `report_on_change` (default false), `reconnect_initial` (500ms), `reconnect_max`
//! (30s). Sink link config: `register_map`. The delivery engine's own keys (batching, retries)
//! apply as for every provider.

pub mod client;
pub mod codec;
pub mod map;
pub mod plan;
pub mod sink;
pub mod source;

use std::sync::Arc;
use std::time::Duration;

use sluice_provider_core::backoff::Backoff;
use sluice_provider_core::schema::{Key, KeyType, Schema};
use sluice_provider_core::{ConfigError, ConfigReader, ConnectorError, LinkKey, SinkConnector, SourceConnector};

pub use map::{MapError, RegisterMap};
pub use sink::ModbusWriter;
pub use source::{ModbusReader, RecordPer, SourceSettings};

/// The link config key holding the register map.
pub const REGISTER_MAP: &str = "register_map";

/// The keys of a link: the register map on both roles, polling on sources.
pub const KEYS: &[Key] = &[
    Key::new(
        REGISTER_MAP,
        KeyType::String,
        "The register map, JSON (text starting with `{`) or TOML",
    )
    .required(),
    Key::new(
        "record_per",
        KeyType::Enum(&["device", "tag"]),
        "One record per device poll, or per tag",
    )
    .source()
    .default("device"),
    Key::new(
        "report_on_change",
        KeyType::Bool,
        "Send only tags whose value moved beyond their deadband",
    )
    .source()
    .default("false"),
    Key::new(
        "reconnect_initial",
        KeyType::Duration,
        "First backoff between attempts to reach a device",
    )
    .source()
    .default("500ms"),
    Key::new(
        "reconnect_max",
        KeyType::Duration,
        "Longest backoff between attempts to reach a device",
    )
    .source()
    .default("30s"),
];

/// Every link config key of the provider: the engine's and the connector's.
#[must_use]
pub fn schema() -> Schema {
    Schema::new(
        "modbus",
        "Modbus TCP source (polled register map) and guarded register sink",
        true,
        true,
    )
    .keys(KEYS)
}

fn register_map(config: &ConfigReader<'_>) -> Result<Arc<RegisterMap>, ConfigError> {
    let text = config.required_str(REGISTER_MAP)?;
    RegisterMap::parse(text)
        .map(Arc::new)
        .map_err(|e| ConfigError::invalid(REGISTER_MAP, e.to_string()))
}

/// Config of a source link.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The validated register map.
    pub map: Arc<RegisterMap>,
    /// How records are shaped and when they are sent.
    pub settings: SourceSettings,
}

/// The polling source connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModbusSource;

impl SourceConnector for ModbusSource {
    type Config = SourceConfig;
    type Reader = ModbusReader;

    /// A device is polled by one instance of the provider at a time (the lease holder's).
    fn single_reader(&self, _: &SourceConfig) -> bool {
        true
    }

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<SourceConfig, ConfigError> {
        let map = register_map(config)?;
        let record_per = match config.str("record_per") {
            None | Some("device") => RecordPer::Device,
            Some("tag") => RecordPer::Tag,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "record_per",
                    format!("expected `device` or `tag`, got `{other}`"),
                ))
            }
        };
        let initial = config.duration_or("reconnect_initial", Duration::from_millis(500))?;
        let max = config.duration_or("reconnect_max", Duration::from_secs(30))?;
        if initial.is_zero() {
            return Err(ConfigError::invalid("reconnect_initial", "must be longer than zero"));
        }
        if max < initial {
            return Err(ConfigError::invalid(
                "reconnect_max",
                format!("{max:?} is shorter than reconnect_initial ({initial:?})"),
            ));
        }
        Ok(SourceConfig {
            map,
            settings: SourceSettings {
                record_per,
                report_on_change: config.bool_or("report_on_change", false)?,
                reconnect: Backoff { initial, max },
            },
        })
    }

    async fn open(&self, _: &LinkKey, config: SourceConfig) -> Result<ModbusReader, ConnectorError> {
        Ok(ModbusReader::start(config.map, config.settings))
    }
}

/// The guarded register sink connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModbusSink;

impl SinkConnector for ModbusSink {
    type Config = Arc<RegisterMap>;
    type Writer = ModbusWriter;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<Arc<RegisterMap>, ConfigError> {
        register_map(config)
    }

    async fn open(&self, _: &LinkKey, map: Arc<RegisterMap>) -> Result<ModbusWriter, ConnectorError> {
        Ok(ModbusWriter::new(map))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const MAP: &str =
        "[devices.d]\naddress = \"127.0.0.1:502\"\n[[tags]]\nname = \"t\"\ntable = \"coil\"\naddress = 0\n";

    fn source(pairs: &[(&str, &str)]) -> Result<SourceConfig, ConfigError> {
        let values: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let secrets = HashMap::new();
        ModbusSource.parse_config(&ConfigReader::new(&values, &secrets))
    }

    #[test]
    fn source_config_defaults_and_errors_name_the_key() {
        let config = source(&[("register_map", MAP)]).unwrap();
        assert_eq!(config.settings.record_per, RecordPer::Device);
        assert!(!config.settings.report_on_change);
        assert_eq!(config.settings.reconnect.initial, Duration::from_millis(500));
        let config = source(&[
            ("register_map", MAP),
            ("record_per", "tag"),
            ("report_on_change", "yes"),
        ])
        .unwrap();
        assert_eq!(config.settings.record_per, RecordPer::Tag);
        assert!(config.settings.report_on_change);
        for (pairs, key) in [
            (vec![], "register_map"),
            (vec![("register_map", "[devices.d]")], "register_map"),
            (vec![("register_map", MAP), ("record_per", "poll")], "record_per"),
            (
                vec![("register_map", MAP), ("report_on_change", "maybe")],
                "report_on_change",
            ),
            (
                vec![("register_map", MAP), ("reconnect_initial", "0s")],
                "reconnect_initial",
            ),
            (
                vec![
                    ("register_map", MAP),
                    ("reconnect_initial", "2s"),
                    ("reconnect_max", "1s"),
                ],
                "reconnect_max",
            ),
        ] {
            let err = source(&pairs).unwrap_err();
            assert_eq!(err.key(), key, "{err}");
        }
        let err = source(&[(
            "register_map",
            "[devices.d]\naddress = \"h\"\n[[tags]]\nname = \"x\"\ntable = \"coil\"\naddress = 0\ntype = \"u16\"\n",
        )])
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`register_map`") && text.contains("tag `x`") && text.contains("field `type`"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod schema_tests {
    use sluice_provider_core::schema::{check_keys, parse_engine_keys, testing};
    use sluice_provider_core::Role;

    use super::*;

    const MAP: &str =
        "[devices.d]\naddress = \"127.0.0.1:502\"\n[[tags]]\nname = \"t\"\ntable = \"coil\"\naddress = 0\n";

    #[test]
    fn every_documented_source_key_parses() {
        let config = [
            (REGISTER_MAP, Some(MAP)),
            ("record_per", None),
            ("report_on_change", None),
            ("reconnect_initial", None),
            ("reconnect_max", None),
        ];
        check_keys(&schema(), Role::Source, &[&config], |r| {
            parse_engine_keys(Role::Source, r)?;
            ModbusSource.parse_config(r)
        });
    }

    #[test]
    fn every_documented_sink_key_parses() {
        let config = [
            (REGISTER_MAP, Some(MAP)),
            ("buffer", Some("disk")),
            ("buffer_dir", Some("/tmp/b")),
            ("buffer_max_bytes", None),
            ("buffer_max_age", None),
            ("buffer_full", None),
        ];
        check_keys(&schema(), Role::Sink, &[&config], |r| {
            parse_engine_keys(Role::Sink, r)?;
            ModbusSink.parse_config(r)
        });
    }

    #[test]
    fn schema_json_readme_and_refusals() {
        let schema = schema();
        testing::check_committed(&schema, env!("CARGO_MANIFEST_DIR"));
        testing::check_readme(&schema, include_str!("../README.md"));
        testing::check_refusals(&schema);
    }
}
