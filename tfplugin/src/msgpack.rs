//! The msgpack encoding of cty values, which is how Terraform passes
//! `DynamicValue`s. Decoding is driven by the expected type, because msgpack
//! alone cannot tell a map from an object or a list from a set.
//!
//! Unknown values are msgpack extension values: we write extension 0 with one
//! zero byte, and read any extension (newer Terraform sends refined unknowns
//! with other extension codes) as unknown.

use std::collections::BTreeMap;

use rmp::Marker;
use rmp::encode;

use super::cty::{DecodeError, Number, Type, Value};

/// Encodes `value` as a value of type `ty`. Objects are written with exactly
/// the type's attributes, null where the value has none.
pub fn encode(value: &Value, ty: &Type) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(64);
    write_value(&mut out, value, ty, "")?;
    Ok(out)
}

fn write_value(out: &mut Vec<u8>, value: &Value, ty: &Type, path: &str) -> Result<(), DecodeError> {
    // Writes to a Vec cannot fail.
    match (value, ty) {
        (Value::Null, _) => {
            let _ = encode::write_nil(out);
        }
        (Value::Unknown, _) => {
            let _ = encode::write_ext_meta(out, 1, 0);
            out.push(0);
        }
        (Value::Bool(b), Type::Bool) => {
            let _ = encode::write_bool(out, *b);
        }
        (Value::Number(n), Type::Number) => write_number(out, n),
        (Value::String(s), Type::String) => {
            let _ = encode::write_str(out, s);
        }
        (Value::List(items), Type::List(element) | Type::Set(element)) => {
            let _ = encode::write_array_len(out, len32(items.len(), path)?);
            for (i, item) in items.iter().enumerate() {
                write_value(out, item, element, &format!("{path}[{i}]"))?;
            }
        }
        (Value::List(items), Type::Tuple(elements)) if items.len() == elements.len() => {
            let _ = encode::write_array_len(out, len32(items.len(), path)?);
            for (i, (item, element)) in items.iter().zip(elements).enumerate() {
                write_value(out, item, element, &format!("{path}[{i}]"))?;
            }
        }
        (Value::Map(items), Type::Map(element)) => {
            let _ = encode::write_map_len(out, len32(items.len(), path)?);
            for (key, item) in items {
                let _ = encode::write_str(out, key);
                write_value(out, item, element, &format!("{path}[{key:?}]"))?;
            }
        }
        (Value::Map(items), Type::Object(attributes)) => {
            if let Some(extra) = items.keys().find(|k| !attributes.contains_key(*k)) {
                return Err(DecodeError::new(path, format!("object has no attribute {extra:?}")));
            }
            let _ = encode::write_map_len(out, len32(attributes.len(), path)?);
            for (name, attribute_type) in attributes {
                let _ = encode::write_str(out, name);
                let item = items.get(name).unwrap_or(&Value::Null);
                write_value(out, item, attribute_type, &format!("{path}.{name}"))?;
            }
        }
        (value, ty) => {
            return Err(DecodeError::new(path, format!("cannot encode {value:?} as {}", ty.to_json())));
        }
    }
    Ok(())
}

fn write_number(out: &mut Vec<u8>, number: &Number) {
    match number {
        Number::Int(i) => {
            let _ = encode::write_sint(out, *i);
        }
        Number::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            let _ = encode::write_sint(out, *f as i64);
        }
        Number::Float(f) => {
            let _ = encode::write_f64(out, *f);
        }
        Number::Decimal(text) => {
            let _ = encode::write_str(out, text);
        }
    }
}

fn len32(len: usize, path: &str) -> Result<u32, DecodeError> {
    u32::try_from(len).map_err(|_| DecodeError::new(path, "collection too large"))
}

/// Decodes bytes as a value of type `ty`. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8], ty: &Type) -> Result<Value, DecodeError> {
    let mut reader = Reader { bytes, at: 0, depth: 0 };
    let value = reader.value(ty, "")?;
    if reader.at != bytes.len() {
        return Err(DecodeError::new("", format!("{} trailing bytes", bytes.len() - reader.at)));
    }
    Ok(value)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// How many collections enclose the value being read.
    depth: usize,
}

