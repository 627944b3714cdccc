//! What a provider's link config may hold, described once: each config module declares its keys
//! as a table of [`Key`]s, the provider gathers them (with the engine's own keys, [`SOURCE_KEYS`]
//! and [`SINK_KEYS`]) into a [`Schema`], and
//!
//! - a [`ConfigReader`](crate::ConfigReader) given the schema refuses keys the schema does not
//!   know and records every read that does not match it (an undocumented key, another type, another
//!   default: see [`ConfigReader::drift`](crate::ConfigReader::drift)), so a test that parses every
//!   documented key ([`check_keys`]) fails when the table and the parser disagree;
//! - [`Schema::to_json`] renders it as a JSON Schema (`provider-*/schema.json`, `--schema` of every
//!   provider binary, `sluice schema <provider>`), which the deploy crate checks specs against with
//!   [`check_value`] before anything is deployed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::config::{parse_duration, parse_size, ConfigError, ConfigReader, Secret};
use crate::link::Role;

/// The type of a config value (every value arrives as a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// Any text.
    String,
    /// A whole number of at least `min`.
    Int {
        /// The smallest value allowed.
        min: i64,
    },
    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
    Bool,
    /// A duration such as `250ms`, `5s`, `2m` or `1h` ([`parse_duration`]).
    Duration,
    /// A size such as `512`, `64KiB` or `8MiB` ([`parse_size`]).
    Size,
    /// One of the listed values.
    Enum(&'static [&'static str]),
    /// A comma-separated list of strings.
    List,
}

impl KeyType {
    /// The JSON Schema type name of a value, and Sluice's own name for its format.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::String => ("string", "string"),
            Self::Int { .. } => ("integer", "int"),
            Self::Bool => ("boolean", "bool"),
            Self::Duration => ("string", "duration"),
            Self::Size => ("string", "size"),
            Self::Enum(_) => ("string", "enum"),
            Self::List => ("string", "list"),
        }
    }
}

