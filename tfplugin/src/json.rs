//! The JSON encoding of cty values, which Terraform uses for stored state
//! (`UpgradeResourceState`) and may use for any `DynamicValue`. JSON has no
//! unknown values; objects may omit attributes, which then read as null.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::cty::{DecodeError, Number, Type, Value};

pub fn decode(bytes: &[u8], ty: &Type) -> Result<Value, DecodeError> {
    let json: Json = serde_json::from_slice(bytes).map_err(|e| DecodeError::new("", format!("invalid JSON: {e}")))?;
    from_json(&json, ty, "")
}

fn from_json(json: &Json, ty: &Type, path: &str) -> Result<Value, DecodeError> {
    let mismatch = |wanted: &str| DecodeError::new(path, format!("expected {wanted}, found {json}"));
    match (json, ty) {
        (Json::Null, _) => Ok(Value::Null),
        (Json::Bool(b), Type::Bool) => Ok(Value::Bool(*b)),
        (Json::Number(n), Type::Number) => Ok(Value::Number(match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Number::Int(i),
            (None, Some(f)) => Number::Float(f),
            (None, None) => Number::Decimal(n.to_string()),
        })),
        (Json::String(s), Type::Number) => match s.parse::<i64>() {
            Ok(i) => Ok(Value::int(i)),
            Err(_) if s.parse::<f64>().is_ok() => Ok(Value::Number(Number::Decimal(s.clone()))),
            Err(_) => Err(mismatch("number")),
        },
        (Json::String(s), Type::String) => Ok(Value::String(s.clone())),
        (Json::Array(items), Type::List(element) | Type::Set(element)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| from_json(item, element, &format!("{path}[{i}]")))
            .collect::<Result<_, _>>()
            .map(Value::List),
        (Json::Array(items), Type::Tuple(elements)) if items.len() == elements.len() => items
            .iter()
            .zip(elements)
            .enumerate()
            .map(|(i, (item, element))| from_json(item, element, &format!("{path}[{i}]")))
            .collect::<Result<_, _>>()
            .map(Value::List),
        (Json::Object(items), Type::Map(element)) => items
            .iter()
            .map(|(k, item)| Ok((k.clone(), from_json(item, element, &format!("{path}[{k:?}]"))?)))
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map(Value::Map),
        (Json::Object(items), Type::Object(attributes)) => {
            let mut object = BTreeMap::new();
            for (name, item) in items {
                let attribute_path = format!("{path}.{name}");
                let attribute_type =
                    attributes.get(name).ok_or_else(|| DecodeError::new(&attribute_path, "unsupported attribute"))?;
                object.insert(name.clone(), from_json(item, attribute_type, &attribute_path)?);
            }
            for name in attributes.keys() {
                object.entry(name.clone()).or_insert(Value::Null);
            }
            Ok(Value::Map(object))
        }
        (_, Type::Bool) => Err(mismatch("bool")),
        (_, Type::Number) => Err(mismatch("number")),
        (_, Type::String) => Err(mismatch("string")),
        (_, Type::List(_) | Type::Set(_) | Type::Tuple(_)) => Err(mismatch("array")),
        (_, Type::Map(_) | Type::Object(_)) => Err(mismatch("object")),
    }
}
