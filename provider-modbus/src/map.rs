//! The register map: which devices to talk to and what each tag means.
//!
//! A map is JSON or TOML text (the `register_map` link config key). It is parsed into a generic
//! document first and then validated field by field, so that every mistake is reported with the
//! tag (or device) and the field at fault, e.g.
//! ``tag `tank_level` (tags[3]): field `type`: unknown data type `f16` ...``.
//! See the crate's README for the format and an example.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value as Json};

/// The most registers one read request may ask for (Modbus application protocol, FC 3/4).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// The most coils or discrete inputs one read request may ask for (FC 1/2).
pub const MAX_BITS_PER_READ: u16 = 2000;
/// The most registers one write-multiple request may carry (FC 16).
pub const MAX_REGISTERS_PER_WRITE: u16 = 123;

/// A register map that does not validate: where (a tag or a device, and the field) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}{}: {reason}", field.as_ref().map(|f| format!(": field `{f}`")).unwrap_or_default())]
pub struct MapError {
    /// ``tag `name` (tags[3])``, ``device `plc1` ``, or `the map` for the document itself.
    pub location: String,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    /// What is wrong and what was expected.
    pub reason: String,
}

impl MapError {
    fn new(location: impl Into<String>, field: Option<&str>, reason: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            field: field.map(str::to_string),
            reason: reason.into(),
        }
    }
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Read-write single bits (FC 1, 5, 15).
    Coil,
    /// Read-only single bits (FC 2).
    DiscreteInput,
    /// Read-only 16-bit registers (FC 4).
    InputRegister,
    /// Read-write 16-bit registers (FC 3, 6, 16).
    HoldingRegister,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 4] = [
        Table::Coil,
        Table::DiscreteInput,
        Table::InputRegister,
        Table::HoldingRegister,
    ];

    /// The short name used in the map and in origins: `coil`, `discrete`, `input`, `holding`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Coil => "coil",
            Self::DiscreteInput => "discrete",
            Self::InputRegister => "input",
            Self::HoldingRegister => "holding",
        }
    }

    /// Whether the table holds single bits (coils, discrete inputs) rather than registers.
    #[must_use]
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::DiscreteInput)
    }

    /// Whether a client may write the table (coils and holding registers).
    #[must_use]
    pub fn is_writable(self) -> bool {
        matches!(self, Self::Coil | Self::HoldingRegister)
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "coil" | "coils" => Self::Coil,
            "discrete" | "discrete_input" | "discrete_inputs" => Self::DiscreteInput,
            "input" | "input_register" | "input_registers" => Self::InputRegister,
            "holding" | "holding_register" | "holding_registers" => Self::HoldingRegister,
            _ => return None,
        })
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a tag's registers are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// One coil or discrete input.
    Bool,
    /// Unsigned 16-bit, one register.
    U16,
    /// Signed 16-bit, one register.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// IEEE 754 single precision, two registers.
    F32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 double precision, four registers.
    F64,
    /// ASCII text of this many registers (two characters each), NUL-padded.
    String(u16),
}

impl DataType {
    const NAMES: &'static str = "bool, u16, i16, u32, i32, f32, u64, i64, f64, string";

    /// How many registers (or bits, for `bool`) the type spans.
    #[must_use]
    pub fn width(self) -> u16 {
        match self {
            Self::Bool | Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
            Self::U64 | Self::I64 | Self::F64 => 4,
            Self::String(n) => n,
        }
    }

    /// Whether values of this type are numbers (and so may be scaled and bounded).
    #[must_use]
    pub fn is_numeric(self) -> bool {
        !matches!(self, Self::Bool | Self::String(_))
    }

    /// The type's name as written in the map.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
            Self::String(_) => "string",
        }
    }
}

/// Order of the two bytes inside each 16-bit register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ByteOrder {
    /// High byte first, as the Modbus specification says (`AB`).
    #[default]
    Big,
    /// Low byte first (`BA`).
    Little,
}

/// Order of the registers of a multi-register value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum WordOrder {
    /// Most significant register at the lowest address (`AB CD`).
    #[default]
    Big,
    /// Least significant register at the lowest address (`CD AB`).
    Little,
}