/// Checks one config value against a key's type, as rendered in a JSON Schema: `format` is the
/// key's `x-sluice-type` (`string`, `int`, `bool`, `duration`, `size`, `enum`, `list`), `allowed`
/// its `enum`, `min` its `minimum`. The error says what was expected.
pub fn check_value(format: &str, allowed: Option<&[String]>, min: Option<i64>, value: &str) -> Result<(), String> {
    let value = value.trim();
    match format {
        "int" => {
            let n: i64 = value
                .parse()
                .map_err(|_| format!("expected a whole number, got `{value}`"))?;
            match min {
                Some(min) if n < min => Err(format!("expected a whole number of at least {min}, got `{value}`")),
                _ => Ok(()),
            }
        }
        "bool" => match value.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" | "false" | "no" | "off" | "0" => Ok(()),
            _ => Err(format!("expected true or false, got `{value}`")),
        },
        "duration" => parse_duration(value).map(drop),
        "size" => parse_size(value).map(drop),
        "enum" => match allowed {
            Some(allowed) if !allowed.iter().any(|a| a == value) => {
                Err(format!("expected one of {}, got `{value}`", allowed.join(", ")))
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Where a key's value may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    /// Plain link config.
    Plain,
    /// Only a wasmCloud secret: given as plain config it is refused.
    Secret,
    /// Either (e.g. a user name).
    Either,
}

/// One config key: its name, type, default, role, whether it is a secret, and a line of doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key, or with [`prefix`](Self::prefix) the start of every key of a family (`kafka.`).
    pub name: &'static str,
    /// What its value is.
    pub ty: KeyType,
    /// One line for the README and the UI.
    pub doc: &'static str,
    /// The value used when the key is absent, as it would be written.
    pub default: Option<&'static str>,
    /// A link without it is refused.
    pub required: bool,
    /// Plain config, secret, or either.
    pub secrecy: Secrecy,
    /// Read on source links.
    pub source: bool,
    /// Read on sink links.
    pub sink: bool,
    /// `name` is a prefix: every key starting with it belongs to this entry.
    pub prefix: bool,
}

impl Key {
    /// An optional plain key read on both source and sink links.
    #[must_use]
    pub const fn new(name: &'static str, ty: KeyType, doc: &'static str) -> Self {
        Self {
            name,
            ty,
            doc,
            default: None,
            required: false,
            secrecy: Secrecy::Plain,
            source: true,
            sink: true,
            prefix: false,
        }
    }

    /// Read on source links only.
    #[must_use]
    pub const fn source(mut self) -> Self {
        self.source = true;
        self.sink = false;
        self
    }

    /// Read on sink links only.
    #[must_use]
    pub const fn sink(mut self) -> Self {
        self.source = false;
        self.sink = true;
        self
    }

    /// Must be given.
    #[must_use]
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// The value used when absent.
    #[must_use]
    pub const fn default(mut self, value: &'static str) -> Self {
        self.default = Some(value);
        self
    }

    /// Only from a wasmCloud secret.
    #[must_use]
    pub const fn secret(mut self) -> Self {
        self.secrecy = Secrecy::Secret;
        self
    }

    /// From plain config or a wasmCloud secret.
    #[must_use]
    pub const fn plain_or_secret(mut self) -> Self {
        self.secrecy = Secrecy::Either;
        self
    }

    /// The name is a prefix of a family of keys.
    #[must_use]
    pub const fn prefix(mut self) -> Self {
        self.prefix = true;
        self
    }

    /// Whether links of `role` read it.
    #[must_use]
    pub fn has_role(&self, role: Role) -> bool {
        match role {
            Role::Source => self.source,
            Role::Sink => self.sink,
        }
    }

    /// Whether `key` is this key (or one of its family).
    #[must_use]
    pub fn matches(&self, key: &str) -> bool {
        if self.prefix {
            key.len() > self.name.len() && key.starts_with(self.name)
        } else {
            key == self.name
        }
    }

    fn to_json(self) -> Value {
        let (json_type, format) = self.ty.names();
        let mut p = Map::new();
        p.insert("type".into(), json!(json_type));
        p.insert("x-sluice-type".into(), json!(format));
        p.insert("description".into(), json!(self.doc));
        match self.ty {
            KeyType::Int { min } => {
                p.insert("minimum".into(), json!(min));
            }
            KeyType::Enum(values) => {
                p.insert("enum".into(), json!(values));
            }
            _ => {}
        }
        if let Some(default) = self.default {
            p.insert("default".into(), json!(default));
        }
        match self.secrecy {
            Secrecy::Plain => {}
            Secrecy::Secret => {
                p.insert("x-sluice-secret".into(), json!("only"));
                p.insert("writeOnly".into(), json!(true));
            }
            Secrecy::Either => {
                p.insert("x-sluice-secret".into(), json!("allowed"));
            }
        }
        Value::Object(p)
    }
}

/// The keys the engine reads on every source link ([`crate::RunnerSettings`], the tap's
/// `sensitive`, the lease's `lease_ttl`), with the engine's defaults.
pub const SOURCE_KEYS: &[Key] = &[
    Key::new(
        "max_batch_records",
        KeyType::Int { min: 1 },
        "Most records in one batch delivered to the step",
    )
    .source()
    .default("512"),
    Key::new("max_batch_bytes", KeyType::Size, "Most payload bytes in one batch")
        .source()
        .default("1MiB"),
    Key::new(
        "linger",
        KeyType::Duration,
        "How long a batch waits to fill up before it is delivered",
    )
    .source()
    .default("20ms"),
    Key::new(
        "max_in_flight",
        KeyType::Int { min: 1 },
        "Batches delivered and not yet acknowledged",
    )
    .source()
    .default("4"),
    Key::new(
        "deliver_timeout",
        KeyType::Duration,
        "Deadline of one deliver call; a batch that outlives it is retried",
    )
    .source()
    .default("5s"),
    Key::new(
        "retry_initial",
        KeyType::Duration,
        "First backoff between delivery attempts",
    )
    .source()
    .default("100ms"),
    Key::new(
        "retry_max",
        KeyType::Duration,
        "Longest backoff between delivery attempts",
    )
    .source()
    .default("10s"),
    Key::new(
        "max_retries",
        KeyType::Int { min: 0 },
        "Attempts after which a batch is dead-lettered; absent or 0: retry forever",
    )
    .source(),
    Key::new(
        "drain_timeout",
        KeyType::Duration,
        "On link delete or shutdown, how long in-flight batches may take",
    )
    .source()
    .default("30s"),
    Key::new(
        "lease_ttl",
        KeyType::Duration,
        "How long a single-reader link's lease lasts without renewal (500ms to 10m)",
    )
    .source()
    .default("10s"),
    Key::new(
        "sensitive",
        KeyType::Bool,
        "The link's records are never shown to `sluice tap`",
    )
    .source()
    .default("false"),
];

/// The keys the engine reads on every sink link ([`crate::sink::SinkSettings`], the tap's
/// `sensitive`), with the engine's defaults; the disk buffer's are [`BUFFER_KEYS`].
pub const SINK_KEYS: &[Key] = &[
    Key::new(
        "max_concurrent_writes",
        KeyType::Int { min: 1 },
        "Writes running at once for this link",
    )
    .sink()
    .default("4"),
    Key::new(
        "slot_wait",
        KeyType::Duration,
        "How long a write waits for a free slot before it is answered retry",
    )
    .sink()
    .default("1s"),
    Key::new(
        "sensitive",
        KeyType::Bool,
        "The link's records are never shown to `sluice tap`",
    )
    .sink()
    .default("false"),
];

/// The disk buffer's keys ([`crate::buffer::BufferOptions`]), read on source and sink links alike.
pub const BUFFER_KEYS: &[Key] = &[
    Key::new(
        "buffer",
        KeyType::Enum(&["none", "disk"]),
        "`disk`: a durable local buffer; a sink write is answered, a source record acknowledged, once it is fsynced there",
    )
    .default("none"),
    Key::new(
        "buffer_dir",
        KeyType::String,
        "The buffer's directory (required with `buffer = disk`)",
    ),
    Key::new("buffer_max_bytes", KeyType::Size, "The buffer's bound on disk").default("1GiB"),
    Key::new(
        "buffer_max_age",
        KeyType::Duration,
        "Batches older than this are dropped from the buffer (default: kept)",
    ),
    Key::new(
        "buffer_full",
        KeyType::Enum(&["block", "drop_oldest"]),
        "What a full buffer does",
    )
    .default("block"),
];

/// Everything a provider's link config (and its own provider config) may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// The provider's short name in specs, e.g. `mqtt`.
    pub provider: &'static str,
    /// A line about the provider.
    pub description: &'static str,
    /// Whether it can be a source.
    pub source: bool,
    /// Whether it can be a sink.
    pub sink: bool,
    /// Link config keys, engine keys included.
    pub link: Vec<Key>,
    /// The provider's own config keys (HostData config, shared by its links).
    pub provider_config: Vec<Key>,
    /// Unknown keys are warned about rather than refused (test fixtures only).
    pub open: bool,
}