/// Collections nested deeper than this are refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, path: &str) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len());
        match end {
            Some(end) => {
                let slice = &self.bytes[self.at..end];
                self.at = end;
                Ok(slice)
            }
            None => Err(DecodeError::new(path, "unexpected end of msgpack data")),
        }
    }

    fn uint(&mut self, n: usize, path: &str) -> Result<u64, DecodeError> {
        Ok(self.take(n, path)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn value(&mut self, ty: &Type, path: &str) -> Result<Value, DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError::new(path, "value nested too deeply"));
        }
        self.depth += 1;
        let value = self.value_at_depth(ty, path);
        self.depth -= 1;
        value
    }

    fn value_at_depth(&mut self, ty: &Type, path: &str) -> Result<Value, DecodeError> {
        let marker = Marker::from_u8(self.take(1, path)?[0]);
        match marker {
            Marker::Null => return Ok(Value::Null),
            Marker::FixExt1 | Marker::FixExt2 | Marker::FixExt4 | Marker::FixExt8 | Marker::FixExt16 => {
                let size = match marker {
                    Marker::FixExt1 => 1,
                    Marker::FixExt2 => 2,
                    Marker::FixExt4 => 4,
                    Marker::FixExt8 => 8,
                    _ => 16,
                };
                self.take(1 + size, path)?;
                return Ok(Value::Unknown);
            }
            Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => {
                let width = match marker {
                    Marker::Ext8 => 1,
                    Marker::Ext16 => 2,
                    _ => 4,
                };
                let size = self.uint(width, path)? as usize;
                self.take(1 + size, path)?;
                return Ok(Value::Unknown);
            }
            _ => {}
        }
        match ty {
            Type::Bool => match marker {
                Marker::True => Ok(Value::Bool(true)),
                Marker::False => Ok(Value::Bool(false)),
                other => Err(unexpected(path, "bool", other)),
            },
            Type::Number => self.number(marker, path).map(Value::Number),
            Type::String => self.string(marker, path).map(Value::String),
            Type::List(element) | Type::Set(element) => {
                let len = self.array_len(marker, path)?;
                let mut items = Vec::with_capacity(len.min(4096));
                for i in 0..len {
                    items.push(self.value(element, &format!("{path}[{i}]"))?);
                }
                Ok(Value::List(items))
            }
            Type::Tuple(elements) => {
                let len = self.array_len(marker, path)?;
                if len != elements.len() {
                    return Err(DecodeError::new(path, format!("tuple of {} elements, got {len}", elements.len())));
                }
                let mut items = Vec::with_capacity(len);
                for (i, element) in elements.iter().enumerate() {
                    items.push(self.value(element, &format!("{path}[{i}]"))?);
                }
                Ok(Value::List(items))
            }
            Type::Map(element) => {
                let len = self.map_len(marker, path)?;
                let mut items = BTreeMap::new();
                for _ in 0..len {
                    let key_marker = Marker::from_u8(self.take(1, path)?[0]);
                    let key = self.string(key_marker, path)?;
                    let item = self.value(element, &format!("{path}[{key:?}]"))?;
                    items.insert(key, item);
                }
                Ok(Value::Map(items))
            }
            Type::Object(attributes) => {
                let len = self.map_len(marker, path)?;
                let mut items = BTreeMap::new();
                for _ in 0..len {
                    let key_marker = Marker::from_u8(self.take(1, path)?[0]);
                    let key = self.string(key_marker, path)?;
                    let attribute_path = format!("{path}.{key}");
                    let attribute_type = attributes
                        .get(&key)
                        .ok_or_else(|| DecodeError::new(&attribute_path, "unsupported attribute"))?;
                    let item = self.value(attribute_type, &attribute_path)?;
                    items.insert(key, item);
                }
                // Absent attributes read as null, so every object carries them all.
                for name in attributes.keys() {
                    items.entry(name.clone()).or_insert(Value::Null);
                }
                Ok(Value::Map(items))
            }
        }
    }

    fn number(&mut self, marker: Marker, path: &str) -> Result<Number, DecodeError> {
        let number = match marker {
            Marker::FixPos(n) => Number::Int(i64::from(n)),
            Marker::FixNeg(n) => Number::Int(i64::from(n)),
            Marker::U8 => Number::Int(self.uint(1, path)? as i64),
            Marker::U16 => Number::Int(self.uint(2, path)? as i64),
            Marker::U32 => Number::Int(self.uint(4, path)? as i64),
            Marker::U64 => {
                let n = self.uint(8, path)?;
                i64::try_from(n).map(Number::Int).unwrap_or_else(|_| Number::Decimal(n.to_string()))
            }
            Marker::I8 => Number::Int(i64::from(self.uint(1, path)? as u8 as i8)),
            Marker::I16 => Number::Int(i64::from(self.uint(2, path)? as u16 as i16)),
            Marker::I32 => Number::Int(i64::from(self.uint(4, path)? as u32 as i32)),
            Marker::I64 => Number::Int(self.uint(8, path)? as i64),
            Marker::F32 => Number::Float(f64::from(f32::from_bits(self.uint(4, path)? as u32))),
            Marker::F64 => Number::Float(f64::from_bits(self.uint(8, path)?)),
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                let text = self.string(marker, path)?;
                if text.parse::<f64>().is_err() {
                    return Err(DecodeError::new(path, format!("{text:?} is not a number")));
                }
                match text.parse::<i64>() {
                    Ok(i) => Number::Int(i),
                    Err(_) => Number::Decimal(text),
                }
            }
            other => return Err(unexpected(path, "number", other)),
        };
        Ok(number)
    }

    fn string(&mut self, marker: Marker, path: &str) -> Result<String, DecodeError> {
        let len = match marker {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => self.uint(1, path)? as usize,
            Marker::Str16 => self.uint(2, path)? as usize,
            Marker::Str32 => self.uint(4, path)? as usize,
            other => return Err(unexpected(path, "string", other)),
        };
        let bytes = self.take(len, path)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::new(path, "string is not UTF-8"))
    }

    fn array_len(&mut self, marker: Marker, path: &str) -> Result<usize, DecodeError> {
        match marker {
            Marker::FixArray(n) => Ok(usize::from(n)),
            Marker::Array16 => Ok(self.uint(2, path)? as usize),
            Marker::Array32 => Ok(self.uint(4, path)? as usize),
            other => Err(unexpected(path, "array", other)),
        }
    }

    fn map_len(&mut self, marker: Marker, path: &str) -> Result<usize, DecodeError> {
        match marker {
            Marker::FixMap(n) => Ok(usize::from(n)),
            Marker::Map16 => Ok(self.uint(2, path)? as usize),
            Marker::Map32 => Ok(self.uint(4, path)? as usize),
            other => Err(unexpected(path, "map", other)),
        }
    }
}

fn unexpected(path: &str, wanted: &str, marker: Marker) -> DecodeError {
    DecodeError::new(path, format!("expected {wanted}, found msgpack {marker:?}"))
}