/// A Modbus TCP device (a PLC, a meter, a gateway's unit).
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// The device's name, used in origins and records.
    pub name: String,
    /// `host:port` (port 502 when absent).
    pub address: String,
    /// The Modbus unit id (slave id), 0-255 (default 1).
    pub unit_id: u8,
    /// How long one connect or request may take (default 1s).
    pub timeout: Duration,
    /// How often the source polls the device (default 1s).
    pub interval: Duration,
    /// Registers of unmapped address space one read may span to join two tags (default 16).
    pub max_register_gap: u16,
    /// Bits of unmapped address space one read may span to join two tags (default 256).
    pub max_bit_gap: u16,
    /// Largest register read this device accepts (default and at most 125).
    pub max_registers_per_read: u16,
    /// Largest coil/discrete read this device accepts (default and at most 2000).
    pub max_bits_per_read: u16,
    /// Default byte order of its tags.
    pub byte_order: ByteOrder,
    /// Default word order of its tags.
    pub word_order: WordOrder,
}

/// One named value in a device's address space.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    /// Unique name across the map; the record key and what sink records name.
    pub name: String,
    /// Index of its device in [`RegisterMap::devices`].
    pub device: usize,
    /// Which table it lives in.
    pub table: Table,
    /// Protocol (0-based) address of its first register or bit.
    pub address: u16,
    /// How to interpret it.
    pub data_type: DataType,
    /// Byte order inside each register.
    pub byte_order: ByteOrder,
    /// Register order of multi-register values.
    pub word_order: WordOrder,
    /// Engineering value = raw * scale + offset (numeric types only).
    pub scale: Option<f64>,
    /// See `scale`.
    pub offset: Option<f64>,
    /// Engineering unit, carried into records (e.g. `degC`).
    pub unit: Option<String>,
    /// Whether the sink may write it (coils and holding registers only).
    pub writable: bool,
    /// Smallest engineering value the sink will write.
    pub min: Option<f64>,
    /// Largest engineering value the sink will write.
    pub max: Option<f64>,
    /// With report-on-change: smallest change of a numeric value that is reported.
    pub deadband: f64,
}

impl Tag {
    /// Registers (or bits) the tag spans.
    #[must_use]
    pub fn width(&self) -> u16 {
        self.data_type.width()
    }

    /// Whether the raw value is scaled into an engineering value.
    #[must_use]
    pub fn is_scaled(&self) -> bool {
        self.scale.is_some() || self.offset.is_some()
    }
}

/// A validated register map.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterMap {
    /// The devices, in name order.
    pub devices: Vec<Device>,
    /// The tags, in the map's order.
    pub tags: Vec<Tag>,
    by_name: HashMap<String, usize>,
}

impl RegisterMap {
    /// Parses and validates a map written as JSON (text starting with `{`) or TOML.
    pub fn parse(text: &str) -> Result<Self, MapError> {
        let doc = parse_document(text)?;
        Self::from_document(&doc)
    }

    /// The tag called `name`.
    #[must_use]
    pub fn tag(&self, name: &str) -> Option<&Tag> {
        self.tag_index(name).map(|i| &self.tags[i])
    }