impl Schema {
    /// A provider with the given roles, and the engine's keys of those roles.
    #[must_use]
    pub fn new(provider: &'static str, description: &'static str, source: bool, sink: bool) -> Self {
        let mut schema = Self {
            provider,
            description,
            source,
            sink,
            link: Vec::new(),
            provider_config: Vec::new(),
            open: false,
        };
        if source {
            schema = schema.keys(SOURCE_KEYS);
        }
        if sink {
            schema = schema.keys(SINK_KEYS);
        }
        schema.keys(BUFFER_KEYS)
    }

    /// A schema that knows no connector keys and lets unknown keys through with a warning, for
    /// test fixtures.
    #[must_use]
    pub fn open(provider: &'static str) -> Self {
        let mut schema = Self::new(provider, "test fixture", true, true);
        schema.open = true;
        schema
    }

    /// Adds link config keys.
    ///
    /// # Panics
    /// When a key is declared twice for one role: each key has one description.
    #[must_use]
    pub fn keys(mut self, keys: &[Key]) -> Self {
        for key in keys {
            for role in [Role::Source, Role::Sink] {
                assert!(
                    !key.has_role(role) || self.key(role, key.name).is_none(),
                    "`{}` is declared twice for {role} links",
                    key.name
                );
            }
            self.link.push(*key);
        }
        self
    }

