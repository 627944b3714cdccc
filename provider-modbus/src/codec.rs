//! Registers to values and back: data types, byte and word order, scale and offset.
//!
//! A value's bytes are laid out big-endian (most significant byte first) and split into 16-bit
//! words. [`WordOrder::Little`] stores the last word at the lowest address; [`ByteOrder::Little`]
//! swaps the two bytes inside each register. Together they give the four usual layouts of a 32-bit
//! value `AB CD`: `AB CD` (big/big), `CD AB` (big bytes, little words), `BA DC` (little bytes, big
//! words) and `DC BA` (little/little). Strings are read register by register (two characters each,
//! first character in the high byte unless the byte order is little); word order does not apply.

use std::fmt;

use serde_json::Value as Json;

use crate::map::{ByteOrder, DataType, Tag, WordOrder};

/// A tag's value as read from the device (after scaling).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A coil or discrete input.
    Bool(bool),
    /// An unscaled unsigned integer.
    Unsigned(u64),
    /// An unscaled signed integer.
    Signed(i64),
    /// A float, or any scaled numeric value.
    Float(f64),
    /// An ASCII string, trailing NULs removed.
    Text(String),
}

impl Value {
    /// The value as a number, for deadband comparisons.
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Unsigned(v) => Some(v as f64),
            Self::Signed(v) => Some(v as f64),
            Self::Float(v) => Some(v),
            Self::Bool(_) | Self::Text(_) => None,
        }
    }

    /// The value as JSON (a non-finite float becomes `null`).
    #[must_use]
    pub fn to_json(&self) -> Json {
        match self {
            Self::Bool(b) => Json::Bool(*b),
            Self::Unsigned(v) => Json::from(*v),
            Self::Signed(v) => Json::from(*v),
            Self::Float(v) => serde_json::Number::from_f64(*v).map_or(Json::Null, Json::Number),
            Self::Text(s) => Json::String(s.clone()),
        }
    }

    /// Whether `self` differs from `previous` enough to report: any change for booleans, text
    /// and integers without a deadband, more than `deadband` for numbers.
    #[must_use]
    pub fn changed_from(&self, previous: &Value, deadband: f64) -> bool {
        match (self.as_f64(), previous.as_f64()) {
            (Some(a), Some(b)) if deadband > 0.0 => (a - b).abs() > deadband,
            _ => self != previous,
        }
    }
}

/// As JSON: booleans, numbers and strings; a non-finite float is `null`.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Bool(b) => serializer.serialize_bool(*b),
            Self::Unsigned(v) => serializer.serialize_u64(*v),
            Self::Signed(v) => serializer.serialize_i64(*v),
            Self::Float(v) if v.is_finite() => serializer.serialize_f64(*v),
            Self::Float(_) => serializer.serialize_unit(),
            Self::Text(s) => serializer.serialize_str(s),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// Puts a value's big-endian words into register order (and back: the mapping is its own inverse).
fn arrange(words: &mut [u16], byte_order: ByteOrder, word_order: WordOrder) {
    if word_order == WordOrder::Little {
        words.reverse();
    }
    if byte_order == ByteOrder::Little {
        for w in words.iter_mut() {
            *w = w.swap_bytes();
        }
    }
}

/// Decodes a register tag from exactly `tag.width()` registers.
///
/// # Panics
/// If `registers` is shorter than the tag (the read plan always reads whole tags).
#[must_use]
pub fn decode_registers(tag: &Tag, registers: &[u16]) -> Value {
    let registers = &registers[..usize::from(tag.width())];
    if let DataType::String(_) = tag.data_type {
        let mut bytes = Vec::with_capacity(registers.len() * 2);
        for &r in registers {
            let r = if tag.byte_order == ByteOrder::Little {
                r.swap_bytes()
            } else {
                r
            };
            bytes.extend_from_slice(&r.to_be_bytes());
        }
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        return Value::Text(
            bytes
                .iter()
                .map(|&b| if b.is_ascii() { b as char } else { '\u{fffd}' })
                .collect(),
        );
    }
    let mut words = registers.to_vec();
    arrange(&mut words, tag.byte_order, tag.word_order);
    let mut be = [0u8; 8];
    for (i, w) in words.iter().enumerate() {
        be[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
    }
    let raw = match tag.data_type {
        DataType::U16 => Value::Unsigned(u64::from(u16::from_be_bytes([be[0], be[1]]))),
        DataType::I16 => Value::Signed(i64::from(i16::from_be_bytes([be[0], be[1]]))),
        DataType::U32 => Value::Unsigned(u64::from(u32::from_be_bytes([be[0], be[1], be[2], be[3]]))),
        DataType::I32 => Value::Signed(i64::from(i32::from_be_bytes([be[0], be[1], be[2], be[3]]))),
        DataType::F32 => Value::Float(widen_f32(f32::from_be_bytes([be[0], be[1], be[2], be[3]]))),
        DataType::U64 => Value::Unsigned(u64::from_be_bytes(be)),
        DataType::I64 => Value::Signed(i64::from_be_bytes(be)),
        DataType::F64 => Value::Float(f64::from_be_bytes(be)),
        DataType::Bool | DataType::String(_) => unreachable!("not a numeric register type"),
    };
    scale(tag, raw)
}

/// An `f32` as the `f64` that prints the way the `f32` does: the shortest decimal that reads back
/// as the same `f32` (`123.456`, not `123.45600128173828`, its exact binary value that plain
/// widening keeps and JSON would print). Non-finite values widen as they are.
fn widen_f32(value: f32) -> f64 {
    if !value.is_finite() {
        return f64::from(value);
    }
    value.to_string().parse().unwrap_or_else(|_| f64::from(value))
}

fn scale(tag: &Tag, raw: Value) -> Value {
    if !tag.is_scaled() {
        return raw;
    }
    let v = raw.as_f64().expect("numeric");
    Value::Float(v * tag.scale.unwrap_or(1.0) + tag.offset.unwrap_or(0.0))
}

/// What a sink record asks to write to one tag, ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// One coil.
    Coil(bool),
    /// Registers from the tag's address.
    Registers(Vec<u16>),
}

