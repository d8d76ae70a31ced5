//! Terraform's value model (cty): types and values, including the two values
//! every type has besides its ordinary ones, null and unknown.

use std::collections::BTreeMap;

/// A cty type. Objects list their attributes by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Bool,
    Number,
    String,
    List(Box<Type>),
    Set(Box<Type>),
    Map(Box<Type>),
    Object(BTreeMap<String, Type>),
    Tuple(Vec<Type>),
}

impl Type {
    pub fn list(element: Type) -> Type {
        Type::List(Box::new(element))
    }

    pub fn set(element: Type) -> Type {
        Type::Set(Box::new(element))
    }

    pub fn map(element: Type) -> Type {
        Type::Map(Box::new(element))
    }

    pub fn object<'a>(attributes: impl IntoIterator<Item = (&'a str, Type)>) -> Type {
        Type::Object(attributes.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// The JSON form Terraform expects in schemas: `"string"`,
    /// `["list","string"]`, `["object",{"a":"number"}]`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Value as J, json};
        match self {
            Type::Bool => J::from("bool"),
            Type::Number => J::from("number"),
            Type::String => J::from("string"),
            Type::List(e) => json!(["list", e.to_json()]),
            Type::Set(e) => json!(["set", e.to_json()]),
            Type::Map(e) => json!(["map", e.to_json()]),
            Type::Object(attrs) => {
                let attrs: serde_json::Map<_, _> = attrs.iter().map(|(k, t)| (k.clone(), t.to_json())).collect();
                json!(["object", attrs])
            }
            Type::Tuple(elements) => {
                json!(["tuple", elements.iter().map(Type::to_json).collect::<Vec<_>>()])
            }
        }
    }

    /// How the type reads in docs: `list(object({...}))` shortened to its shape.
    pub fn friendly_name(&self) -> String {
        match self {
            Type::Bool => "Boolean".into(),
            Type::Number => "Number".into(),
            Type::String => "String".into(),
            Type::List(e) => format!("List of {}", e.friendly_name()),
            Type::Set(e) => format!("Set of {}", e.friendly_name()),
            Type::Map(e) => format!("Map of {}", e.friendly_name()),
            Type::Object(_) => "Object".into(),
            Type::Tuple(_) => "Tuple".into(),
        }
    }
}

/// A number as Terraform sends it: an integer, a float, or (for values that
/// fit neither) its decimal text.
#[derive(Debug, Clone, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
    Decimal(String),
}

impl Number {
    /// Whether two numbers are the same number, whatever their encoding
    /// (Terraform may send 5 as an integer and we may plan it as a float).
    pub fn same(&self, other: &Number) -> bool {
        match (self.as_i64(), other.as_i64()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => match (self, other) {
                (Number::Float(a), Number::Float(b)) => a == b,
                _ => self == other,
            },
            _ => false,
        }
    }

    /// The value as an f64 (a decimal beyond its precision rounds).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Number::Int(i) => Some(*i as f64),
            Number::Float(f) => Some(*f),
            Number::Decimal(text) => text.parse().ok(),
        }
    }

    /// The value as an i64, when it is a whole number in range.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Number::Int(i) => Some(*i),
            Number::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
            Number::Float(_) => None,
            Number::Decimal(text) => text.parse().ok(),
        }
    }
}

/// A cty value. `Null` and `Unknown` are allowed for every type.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Unknown,
    Bool(bool),
    Number(Number),
    String(String),
    /// Lists, sets and tuples.
    List(Vec<Value>),
    /// Maps and objects.
    Map(BTreeMap<String, Value>),
}

impl Value {
    pub fn string(text: impl Into<String>) -> Value {
        Value::String(text.into())
    }

    pub fn int(value: i64) -> Value {
        Value::Number(Number::Int(value))
    }

    /// A number: whole ones as integers, as configuration gives them.
    pub fn number(value: f64) -> Value {
        if value.fract() == 0.0 && value.abs() < 9.0e15 {
            Value::int(value as i64)
        } else {
            Value::Number(Number::Float(value))
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Value::Unknown)
    }

    /// True when neither this value nor anything inside it is unknown.
    /// The value as a person would write it in HCL, for diagnostics.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Unknown => "(known after apply)".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(Number::Int(i)) => i.to_string(),
            Value::Number(Number::Float(f)) => f.to_string(),
            Value::Number(Number::Decimal(text)) => text.clone(),
            Value::String(text) => format!("{text:?}"),
            Value::List(items) => format!("[{}]", items.iter().map(Value::describe).collect::<Vec<_>>().join(", ")),
            Value::Map(items) => format!(
                "{{{}}}",
                items.iter().map(|(k, v)| format!("{k} = {}", v.describe())).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Equality that compares numbers as numbers (see [`Number::same`]).
    pub fn same(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Number(a), Value::Number(b)) => a.same(b),
            (Value::List(a), Value::List(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.same(b)),
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.same(w)))
            }
            _ => self == other,
        }
    }

    pub fn is_wholly_known(&self) -> bool {
        match self {
            Value::Unknown => false,
            Value::List(items) => items.iter().all(Value::is_wholly_known),
            Value::Map(items) => items.values().all(Value::is_wholly_known),
            _ => true,
        }
    }

    /// The attribute of an object; null when absent or when self is not an object.
    pub fn attr(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        match self {
            Value::Map(attrs) => attrs.get(name).unwrap_or(&NULL),
            _ => &NULL,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }
}

/// Builds an object value from (name, value) pairs.
pub fn object<'a>(attributes: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Map(attributes.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Why bytes from Terraform could not be read as a value of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// Where in the value, e.g. `.epms[3].name`.
    pub path: String,
    pub message: String,
}

impl DecodeError {
    pub fn new(path: &str, message: impl Into<String>) -> Self {
        DecodeError { path: if path.is_empty() { "value".into() } else { path.to_string() }, message: message.into() }
    }
}