    /// Adds keys of the provider's own config.
    #[must_use]
    pub fn provider_keys(mut self, keys: &[Key]) -> Self {
        self.provider_config.extend_from_slice(keys);
        self
    }

    /// Replaces the default of an engine key for this provider (e.g. HTTP's shorter
    /// `deliver_timeout`).
    ///
    /// # Panics
    /// When there is no such key for `role`.
    #[must_use]
    pub fn with_default(mut self, role: Role, name: &str, default: &'static str) -> Self {
        let key = self
            .link
            .iter_mut()
            .find(|k| k.has_role(role) && k.matches(name))
            .unwrap_or_else(|| panic!("no {role} key `{name}`"));
        key.default = Some(default);
        self
    }

    /// The entry of link config key `name` on links of `role`.
    #[must_use]
    pub fn key(&self, role: Role, name: &str) -> Option<&Key> {
        self.link.iter().find(|k| k.has_role(role) && k.matches(name))
    }

    /// Checks a link's keys (not their values: the parser does that): a key the provider knows
    /// for neither role is refused, as is a secret-only key given as plain config. Returns the
    /// keys known only for the other role, which the link ignores.
    pub fn check_link(
        &self,
        role: Role,
        config: &HashMap<String, String>,
        secrets: &HashMap<String, Secret>,
    ) -> Result<Vec<String>, ConfigError> {
        let mut ignored = BTreeSet::new();
        let names: BTreeSet<&String> = config.keys().chain(secrets.keys()).collect();
        for name in names {
            match self.key(role, name) {
                Some(key) => {
                    if key.secrecy == Secrecy::Secret && config.contains_key(name.as_str()) {
                        return Err(ConfigError::SecretInConfig { key: name.clone() });
                    }
                }
                None if self.link.iter().any(|k| k.matches(name)) => {
                    ignored.insert(name.clone());
                }
                None if self.open => {
                    ignored.insert(name.clone());
                }
                None => {
                    return Err(ConfigError::Unknown {
                        key: name.clone(),
                        provider: self.provider.to_string(),
                    })
                }
            }
        }
        Ok(ignored.into_iter().collect())
    }

    /// The JSON Schema of a spec's endpoint config: an object with `source`, `sink` (the link
    /// config of each role the provider has) and `provider_config`. Keys are in the order
    /// declared; every property carries `x-sluice-type` and, for secrets, `x-sluice-secret`
    /// (`only`: a wasmCloud secret, never plain config; `allowed`: either).
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut properties = Map::new();
        for (role, has) in [(Role::Source, self.source), (Role::Sink, self.sink)] {
            if has {
                let keys: Vec<&Key> = self.link.iter().filter(|k| k.has_role(role)).collect();
                properties.insert(role.to_string(), object(&keys, &format!("{role} link config")));
            }
        }
        let keys: Vec<&Key> = self.provider_config.iter().collect();
        properties.insert(
            "provider_config".into(),
            object(&keys, "the provider's own config, shared by its links"),
        );
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": format!("https://sluice.dev/schemas/provider-{}.json", self.provider),
            "title": format!("sluice-provider-{}", self.provider),
            "description": self.description,
            "x-sluice-provider": self.provider,
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        })
    }

    /// [`to_json`](Self::to_json) as the text of `schema.json`: pretty, with a final newline.
    #[must_use]
    pub fn to_json_string(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.to_json()).expect("a JSON value serializes");
        text.push('\n');
        text
    }

    /// When the process was started with `--schema`, prints the JSON Schema and returns `true`:
    /// the provider binary then exits without looking for a host.
    #[must_use]
    pub fn print_if_asked(&self) -> bool {
        if std::env::args().skip(1).any(|a| a == "--schema") {
            print!("{}", self.to_json_string());
            return true;
        }
        false
    }
}