/// Encodes an engineering value (JSON) for `tag`, checking type, range and write limits.
/// The error says what is wrong with the value.
pub fn encode(tag: &Tag, value: &Json) -> Result<Encoded, String> {
    match tag.data_type {
        DataType::Bool => match value {
            Json::Bool(b) => Ok(Encoded::Coil(*b)),
            Json::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                Ok(Encoded::Coil(n.as_u64() == Some(1)))
            }
            other => Err(format!("expected true or false for a bool tag, got {other}")),
        },
        DataType::String(length) => {
            let Json::String(text) = value else {
                return Err(format!("expected a string, got {value}"));
            };
            if !text.is_ascii() {
                return Err("expected ASCII text".into());
            }
            let capacity = usize::from(length) * 2;
            if text.len() > capacity {
                return Err(format!(
                    "{} characters do not fit in {length} registers (at most {capacity})",
                    text.len()
                ));
            }
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(capacity, 0);
            let registers = bytes
                .chunks(2)
                .map(|c| {
                    let r = u16::from_be_bytes([c[0], c[1]]);
                    if tag.byte_order == ByteOrder::Little {
                        r.swap_bytes()
                    } else {
                        r
                    }
                })
                .collect();
            Ok(Encoded::Registers(registers))
        }
        numeric => encode_number(tag, numeric, value).map(Encoded::Registers),
    }
}

fn encode_number(tag: &Tag, data_type: DataType, value: &Json) -> Result<Vec<u16>, String> {
    let Json::Number(number) = value else {
        return Err(format!("expected a number, got {value}"));
    };
    let engineering = number
        .as_f64()
        .filter(|v| v.is_finite())
        .ok_or("expected a finite number")?;
    if let Some(min) = tag.min.filter(|min| engineering < *min) {
        return Err(format!("{number} is below the tag's min {min}"));
    }
    if let Some(max) = tag.max.filter(|max| engineering > *max) {
        return Err(format!("{number} is above the tag's max {max}"));
    }
    let name = data_type.name();
    // An unscaled integer is taken exactly (u64/i64 beyond 2^53 would lose digits through f64).
    let raw = if tag.is_scaled() {
        let r = (engineering - tag.offset.unwrap_or(0.0)) / tag.scale.unwrap_or(1.0);
        if matches!(data_type, DataType::F32 | DataType::F64) {
            Raw::Float(r)
        } else {
            // `as` saturates, and the range check below refuses what does not fit.
            Raw::Signed(r.round() as i128)
        }
    } else if let Some(u) = number.as_u64() {
        Raw::Signed(i128::from(u))
    } else if let Some(i) = number.as_i64() {
        Raw::Signed(i128::from(i))
    } else if matches!(data_type, DataType::F32 | DataType::F64) {
        Raw::Float(engineering)
    } else {
        return Err(format!("{number} is not a whole number, as `{name}` needs"));
    };
    let out_of_range = || format!("{number} does not fit in `{name}`");
    let be: Vec<u8> = match (data_type, raw) {
        (DataType::F32, Raw::Float(f)) => {
            if f.abs() > f64::from(f32::MAX) {
                return Err(out_of_range());
            }
            (f as f32).to_be_bytes().to_vec()
        }
        (DataType::F32, Raw::Signed(i)) => (i as f32).to_be_bytes().to_vec(),
        (DataType::F64, Raw::Float(f)) => f.to_be_bytes().to_vec(),
        (DataType::F64, Raw::Signed(i)) => (i as f64).to_be_bytes().to_vec(),
        (_, Raw::Float(_)) => unreachable!("integers are rounded above"),
        (DataType::U16, Raw::Signed(i)) => u16::try_from(i).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
        (DataType::I16, Raw::Signed(i)) => i16::try_from(i).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
        (DataType::U32, Raw::Signed(i)) => u32::try_from(i).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
        (DataType::I32, Raw::Signed(i)) => i32::try_from(i).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
        (DataType::U64, Raw::Signed(i)) => u64::try_from(i).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
        (DataType::I64, Raw::Signed(i)) => i64::try_from(i).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
        (DataType::Bool | DataType::String(_), _) => unreachable!("not numeric"),
    };
    let mut words: Vec<u16> = be.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    arrange(&mut words, tag.byte_order, tag.word_order);
    Ok(words)
}

