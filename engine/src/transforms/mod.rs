//! Transforms a route job applies to each event's payload, one file per component.

pub mod filter;
pub mod hygiene;
pub mod projection;
pub mod raw;

pub use filter::Filter;
pub use hygiene::Hygiene;
pub use projection::Projection;
pub use raw::FieldCopy;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Deserializes a JSON object keeping only its top-level fields named here; the others are
/// skipped unparsed: a route whose filter and projection read a few fields of a wide event
/// builds only those.
pub(crate) struct Fields<'f>(pub &'f [String]);

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            if self.0.iter().any(|f| *f == key) {
                // A repeated key keeps its last value, as a full parse does.
                out.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(out))
    }
}

/// An object key, borrowed from the input unless it has escapes.
pub(crate) struct Key<'de>(pub Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_fields(json: &str, fields: &[String]) -> serde_json::Result<Value> {
        let mut de = serde_json::Deserializer::from_str(json);
        let value = Fields(fields).deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }

    #[test]
    fn only_the_named_fields_are_parsed_and_the_rest_is_skipped() {
        let json = r#"{"a": 1, "b": {"deep": [1, 2, {"x": null}]}, "c\u0041": "escaped", "d": "x", "a": 2}"#;
        let fields = ["a".to_owned(), "cA".to_owned(), "missing".to_owned()];
        assert_eq!(parse_fields(json, &fields).unwrap(), json!({"a": 2, "cA": "escaped"}));
        assert_eq!(parse_fields(json, &[]).unwrap(), json!({}));
        // Skipped values are still checked: the record must be whole JSON.
        assert!(parse_fields(r#"{"a": 1, "b": [1,}"#, &fields).is_err());
        assert!(parse_fields(r#"{"a": 1} trailing"#, &fields).is_err());
        assert!(parse_fields("[1, 2]", &fields).is_err());
    }
}