    /// The index in [`Self::tags`] of the tag called `name`.
    #[must_use]
    pub fn tag_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Indices of the tags of device `device`, in map order.
    pub fn tags_of(&self, device: usize) -> impl Iterator<Item = usize> + '_ {
        self.tags
            .iter()
            .enumerate()
            .filter(move |(_, t)| t.device == device)
            .map(|(i, _)| i)
    }

    fn from_document(doc: &Json) -> Result<Self, MapError> {
        let root = doc
            .as_object()
            .ok_or_else(|| MapError::new("the map", None, "expected a table with `devices` and `tags`"))?;
        check_fields(root, "the map", &["devices", "tags"])?;
        let devices_doc = match root.get("devices") {
            Some(Json::Object(d)) if !d.is_empty() => d,
            Some(Json::Object(_)) => return Err(MapError::new("the map", Some("devices"), "no device declared")),
            Some(_) => {
                return Err(MapError::new(
                    "the map",
                    Some("devices"),
                    "expected a table of devices by name",
                ))
            }
            None => return Err(MapError::new("the map", Some("devices"), "missing")),
        };
        let mut devices = devices_doc
            .iter()
            .map(|(name, d)| parse_device(name, d))
            .collect::<Result<Vec<_>, _>>()?;
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        let device_index: BTreeMap<&str, usize> =
            devices.iter().enumerate().map(|(i, d)| (d.name.as_str(), i)).collect();

        let tags_doc = match root.get("tags") {
            Some(Json::Array(t)) if !t.is_empty() => t,
            Some(Json::Array(_)) => return Err(MapError::new("the map", Some("tags"), "no tag declared")),
            Some(_) => return Err(MapError::new("the map", Some("tags"), "expected a list of tags")),
            None => return Err(MapError::new("the map", Some("tags"), "missing")),
        };
        let mut tags = Vec::with_capacity(tags_doc.len());
        let mut by_name = HashMap::with_capacity(tags_doc.len());
        for (i, t) in tags_doc.iter().enumerate() {
            let tag = parse_tag(i, t, &devices, &device_index)?;
            if by_name.insert(tag.name.clone(), i).is_some() {
                return Err(MapError::new(
                    format!("tag `{}` (tags[{i}])", tag.name),
                    Some("name"),
                    "duplicate tag name: tag names are unique across the map",
                ));
            }
            tags.push(tag);
        }
        Ok(Self { devices, tags, by_name })
    }
}

fn parse_document(text: &str) -> Result<Json, MapError> {
    let text = text.trim();
    if text.starts_with('{') {
        serde_json::from_str(text).map_err(|e| MapError::new("the map", None, format!("invalid JSON: {e}")))
    } else {
        toml::from_str::<Json>(text).map_err(|e| {
            let message = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            MapError::new("the map", None, format!("invalid TOML{at}: {message}"))
        })
    }
}

fn check_fields(object: &Map<String, Json>, location: &str, known: &[&str]) -> Result<(), MapError> {
    for key in object.keys() {
        if !known.contains(&key.as_str()) {
            return Err(MapError::new(
                location,
                Some(key),
                format!("unknown field (expected one of: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Reads the fields of one object, each error naming the location and field.
struct Fields<'a> {
    object: &'a Map<String, Json>,
    location: String,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, reason: impl Into<String>) -> MapError {
        MapError::new(self.location.clone(), Some(field), reason)
    }

    fn get(&self, field: &str) -> Option<&'a Json> {
        self.object.get(field)
    }

    fn str(&self, field: &str) -> Result<Option<&'a str>, MapError> {
        match self.get(field) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(field, format!("expected a string, got {other}"))),
        }
    }

    fn bool(&self, field: &str) -> Result<Option<bool>, MapError> {
        match self.get(field) {
            None => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(field, format!("expected true or false, got {other}"))),
        }
    }

    fn number(&self, field: &str) -> Result<Option<f64>, MapError> {
        match self.get(field) {
            None => Ok(None),
            Some(Json::Number(n)) => match n.as_f64() {
                Some(v) if v.is_finite() => Ok(Some(v)),
                _ => Err(self.err(field, format!("expected a finite number, got {n}"))),
            },
            Some(other) => Err(self.err(field, format!("expected a number, got {other}"))),
        }
    }

    fn integer(&self, field: &str, min: u64, max: u64) -> Result<Option<u64>, MapError> {
        match self.get(field) {
            None => Ok(None),
            Some(Json::Number(n)) => match n.as_u64() {
                Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
                _ => Err(self.err(field, format!("expected a whole number from {min} to {max}, got {n}"))),
            },
            Some(other) => Err(self.err(
                field,
                format!("expected a whole number from {min} to {max}, got {other}"),
            )),
        }
    }

    fn duration(&self, field: &str) -> Result<Option<Duration>, MapError> {
        let Some(text) = self.str(field)? else {
            return Ok(None);
        };
        match sluice_provider_core::config::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            Ok(_) => Err(self.err(field, "must be longer than zero")),
            Err(reason) => Err(self.err(field, reason)),
        }
    }

    fn byte_order(&self, field: &str) -> Result<Option<ByteOrder>, MapError> {
        self.str(field)?
            .map(|s| match s {
                "big" => Ok(ByteOrder::Big),
                "little" => Ok(ByteOrder::Little),
                other => Err(self.err(field, format!("expected `big` or `little`, got `{other}`"))),
            })
            .transpose()
    }

    fn word_order(&self, field: &str) -> Result<Option<WordOrder>, MapError> {
        self.str(field)?
            .map(|s| match s {
                "big" => Ok(WordOrder::Big),
                "little" => Ok(WordOrder::Little),
                other => Err(self.err(field, format!("expected `big` or `little`, got `{other}`"))),
            })
            .transpose()
    }
}