#[derive(Debug, Clone, Copy)]
enum Raw {
    Signed(i128),
    Float(f64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::Table;

    fn tag(data_type: DataType, byte_order: ByteOrder, word_order: WordOrder) -> Tag {
        Tag {
            name: "t".into(),
            device: 0,
            table: Table::HoldingRegister,
            address: 0,
            data_type,
            byte_order,
            word_order,
            scale: None,
            offset: None,
            unit: None,
            writable: true,
            min: None,
            max: None,
            deadband: 0.0,
        }
    }

    use ByteOrder::{Big as BB, Little as BL};
    use WordOrder::{Big as WB, Little as WL};

    /// Register images written out by hand from the layouts' definitions.
    #[test]
    fn decodes_every_type_and_order() {
        let cases: Vec<(DataType, ByteOrder, WordOrder, Vec<u16>, Value)> = vec![
            (DataType::U16, BB, WB, vec![0x1234], Value::Unsigned(0x1234)),
            (DataType::U16, BL, WB, vec![0x3412], Value::Unsigned(0x1234)),
            (DataType::I16, BB, WB, vec![0xFFFE], Value::Signed(-2)),
            (DataType::I16, BL, WB, vec![0xFEFF], Value::Signed(-2)),
            (
                DataType::U32,
                BB,
                WB,
                vec![0x1234, 0x5678],
                Value::Unsigned(0x1234_5678),
            ),
            (
                DataType::U32,
                BB,
                WL,
                vec![0x5678, 0x1234],
                Value::Unsigned(0x1234_5678),
            ),
            (
                DataType::U32,
                BL,
                WB,
                vec![0x3412, 0x7856],
                Value::Unsigned(0x1234_5678),
            ),
            (
                DataType::U32,
                BL,
                WL,
                vec![0x7856, 0x3412],
                Value::Unsigned(0x1234_5678),
            ),
            (DataType::I32, BB, WB, vec![0xFFFF, 0xFFFD], Value::Signed(-3)),
            (DataType::I32, BB, WL, vec![0xFFFD, 0xFFFF], Value::Signed(-3)),
            // 1.5f32 = 0x3FC00000
            (DataType::F32, BB, WB, vec![0x3FC0, 0x0000], Value::Float(1.5)),
            (DataType::F32, BB, WL, vec![0x0000, 0x3FC0], Value::Float(1.5)),
            (DataType::F32, BL, WB, vec![0xC03F, 0x0000], Value::Float(1.5)),
            (DataType::F32, BL, WL, vec![0x0000, 0xC03F], Value::Float(1.5)),
            (
                DataType::U64,
                BB,
                WB,
                vec![0x0102, 0x0304, 0x0506, 0x0708],
                Value::Unsigned(0x0102_0304_0506_0708),
            ),
            (
                DataType::U64,
                BL,
                WL,
                vec![0x0807, 0x0605, 0x0403, 0x0201],
                Value::Unsigned(0x0102_0304_0506_0708),
            ),
            (
                DataType::I64,
                BB,
                WL,
                vec![0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF],
                Value::Signed(-1),
            ),
            // -2.5f64 = 0xC004000000000000
            (DataType::F64, BB, WB, vec![0xC004, 0, 0, 0], Value::Float(-2.5)),
            (DataType::F64, BB, WL, vec![0, 0, 0, 0xC004], Value::Float(-2.5)),
            (DataType::F64, BL, WB, vec![0x04C0, 0, 0, 0], Value::Float(-2.5)),
            (
                DataType::String(3),
                BB,
                WB,
                vec![0x4142, 0x4300, 0],
                Value::Text("ABC".into()),
            ),
            (
                DataType::String(2),
                BL,
                WL,
                vec![0x4241, 0x0043],
                Value::Text("ABC".into()),
            ),
        ];
        for (data_type, bo, wo, registers, want) in cases {
            let t = tag(data_type, bo, wo);
            assert_eq!(
                decode_registers(&t, &registers),
                want,
                "{data_type:?} {bo:?} {wo:?} {registers:04x?}"
            );
            // Encoding the value gives the same registers back.
            let json = want.to_json();
            assert_eq!(
                encode(&t, &json),
                Ok(Encoded::Registers(registers.clone())),
                "encode {data_type:?} {bo:?} {wo:?}"
            );
        }
    }

    #[test]
    fn f32_tags_print_as_the_f32_does() {
        let mut tag = tag(DataType::F32, ByteOrder::Big, WordOrder::Big);
        for (f, text) in [
            (123.456f32, "123.456"),
            (-123.456, "-123.456"),
            (0.1, "0.1"),
            (21.7, "21.7"),
            (1.0e-7, "1e-7"),
            (16_777_217.0, "16777216.0"),
            (f32::MAX, "3.4028235e+38"),
            (1.5, "1.5"),
        ] {
            let bits = f.to_bits();
            let registers = [(bits >> 16) as u16, bits as u16];
            let value = decode_registers(&tag, &registers);
            assert_eq!(value.to_json().to_string(), text, "{f}");
            assert_eq!(serde_json::to_string(&value).unwrap(), text, "{f}");
            // The printed value reads back as the same f32.
            assert_eq!(text.parse::<f32>().unwrap(), f);
        }
        let nan = f32::NAN.to_bits();
        assert_eq!(
            decode_registers(&tag, &[(nan >> 16) as u16, nan as u16]).to_json(),
            Json::Null
        );
        // Scaling starts from the printed value: 123.456 * 0.5 is 61.728.
        tag.scale = Some(0.5);
        let bits = 123.456f32.to_bits();
        let scaled = decode_registers(&tag, &[(bits >> 16) as u16, bits as u16]);
        assert_eq!(scaled.to_json().to_string(), "61.728");
    }

    #[test]
    fn scale_and_offset() {
        let mut t = tag(DataType::I16, BB, WB);
        t.scale = Some(0.1);
        t.offset = Some(-40.0);
        let v = decode_registers(&t, &[650]);
        assert!(matches!(v, Value::Float(f) if (f - 25.0).abs() < 1e-9), "{v:?}");
        assert_eq!(encode(&t, &serde_json::json!(25.0)), Ok(Encoded::Registers(vec![650])));
        // (-3400 + 40) / 0.1 = -33600 is out of i16.
        assert!(encode(&t, &serde_json::json!(-3400.0))
            .unwrap_err()
            .contains("does not fit"));
    }

    #[test]
    fn writes_are_checked() {
        let mut t = tag(DataType::U16, BB, WB);
        t.min = Some(10.0);
        t.max = Some(20.0);
        assert!(encode(&t, &serde_json::json!(9))
            .unwrap_err()
            .contains("below the tag's min 10"));
        assert!(encode(&t, &serde_json::json!(21))
            .unwrap_err()
            .contains("above the tag's max 20"));
        assert!(encode(&t, &serde_json::json!(12.5))
            .unwrap_err()
            .contains("not a whole number"));
        assert!(encode(&t, &serde_json::json!("12"))
            .unwrap_err()
            .contains("expected a number"));
        assert_eq!(encode(&t, &serde_json::json!(15)), Ok(Encoded::Registers(vec![15])));
        let t = tag(DataType::U16, BB, WB);
        assert!(encode(&t, &serde_json::json!(70000))
            .unwrap_err()
            .contains("does not fit in `u16`"));
        assert!(encode(&t, &serde_json::json!(-1)).unwrap_err().contains("does not fit"));
        let t = tag(DataType::String(1), BB, WB);
        assert!(encode(&t, &serde_json::json!("abc"))
            .unwrap_err()
            .contains("do not fit"));
        let t = tag(DataType::Bool, BB, WB);
        assert_eq!(encode(&t, &serde_json::json!(true)), Ok(Encoded::Coil(true)));
        assert!(encode(&t, &serde_json::json!(2)).is_err());
        let t = tag(DataType::U64, BB, WB);
        assert_eq!(
            encode(&t, &serde_json::json!(u64::MAX)),
            Ok(Encoded::Registers(vec![0xFFFF; 4])),
            "u64 beyond 2^53 stays exact"
        );
    }

    #[test]
    fn deadband() {
        assert!(!Value::Float(10.0).changed_from(&Value::Float(10.4), 0.5));
        assert!(Value::Float(10.0).changed_from(&Value::Float(10.6), 0.5));
        assert!(Value::Unsigned(1).changed_from(&Value::Unsigned(2), 0.0));
        assert!(!Value::Bool(true).changed_from(&Value::Bool(true), 0.0));
        assert!(Value::Text("a".into()).changed_from(&Value::Text("b".into()), 1.0));
    }
}