fn object(keys: &[&Key], description: &str) -> Value {
    let mut properties = Map::new();
    let mut patterns = Map::new();
    let mut required = Vec::new();
    for key in keys {
        if key.prefix {
            let mut p = key.to_json();
            p["x-sluice-prefix"] = json!(key.name);
            patterns.insert(format!("^{}", key.name.replace('.', "\\.")), p);
        } else {
            properties.insert(key.name.into(), key.to_json());
            if key.required {
                required.push(key.name);
            }
        }
    }
    let mut o = Map::new();
    o.insert("type".into(), json!("object"));
    o.insert("description".into(), json!(description));
    o.insert("properties".into(), Value::Object(properties));
    if !patterns.is_empty() {
        o.insert("patternProperties".into(), Value::Object(patterns));
    }
    if !required.is_empty() {
        o.insert("required".into(), json!(required));
    }
    o.insert("additionalProperties".into(), json!(false));
    Value::Object(o)
}

/// A sample value of `key` that parses (for [`check_keys`]).
fn sample(key: &Key) -> Option<String> {
    Some(match key.ty {
        KeyType::Int { min } => key.default.map_or_else(|| (min.max(1)).to_string(), str::to_string),
        KeyType::Bool => "true".into(),
        KeyType::Duration => key.default.unwrap_or("1s").into(),
        KeyType::Size => key.default.unwrap_or("1KiB").into(),
        KeyType::Enum(values) => key.default.unwrap_or(values[0]).into(),
        KeyType::String | KeyType::List => return key.default.map(str::to_string),
    })
}