const DEVICE_FIELDS: &[&str] = &[
    "address",
    "unit_id",
    "timeout",
    "interval",
    "byte_order",
    "word_order",
    "max_register_gap",
    "max_bit_gap",
    "max_registers_per_read",
    "max_bits_per_read",
];

const TAG_FIELDS: &[&str] = &[
    "name",
    "device",
    "table",
    "address",
    "type",
    "length",
    "byte_order",
    "word_order",
    "scale",
    "offset",
    "unit",
    "writable",
    "min",
    "max",
    "deadband",
];

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_device(name: &str, doc: &Json) -> Result<Device, MapError> {
    let location = format!("device `{name}`");
    if !valid_name(name) {
        return Err(MapError::new(
            location,
            None,
            "device names use letters, digits, `_`, `-` and `.` only",
        ));
    }
    let object = doc
        .as_object()
        .ok_or_else(|| MapError::new(location.clone(), None, "expected a table of fields"))?;
    check_fields(object, &location, DEVICE_FIELDS)?;
    let f = Fields { object, location };
    let address = f
        .str("address")?
        .ok_or_else(|| f.err("address", "missing (`host:port`)"))?;
    let address = normalise_address(address).map_err(|reason| f.err("address", reason))?;
    Ok(Device {
        name: name.to_string(),
        address,
        unit_id: f.integer("unit_id", 0, 255)?.unwrap_or(1) as u8,
        timeout: f.duration("timeout")?.unwrap_or(Duration::from_secs(1)),
        interval: f.duration("interval")?.unwrap_or(Duration::from_secs(1)),
        max_register_gap: f
            .integer("max_register_gap", 0, u64::from(MAX_REGISTERS_PER_READ))?
            .unwrap_or(16) as u16,
        max_bit_gap: f
            .integer("max_bit_gap", 0, u64::from(MAX_BITS_PER_READ))?
            .unwrap_or(256) as u16,
        max_registers_per_read: f
            .integer("max_registers_per_read", 1, u64::from(MAX_REGISTERS_PER_READ))?
            .unwrap_or(u64::from(MAX_REGISTERS_PER_READ)) as u16,
        max_bits_per_read: f
            .integer("max_bits_per_read", 1, u64::from(MAX_BITS_PER_READ))?
            .unwrap_or(u64::from(MAX_BITS_PER_READ)) as u16,
        byte_order: f.byte_order("byte_order")?.unwrap_or_default(),
        word_order: f.word_order("word_order")?.unwrap_or_default(),
    })
}

/// `host:port` with the port checked, or `host` with port 502.
fn normalise_address(address: &str) -> Result<String, String> {
    let address = address.trim();
    if address.is_empty() {
        return Err("expected `host:port`, got an empty string".into());
    }
    // `[::1]:502`, `host:502`, or a bare host / IPv6 address.
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("expected `[ipv6]:port`, got `{address}`"))?;
        (host.to_string(), tail.strip_prefix(':'))
    } else if address.matches(':').count() == 1 {
        let (host, port) = address.split_once(':').expect("one colon");
        (host.to_string(), Some(port))
    } else {
        (address.to_string(), None)
    };
    if host.is_empty() {
        return Err(format!("expected `host:port`, got `{address}`"));
    }
    let port: u16 = match port {
        None => 502,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("expected a port from 1 to 65535 in `{address}`"))?,
    };
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

