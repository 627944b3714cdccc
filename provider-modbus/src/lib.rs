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
use sluice_provider_core::{ConfigError, ConfigReader, ConnectorError, LinkKey, SinkConnector, SourceConnector};

pub use map::{MapError, RegisterMap};
pub use sink::ModbusWriter;
pub use source::{ModbusReader, RecordPer, SourceSettings};

/// The link config key holding the register map.
pub const REGISTER_MAP: &str = "register_map";

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
        if initial.is_zero() || max < initial {
            return Err(ConfigError::invalid(
                "reconnect_max",
                format!("expected reconnect_initial ({initial:?}) > 0 and reconnect_max ({max:?}) >= it"),
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