/// For a provider's test: parses each of `configs` (key -> value; a `None` value takes a sample
/// of the key's type; secret-only keys go in as secrets) with `parse` through a reader that checks
/// reads against `schema`, and fails when a parse fails, when a read does not match the schema
/// (an undocumented key, another type or default), or when a key documented for `role` is read
/// by none of them. Several configs cover keys that exclude each other.
///
/// # Panics
/// On any of those, with what is wrong.
pub fn check_keys<T>(
    schema: &Schema,
    role: Role,
    configs: &[&[(&str, Option<&str>)]],
    parse: impl Fn(&ConfigReader<'_>) -> Result<T, ConfigError>,
) {
    let mut read = BTreeSet::new();
    for (i, config) in configs.iter().enumerate() {
        let mut values = HashMap::new();
        let mut secrets = HashMap::new();
        for (name, value) in *config {
            let key = schema
                .key(role, name)
                .unwrap_or_else(|| panic!("config {i}: `{name}` is not a {role} key of the schema"));
            let value = value
                .map(str::to_string)
                .or_else(|| sample(key))
                .unwrap_or_else(|| panic!("config {i}: give `{name}` a value"));
            if key.secrecy == Secrecy::Secret {
                secrets.insert((*name).to_string(), Secret::new(value));
            } else {
                values.insert((*name).to_string(), value);
            }
        }
        schema
            .check_link(role, &values, &secrets)
            .unwrap_or_else(|e| panic!("config {i}: {e}"));
        let reader = ConfigReader::new(&values, &secrets).with_schema(schema, role);
        if let Err(e) = parse(&reader) {
            panic!("config {i} does not parse: {e}");
        }
        let drift = reader.drift();
        assert!(
            drift.is_empty(),
            "config {i}: the parser and the schema disagree: {drift:#?}"
        );
        read.extend(reader.read_keys());
    }
    let unread: Vec<&str> = schema
        .link
        .iter()
        // The buffer's keys are read only with `buffer = disk`; provider-core's tests cover them.
        .filter(|k| k.has_role(role) && !k.prefix && !BUFFER_KEYS.contains(k))
        .map(|k| k.name)
        .filter(|name| !read.contains(*name))
        .collect();
    assert!(
        unread.is_empty(),
        "{role} keys documented but read by no config of the test: {unread:?}"
    );
}

/// Parses the keys the engine reads for `role` (what [`crate::Engine`] reads before the
/// connector's keys), for [`check_keys`] of a provider's whole link config.
pub fn parse_engine_keys(role: Role, reader: &ConfigReader<'_>) -> Result<(), ConfigError> {
    parse_engine_keys_with(role, reader, &crate::RunnerSettings::default())
}

/// [`parse_engine_keys`] for a source whose engine defaults are its own
/// ([`SourceSide::runner_defaults`](crate::SourceSide::runner_defaults)).
pub fn parse_engine_keys_with(
    role: Role,
    reader: &ConfigReader<'_>,
    defaults: &crate::RunnerSettings,
) -> Result<(), ConfigError> {
    reader.bool_or(crate::tap::SENSITIVE_KEY, false)?;
    match role {
        Role::Source => {
            crate::RunnerSettings::from_config_or(reader, defaults)?;
            crate::lease::ttl_from(reader)?;
            crate::buffer::BufferOptions::from_config(reader)?;
        }
        Role::Sink => {
            crate::sink::SinkSettings::from_config(reader)?;
        }
    }
    Ok(())
}

/// The rows of a README's key tables (tables whose first header cell is `key`), as
/// `key -> the row's other cells`, for a test comparing them with the schema. Every name in
/// backticks in the first cell counts (`` `a` / `b` ``, ``secret `token` ``); a family of keys
/// written `kafka.<property>` is returned as its prefix `kafka.`.
#[must_use]
pub fn readme_keys(readme: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys = BTreeMap::new();
    let mut in_key_table = false;
    for line in readme.lines() {
        let Some(row) = line.trim().strip_prefix('|') else {
            in_key_table = false;
            continue;
        };
        let cells: Vec<String> = row.split('|').map(|c| c.trim().to_string()).collect();
        let first = cells.first().map(String::as_str).unwrap_or_default();
        if first.eq_ignore_ascii_case("key") {
            in_key_table = true;
            continue;
        }
        if !in_key_table {
            continue;
        }
        for name in first.split('`').skip(1).step_by(2) {
            let name = name.split('<').next().unwrap_or(name);
            keys.insert(name.to_string(), cells[1..].to_vec());
        }
    }
    keys
}

/// Checks for a provider's tests, against what the provider crate has committed.
pub mod testing {
    use super::{readme_keys, Role, Schema, Secrecy, BUFFER_KEYS, SINK_KEYS, SOURCE_KEYS};
    use std::collections::HashMap;
    use std::path::Path;

    /// Fails when `<crate_dir>/schema.json` differs from `schema`; with `SLUICE_BLESS_SCHEMA=1`
    /// in the environment it writes the file instead.
    ///
    /// # Panics
    /// When the committed file is missing or stale.
    pub fn check_committed(schema: &Schema, crate_dir: &str) {
        let path = Path::new(crate_dir).join("schema.json");
        let want = schema.to_json_string();
        if std::env::var_os("SLUICE_BLESS_SCHEMA").is_some() {
            std::fs::write(&path, &want).expect("write schema.json");
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is not what the code describes; regenerate it with \
             `SLUICE_BLESS_SCHEMA=1 cargo test -p sluice-provider-{} schema` \
             (or `sluice-provider-{} --schema > {}`)",
            path.display(),
            schema.provider,
            schema.provider,
            path.display()
        );
    }

    /// Fails when the README's key tables and the schema disagree: a key of the provider's own
    /// (not one of the engine's, which the main README documents) missing from the tables, a
    /// key in the tables the schema does not know, or a `role` cell (`source`, `sink`, `both`)
    /// other than the key's roles.
    ///
    /// # Panics
    /// On the first disagreement.
    pub fn check_readme(schema: &Schema, readme: &str) {
        let rows = readme_keys(readme);
        let engine = |k: &super::Key| SOURCE_KEYS.contains(k) || SINK_KEYS.contains(k) || BUFFER_KEYS.contains(k);
        for key in schema.link.iter().chain(&schema.provider_config) {
            if !engine(key) {
                assert!(
                    rows.contains_key(key.name),
                    "`{}` is not in the README's key tables",
                    key.name
                );
            }
        }
        for (name, cells) in &rows {
            let in_link: Vec<_> = schema.link.iter().filter(|k| k.name == name.as_str()).collect();
            let known = !in_link.is_empty() || schema.provider_config.iter().any(|k| k.name == name.as_str());
            assert!(known, "the README documents `{name}`, which the schema does not know");
            let role = cells.first().map(String::as_str).unwrap_or_default();
            let (source, sink) = (in_link.iter().any(|k| k.source), in_link.iter().any(|k| k.sink));
            let expected = match role {
                "both" => Some((true, true)),
                "source" => Some((true, false)),
                "sink" => Some((false, true)),
                _ => None,
            };
            if let Some(expected) = expected {
                if !in_link.is_empty() && schema.source && schema.sink {
                    assert_eq!((source, sink), expected, "the README's role of `{name}` is `{role}`");
                }
            }
        }
    }

    /// Fails unless, for every role of the provider, an unknown key is refused naming it and a
    /// secret-only key given as plain config is refused.
    ///
    /// # Panics
    /// When one is accepted.
    pub fn check_refusals(schema: &Schema) {
        let roles = [(Role::Source, schema.source), (Role::Sink, schema.sink)];
        for role in roles.into_iter().filter_map(|(r, has)| has.then_some(r)) {
            let config: HashMap<String, String> = [("no_such_key".to_string(), "1".to_string())].into();
            let err = schema.check_link(role, &config, &HashMap::new()).unwrap_err();
            assert!(err.to_string().contains("`no_such_key`"), "{err}");
            for key in schema
                .link
                .iter()
                .filter(|k| k.has_role(role) && k.secrecy == Secrecy::Secret)
            {
                let config: HashMap<String, String> = [(key.name.to_string(), "x".to_string())].into();
                let err = schema.check_link(role, &config, &HashMap::new()).unwrap_err();
                assert_eq!(err.key(), key.name, "{err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[Key] = &[
        Key::new("topic", KeyType::String, "Where to read").source().required(),
        Key::new("qos", KeyType::Enum(&["0", "1"]), "Delivery").default("1"),
        Key::new("password", KeyType::String, "Password").secret(),
        Key::new("wait", KeyType::Duration, "Wait").sink().default("5s"),
        Key::new("x.", KeyType::String, "Pass-through").prefix(),
    ];

    fn schema() -> Schema {
        Schema::new("demo", "A demo", true, true).keys(KEYS)
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn unknown_keys_are_refused_and_other_roles_ignored() {
        let s = schema();
        let none = HashMap::new();
        assert_eq!(
            s.check_link(
                Role::Source,
                &map(&[("topic", "t"), ("x.a", "1"), ("max_in_flight", "2")]),
                &none
            ),
            Ok(vec![])
        );
        let err = s.check_link(Role::Source, &map(&[("tpoic", "t")]), &none).unwrap_err();
        assert_eq!(err.key(), "tpoic");
        assert!(err.to_string().contains("unknown key `tpoic`"), "{err}");
        assert_eq!(
            s.check_link(Role::Source, &map(&[("wait", "1s"), ("slot_wait", "1s")]), &none),
            Ok(vec!["slot_wait".to_string(), "wait".to_string()])
        );
        assert_eq!(
            s.check_link(Role::Sink, &map(&[("password", "p")]), &none),
            Err(ConfigError::SecretInConfig { key: "password".into() })
        );
        assert!(s.check_link(Role::Sink, &map(&[("x.", "1")]), &none).is_err());
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn a_key_is_declared_once() {
        let _ = Schema::new("demo", "A demo", true, false).keys(&[Key::new("linger", KeyType::Duration, "again")]);
    }

    #[test]
    fn drift_between_reader_and_schema_is_recorded() {
        let s = schema();
        let values = map(&[("topic", "t"), ("wait", "1s")]);
        let secrets = HashMap::new();
        let reader = ConfigReader::new(&values, &secrets).with_schema(&s, Role::Sink);
        let _ = reader.str("qos");
        reader.duration_or("wait", std::time::Duration::from_secs(5)).unwrap();
        assert!(reader.drift().is_empty(), "{:?}", reader.drift());
        let _ = reader.str("topic");
        reader.duration_or("qos", std::time::Duration::ZERO).unwrap();
        reader.duration_or("wait", std::time::Duration::from_secs(6)).unwrap();
        reader.secret("qos").unwrap();
        let drift = reader.drift();
        assert_eq!(drift.len(), 4, "{drift:#?}");
        assert!(drift[0].contains("`topic`"), "{drift:?}");
    }

    #[test]
    fn check_keys_covers_every_documented_key() {
        let s = schema();
        check_keys(
            &s,
            Role::Sink,
            &[&[("wait", None), ("password", Some("p")), ("qos", None)]],
            |r| {
                parse_engine_keys(Role::Sink, r)?;
                r.duration_or("wait", std::time::Duration::from_secs(5))?;
                r.secret("password")?;
                let _ = r.str("qos");
                // The buffer keys are read only with `buffer = disk`.
                let _ = r.str("buffer_dir");
                r.size_or("buffer_max_bytes", 1 << 30)?;
                let _ = r.str("buffer_max_age");
                let _ = r.str("buffer_full");
                Ok(())
            },
        );
    }

    #[test]
    #[should_panic(expected = "read by no config")]
    fn check_keys_fails_on_an_unread_key() {
        check_keys(&schema(), Role::Sink, &[&[]], |r| parse_engine_keys(Role::Sink, r));
    }

    #[test]
    fn values_are_checked_by_type() {
        assert!(check_value("duration", None, None, "500ms").is_ok());
        assert!(check_value("duration", None, None, "soon")
            .unwrap_err()
            .contains("expected a duration"));
        assert!(check_value("int", None, Some(1), "0").is_err());
        assert!(check_value("int", None, Some(1), "x").is_err());
        assert!(check_value("size", None, None, "8MiB").is_ok());
        assert!(check_value("bool", None, None, "maybe").is_err());
        let allowed = ["a".to_string(), "b".to_string()];
        assert!(check_value("enum", Some(&allowed), None, "c")
            .unwrap_err()
            .contains("one of a, b"));
    }

    #[test]
    fn json_schema_has_roles_types_and_secrets() {
        let json = schema().to_json();
        let source = &json["properties"]["source"];
        assert_eq!(source["required"], json!(["topic"]));
        assert_eq!(source["properties"]["qos"]["enum"], json!(["0", "1"]));
        assert_eq!(source["properties"]["password"]["x-sluice-secret"], json!("only"));
        assert_eq!(source["properties"]["linger"]["x-sluice-type"], json!("duration"));
        assert!(source["properties"].get("wait").is_none());
        assert_eq!(source["patternProperties"]["^x\\."]["x-sluice-prefix"], json!("x."));
        assert_eq!(json["properties"]["sink"]["properties"]["wait"]["default"], json!("5s"));
    }

    #[test]
    fn the_main_readme_documents_every_engine_key() {
        let readme = include_str!("../../README.md");
        for key in SOURCE_KEYS.iter().chain(SINK_KEYS).chain(BUFFER_KEYS) {
            assert!(
                readme.contains(&format!("`{}`", key.name)),
                "README.md does not document `{}`",
                key.name
            );
        }
    }

    #[test]
    fn readme_rows_are_found() {
        let text = "| Key | Doc |\n|---|---|\n| `topic` | where |\n| `kafka.<p>` | any |\n| plain | no |\n\n| path | x |\n| `a` | b |\n";
        let keys = readme_keys(text);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["kafka.", "topic"]);
        assert_eq!(keys["topic"], vec!["where".to_string(), String::new()]);
    }
}