fn parse_tag(
    index: usize,
    doc: &Json,
    devices: &[Device],
    device_index: &BTreeMap<&str, usize>,
) -> Result<Tag, MapError> {
    let unnamed = format!("tags[{index}]");
    let object = doc
        .as_object()
        .ok_or_else(|| MapError::new(unnamed.clone(), None, "expected a table of fields"))?;
    let name = match object.get("name") {
        Some(Json::String(s)) if valid_name(s) => s.clone(),
        Some(Json::String(s)) => {
            return Err(MapError::new(
                unnamed,
                Some("name"),
                format!("`{s}`: tag names use letters, digits, `_`, `-` and `.` only"),
            ))
        }
        Some(other) => {
            return Err(MapError::new(
                unnamed,
                Some("name"),
                format!("expected a string, got {other}"),
            ))
        }
        None => return Err(MapError::new(unnamed, Some("name"), "missing")),
    };
    let location = format!("tag `{name}` ({unnamed})");
    check_fields(object, &location, TAG_FIELDS)?;
    let f = Fields { object, location };

    let device = match f.str("device")? {
        Some(d) => *device_index.get(d).ok_or_else(|| {
            f.err(
                "device",
                format!(
                    "no device `{d}` in `devices` (declared: {})",
                    device_index.keys().copied().collect::<Vec<_>>().join(", ")
                ),
            )
        })?,
        None if devices.len() == 1 => 0,
        None => return Err(f.err("device", "missing (the map declares more than one device)")),
    };
    let table_text = f.str("table")?.ok_or_else(|| f.err("table", "missing"))?;
    let table = Table::parse(table_text).ok_or_else(|| {
        f.err(
            "table",
            format!("unknown table `{table_text}` (expected coil, discrete, input or holding)"),
        )
    })?;
    let address = f
        .integer("address", 0, 65535)?
        .ok_or_else(|| f.err("address", "missing"))? as u16;

    let length = f.integer("length", 1, u64::from(MAX_REGISTERS_PER_READ))?;
    let data_type = match f.str("type")? {
        None if table.is_bits() => DataType::Bool,
        None => DataType::U16,
        Some("bool") => DataType::Bool,
        Some("u16") => DataType::U16,
        Some("i16") => DataType::I16,
        Some("u32") => DataType::U32,
        Some("i32") => DataType::I32,
        Some("f32") => DataType::F32,
        Some("u64") => DataType::U64,
        Some("i64") => DataType::I64,
        Some("f64") => DataType::F64,
        Some("string") => DataType::String(
            length.ok_or_else(|| f.err("length", "missing: a string tag needs its length in registers"))? as u16,
        ),
        Some(other) => {
            return Err(f.err(
                "type",
                format!("unknown data type `{other}` (expected one of {})", DataType::NAMES),
            ))
        }
    };
    if length.is_some() && !matches!(data_type, DataType::String(_)) {
        return Err(f.err(
            "length",
            format!(
                "only string tags have a length; `{}` has a fixed width",
                data_type.name()
            ),
        ));
    }
    match (table.is_bits(), data_type) {
        (true, DataType::Bool) | (false, DataType::U16 | DataType::I16 | DataType::U32 | DataType::I32) => {}
        (false, DataType::F32 | DataType::U64 | DataType::I64 | DataType::F64 | DataType::String(_)) => {}
        (true, other) => {
            return Err(f.err(
                "type",
                format!(
                    "`{}` needs a register table; table `{table}` holds single bits",
                    other.name()
                ),
            ))
        }
        (false, DataType::Bool) => {
            return Err(f.err(
                "type",
                format!("`bool` needs a coil or discrete table; table `{table}` holds registers"),
            ))
        }
    }
    let device_limit = if table.is_bits() {
        devices[device].max_bits_per_read
    } else {
        devices[device].max_registers_per_read
    };
    if data_type.width() > device_limit {
        return Err(f.err(
            "length",
            format!(
                "{} registers do not fit in one read of device `{}` (at most {device_limit})",
                data_type.width(),
                devices[device].name
            ),
        ));
    }
    if u32::from(address) + u32::from(data_type.width()) > 65536 {
        return Err(f.err(
            "address",
            format!(
                "{address} + {} registers runs past the last address, 65535",
                data_type.width()
            ),
        ));
    }

    // Byte and word order: the tag's own, else its device's (which defaults to big).
    let byte_order = f.byte_order("byte_order")?.unwrap_or(devices[device].byte_order);
    let word_order = f.word_order("word_order")?.unwrap_or(devices[device].word_order);

    let numeric = data_type.is_numeric();
    let scale = f.number("scale")?;
    let offset = f.number("offset")?;
    for (field, present) in [("scale", scale.is_some()), ("offset", offset.is_some())] {
        if present && !numeric {
            return Err(f.err(
                field,
                format!("only numeric tags are scaled; this tag is `{}`", data_type.name()),
            ));
        }
    }
    if scale == Some(0.0) {
        return Err(f.err("scale", "must not be zero"));
    }
    let unit = f.str("unit")?.map(str::to_string);
    let writable = f.bool("writable")?.unwrap_or(false);
    if writable && !table.is_writable() {
        return Err(f.err(
            "writable",
            format!("table `{table}` is read-only; only coil and holding tags can be writable"),
        ));
    }
    if writable && data_type.width() > MAX_REGISTERS_PER_WRITE {
        return Err(f.err(
            "length",
            format!(
                "a writable tag spans at most {MAX_REGISTERS_PER_WRITE} registers (one write-multiple request), not {}",
                data_type.width()
            ),
        ));
    }
    let min = f.number("min")?;
    let max = f.number("max")?;
    for (field, present) in [("min", min.is_some()), ("max", max.is_some())] {
        if present && !writable {
            return Err(f.err(field, "write limits need `writable = true`"));
        }
        if present && !numeric {
            return Err(f.err(
                field,
                format!(
                    "only numeric tags have write limits; this tag is `{}`",
                    data_type.name()
                ),
            ));
        }
    }
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            return Err(f.err("min", format!("{lo} is greater than max {hi}")));
        }
    }
    let deadband = f.number("deadband")?.unwrap_or(0.0);
    if deadband < 0.0 {
        return Err(f.err("deadband", format!("must not be negative, got {deadband}")));
    }
    if deadband > 0.0 && !numeric {
        return Err(f.err(
            "deadband",
            format!("only numeric tags have a deadband; this tag is `{}`", data_type.name()),
        ));
    }
    Ok(Tag {
        name,
        device,
        table,
        address,
        data_type,
        byte_order,
        word_order,
        scale,
        offset,
        unit,
        writable,
        min,
        max,
        deadband,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[devices.plc1]
address = "127.0.0.1:5020"
unit_id = 3
timeout = "250ms"
interval = "100ms"
word_order = "little"

[devices.meter]
address = "meter.local"

[[tags]]
name = "tank_level"
device = "plc1"
table = "holding"
address = 100
type = "f32"
scale = 0.5
unit = "m"
writable = true
min = 0
max = 10
deadband = 0.1

[[tags]]
name = "pump_on"
device = "plc1"
table = "coil"
address = 3
writable = true

[[tags]]
name = "serial"
device = "meter"
table = "input_register"
address = 0
type = "string"
length = 4
byte_order = "little"
"#;

    #[test]
    fn parses_toml_and_json_alike() {
        let m = RegisterMap::parse(EXAMPLE).unwrap();
        assert_eq!(m.devices.len(), 2);
        let meter = &m.devices[0];
        assert_eq!(
            (meter.name.as_str(), meter.address.as_str(), meter.unit_id),
            ("meter", "meter.local:502", 1)
        );
        let plc = &m.devices[1];
        assert_eq!(plc.timeout, Duration::from_millis(250));
        assert_eq!(plc.interval, Duration::from_millis(100));
        let level = m.tag("tank_level").unwrap();
        assert_eq!(level.device, 1);
        assert_eq!(level.table, Table::HoldingRegister);
        assert_eq!(level.data_type, DataType::F32);
        assert_eq!(level.word_order, WordOrder::Little, "device default applies");
        assert_eq!(level.byte_order, ByteOrder::Big);
        assert_eq!((level.scale, level.min, level.max), (Some(0.5), Some(0.0), Some(10.0)));
        assert_eq!(m.tag("pump_on").unwrap().data_type, DataType::Bool);
        let serial = m.tag("serial").unwrap();
        assert_eq!(serial.data_type, DataType::String(4));
        assert_eq!(serial.byte_order, ByteOrder::Little);

        let json = r#"{"devices": {"d": {"address": "10.0.0.1:1502"}},
                       "tags": [{"name": "t", "table": "input", "address": 7, "type": "i32"}]}"#;
        let m = RegisterMap::parse(json).unwrap();
        assert_eq!(m.tags[0].device, 0, "the only device is the default");
        assert_eq!(m.tags[0].data_type, DataType::I32);
    }

    #[test]
    fn the_readme_example_is_a_valid_map() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("a TOML example") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("closed");
        let m = RegisterMap::parse(&readme[start..end]).unwrap();
        assert_eq!(m.devices.len(), 2);
        assert_eq!(m.tags.len(), 4);
        let level = m.tag("tank_level").unwrap();
        assert_eq!((level.address, level.word_order), (100, WordOrder::Little));
        assert_eq!(m.tag("serial").unwrap().data_type, DataType::String(8));
    }

    fn error(tags: &str) -> String {
        let text =
            format!("[devices.d]\naddress = \"127.0.0.1:502\"\n[devices.e]\naddress = \"127.0.0.1:503\"\n{tags}");
        RegisterMap::parse(&text).unwrap_err().to_string()
    }

    #[test]
    fn every_mistake_names_the_tag_and_the_field() {
        let base = "[[tags]]\nname = \"t\"\ndevice = \"d\"\ntable = \"holding\"\naddress = 1\n";
        let cases: &[(&str, &str, &str)] = &[
            ("type = \"f16\"", "type", "unknown data type `f16`"),
            ("type = \"bool\"", "type", "needs a coil or discrete table"),
            ("type = \"string\"", "length", "missing"),
            ("type = \"u16\"\nlength = 2", "length", "only string tags"),
            ("byte_order = \"middle\"", "byte_order", "expected `big` or `little`"),
            ("word_order = 1", "word_order", "expected a string"),
            ("scale = 0", "scale", "must not be zero"),
            ("scale = \"x\"", "scale", "expected a number"),
            ("min = 1", "min", "need `writable = true`"),
            ("writable = true\nmin = 5\nmax = 1", "min", "greater than max"),
            ("writable = \"yes\"", "writable", "expected true or false"),
            ("deadband = -1", "deadband", "must not be negative"),
            ("adress = 5", "adress", "unknown field"),
            ("unit = 5", "unit", "expected a string"),
        ];
        for (extra, field, reason) in cases {
            let e = error(&format!("{base}{extra}\n"));
            assert!(e.contains("tag `t` (tags[0])"), "{extra}: {e}");
            assert!(e.contains(&format!("field `{field}`")), "{extra}: {e}");
            assert!(e.contains(reason), "{extra}: {e}");
        }
        let tag = |body: &str| format!("[[tags]]\nname = \"x\"\ndevice = \"d\"\n{body}\n");
        for (body, field, reason) in [
            ("table = \"holding\"\naddress = 70000", "address", "from 0 to 65535"),
            ("table = \"holding\"\naddress = -1", "address", "from 0 to 65535"),
            ("table = \"holding\"", "address", "missing"),
            (
                "table = \"holding\"\naddress = 65534\ntype = \"u64\"",
                "address",
                "runs past",
            ),
            ("address = 1", "table", "missing"),
            ("table = \"eeprom\"\naddress = 1", "table", "unknown table `eeprom`"),
            (
                "table = \"coil\"\naddress = 1\ntype = \"u16\"",
                "type",
                "holds single bits",
            ),
            (
                "table = \"input\"\naddress = 1\nwritable = true",
                "writable",
                "read-only",
            ),
            (
                "table = \"discrete\"\naddress = 1\nwritable = true",
                "writable",
                "read-only",
            ),
            (
                "table = \"coil\"\naddress = 1\nscale = 2.0",
                "scale",
                "only numeric tags",
            ),
            (
                "table = \"holding\"\naddress = 1\ntype = \"string\"\nlength = 126",
                "length",
                "from 1 to 125",
            ),
            (
                "table = \"holding\"\naddress = 1\ntype = \"string\"\nlength = 124\nwritable = true",
                "length",
                "at most 123 registers",
            ),
        ] {
            let e = error(&tag(body));
            assert!(
                e.contains("tag `x` (tags[0])") && e.contains(&format!("field `{field}`")) && e.contains(reason),
                "{body}: {e}"
            );
        }
        let e = error("[[tags]]\nname = \"x\"\ndevice = \"plc9\"\ntable = \"coil\"\naddress = 1\n");
        assert!(
            e.contains("field `device`") && e.contains("no device `plc9`") && e.contains("d, e"),
            "{e}"
        );
        let e = error("[[tags]]\nname = \"x\"\ntable = \"coil\"\naddress = 1\n");
        assert!(
            e.contains("field `device`") && e.contains("more than one device"),
            "{e}"
        );
        let e = error("[[tags]]\ntable = \"coil\"\naddress = 1\n");
        assert!(e.contains("tags[0]: field `name`: missing"), "{e}");
        let twice = "[[tags]]\nname = \"x\"\ndevice = \"d\"\ntable = \"coil\"\naddress = 1\n";
        let e = error(&format!("{twice}{twice}"));
        assert!(e.contains("tag `x` (tags[1]): field `name`: duplicate"), "{e}");
    }

    #[test]
    fn device_and_document_mistakes_are_named_too() {
        let tags = "[[tags]]\nname = \"x\"\ntable = \"coil\"\naddress = 1\n";
        for (device, field, reason) in [
            ("unit_id = 300", "unit_id", "from 0 to 255"),
            ("timeout = \"soon\"", "timeout", "expected a duration"),
            ("interval = \"0s\"", "interval", "longer than zero"),
            (
                "max_registers_per_read = 200",
                "max_registers_per_read",
                "from 1 to 125",
            ),
            ("max_bits_per_read = 2001", "max_bits_per_read", "from 1 to 2000"),
            ("colour = \"red\"", "colour", "unknown field"),
        ] {
            let text = format!("[devices.plc]\naddress = \"h:1\"\n{device}\n{tags}");
            let e = RegisterMap::parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("device `plc`") && e.contains(&format!("field `{field}`")) && e.contains(reason),
                "{device}: {e}"
            );
        }
        for (address, reason) in [
            ("h:0", "port"),
            ("h:99999", "port"),
            (":502", "host:port"),
            ("", "empty"),
        ] {
            let text = format!("[devices.plc]\naddress = \"{address}\"\n{tags}");
            let e = RegisterMap::parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("device `plc`: field `address`") && e.contains(reason),
                "{address}: {e}"
            );
        }
        let e = RegisterMap::parse("[devices.plc]\naddress = \"h\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `tags`: missing"), "{e}");
        let e = RegisterMap::parse(tags).unwrap_err().to_string();
        assert!(e.contains("field `devices`: missing"), "{e}");
        let e = RegisterMap::parse("{\"devices\": ").unwrap_err().to_string();
        assert!(e.contains("invalid JSON"), "{e}");
        let e = RegisterMap::parse("[devices.plc\naddress = 1").unwrap_err().to_string();
        assert!(e.contains("invalid TOML (line 1)"), "{e}");
        assert_eq!(normalise_address("[::1]:1502").unwrap(), "[::1]:1502");
        assert_eq!(normalise_address("::1").unwrap(), "[::1]:502");
    }
}
