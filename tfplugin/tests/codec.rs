//! The cty value codec: round trips, unknowns anywhere, and garbage in.

use std::collections::BTreeMap;

use merak_tfplugin::cty::{Number, Type, Value};
use merak_tfplugin::{json, msgpack};
use proptest::prelude::*;

fn arb_type() -> impl Strategy<Value = Type> {
    let leaf = prop_oneof![Just(Type::Bool), Just(Type::Number), Just(Type::String)];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(Type::list),
            inner.clone().prop_map(Type::set),
            inner.clone().prop_map(Type::map),
            prop::collection::btree_map("[a-z_]{1,8}", inner.clone(), 0..4).prop_map(Type::Object),
            prop::collection::vec(inner, 0..3).prop_map(Type::Tuple),
        ]
    })
}

/// A value of `ty`; with `unknowns`, any part may be unknown.
fn arb_value(ty: &Type, unknowns: bool) -> BoxedStrategy<Value> {
    let ordinary: BoxedStrategy<Value> = match ty {
        Type::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Type::Number => prop_oneof![
            any::<i64>().prop_map(|i| Value::Number(Number::Int(i))),
            (-1.0e12f64..1.0e12)
                .prop_filter("fractional", |f| f.fract() != 0.0)
                .prop_map(|f| Value::Number(Number::Float(f))),
            Just(Value::Number(Number::Decimal("123456789012345678901234567890".into()))),
        ]
        .boxed(),
        Type::String => ".{0,12}".prop_map(Value::String).boxed(),
        Type::List(e) | Type::Set(e) => {
            prop::collection::vec(arb_value(e, unknowns), 0..4).prop_map(Value::List).boxed()
        }
        Type::Tuple(elements) => {
            let parts: Vec<_> = elements.iter().map(|e| arb_value(e, unknowns)).collect();
            parts.prop_map(Value::List).boxed()
        }
        Type::Map(e) => {
            prop::collection::btree_map(".{0,6}", arb_value(e, unknowns), 0..4).prop_map(Value::Map).boxed()
        }
        Type::Object(attributes) => {
            let parts: Vec<_> = attributes.iter().map(|(k, t)| (Just(k.clone()), arb_value(t, unknowns))).collect();
            parts.prop_map(|pairs| Value::Map(pairs.into_iter().collect::<BTreeMap<_, _>>())).boxed()
        }
    };
    if unknowns {
        prop_oneof![6 => ordinary, 1 => Just(Value::Null), 1 => Just(Value::Unknown)].boxed()
    } else {
        prop_oneof![6 => ordinary, 1 => Just(Value::Null)].boxed()
    }
}

fn typed_value(unknowns: bool) -> impl Strategy<Value = (Type, Value)> {
    arb_type().prop_flat_map(move |ty| {
        let value = arb_value(&ty, unknowns);
        (Just(ty), value)
    })
}

/// JSON has no unknowns; render a wholly known value the way Terraform would.
fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null | Value::Unknown => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Number(Number::Int(i)) => (*i).into(),
        Value::Number(Number::Float(f)) => serde_json::Number::from_f64(*f).map(Into::into).unwrap_or_default(),
        Value::Number(Number::Decimal(d)) => d.clone().into(),
        Value::String(s) => s.clone().into(),
        Value::List(items) => items.iter().map(to_json).collect::<Vec<_>>().into(),
        Value::Map(items) => {
            items.iter().map(|(k, v)| (k.clone(), to_json(v))).collect::<serde_json::Map<_, _>>().into()
        }
    }
}

proptest! {
    #[test]
    fn msgpack_round_trips_with_unknowns_anywhere((ty, value) in typed_value(true)) {
        let bytes = msgpack::encode(&value, &ty).unwrap();
        prop_assert_eq!(msgpack::decode(&bytes, &ty).unwrap(), value);
    }

    #[test]
    fn json_reads_what_msgpack_writes((ty, value) in typed_value(false)) {
        let json_bytes = serde_json::to_vec(&to_json(&value)).unwrap();
        let from_json = json::decode(&json_bytes, &ty).unwrap();
        let from_msgpack = msgpack::decode(&msgpack::encode(&value, &ty).unwrap(), &ty).unwrap();
        prop_assert_eq!(from_json, from_msgpack);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic(ty in arb_type(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = msgpack::decode(&bytes, &ty);
        let _ = json::decode(&bytes, &ty);
    }

    #[test]
    fn truncated_input_is_an_error((ty, value) in typed_value(true)) {
        let bytes = msgpack::encode(&value, &ty).unwrap();
        for cut in 0..bytes.len() {
            prop_assert!(msgpack::decode(&bytes[..cut], &ty).is_err());
        }
    }
}

#[test]
fn unknown_is_extension_zero_and_any_extension_reads_as_unknown() {
    assert_eq!(msgpack::encode(&Value::Unknown, &Type::String).unwrap(), [0xd4, 0x00, 0x00]);
    // A refined unknown from a newer Terraform: extension 12 with a payload.
    let refined = [0xc7, 0x03, 0x0c, 0x81, 0x01, 0xc3];
    assert_eq!(msgpack::decode(&refined, &Type::Number).unwrap(), Value::Unknown);
}

#[test]
fn objects_carry_exactly_their_attributes() {
    let ty = Type::object([("a", Type::String), ("b", Type::Number)]);
    let partial = Value::Map([("a".to_string(), Value::string("x"))].into());
    let decoded = msgpack::decode(&msgpack::encode(&partial, &ty).unwrap(), &ty).unwrap();
    assert_eq!(decoded.attr("b"), &Value::Null);
    let extra = Value::Map([("c".to_string(), Value::Null)].into());
    assert!(msgpack::encode(&extra, &ty).is_err());
    // Reading: an attribute the schema lacks is refused, a missing one is null.
    assert!(json::decode(br#"{"c": 1}"#, &ty).is_err());
    assert_eq!(json::decode(br#"{"a": "x"}"#, &ty).unwrap(), decoded);
}

#[test]
fn numbers_in_every_encoding() {
    let cases: [(&[u8], Value); 5] = [
        (&[0x05], Value::int(5)),
        (&[0xd0, 0xfb], Value::int(-5)),
        (&[0xcd, 0x01, 0x00], Value::int(256)),
        (&[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], Value::Number(Number::Float(1.5))),
        (&[0xa2, b'4', b'2'], Value::int(42)),
    ];
    for (bytes, expected) in cases {
        assert_eq!(msgpack::decode(bytes, &Type::Number).unwrap(), expected, "{bytes:02x?}");
    }
    assert!(msgpack::decode(&[0xa3, b'a', b'b', b'c'], &Type::Number).is_err());
}

#[test]
fn deep_nesting_is_refused() {
    let mut ty = Type::String;
    let mut bytes = vec![0xa0];
    for _ in 0..200 {
        ty = Type::list(ty);
        bytes.insert(0, 0x91);
    }
    assert!(msgpack::decode(&bytes, &ty).is_err());
}
