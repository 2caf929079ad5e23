//! Top-level fields as sent: the fast path of a route that only tests and picks top-level
//! fields. Its job reads the fields it needs as slices of the log record, and writes the event a
//! sink receives by copying their text, instead of building a tree per event (a string, a key
//! and a map node per field) and serialising it again: that was a third of a route job's CPU.
//! The result is what the tree path gives, except that values keep their text as sent (`1.50`
//! stays `1.50`, a 30-digit integer keeps its digits, a nested object keeps its key order), as
//! the log keeps them.

use super::Key;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A payload's top-level fields, in the order sent, each value as its text in the record.
pub type RawFields<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// Deserializes a JSON object into its top-level fields, only those named when given (the
/// others are skipped unparsed). Fails on anything but an object.
pub(crate) struct RawFieldsSeed<'f>(pub Option<&'f [String]>);

impl<'de> DeserializeSeed<'de> for RawFieldsSeed<'_> {
    type Value = RawFields<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawFields<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RawFieldsSeed<'_> {
    type Value = RawFields<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFields<'de>, A::Error> {
        let mut out = Vec::with_capacity(self.0.map_or(16, <[String]>::len));
        while let Some(Key(key)) = map.next_key()? {
            if self.0.is_none_or(|wanted| wanted.iter().any(|f| *f == key)) {
                out.push((key, map.next_value::<&RawValue>()?));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// A projection of top-level fields only (keep, then drop, then rename, as
/// [`super::Projection`] applies them), on fields as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldCopy {
    pub keep: Vec<String>,
    pub drop: Vec<String>,
    pub rename: Vec<(String, String)>,
}

impl FieldCopy {
    /// Selects and renames the fields, then writes the event as a JSON object with its fields in
    /// key order (as the tree path's map orders them). A repeated field keeps its last value,
    /// as a tree does. `None` when a kept value spans lines: copied as is it would break an
    /// NDJSON file, so the caller takes the tree path, which writes it compactly.
    pub fn apply<'a>(&'a self, mut fields: RawFields<'a>) -> Option<Box<RawValue>> {
        let mut i = 0;
        while i < fields.len() {
            if fields[i + 1..].iter().any(|(k, _)| *k == fields[i].0) {
                fields.remove(i);
            } else {
                i += 1;
            }
        }
        if !self.keep.is_empty() {
            fields.retain(|(k, _)| self.keep.iter().any(|f| f == k));
        }
        fields.retain(|(k, _)| !self.drop.iter().any(|f| f == k));
        for (from, to) in &self.rename {
            if let Some(at) = fields.iter().position(|(k, _)| k == from) {
                let (_, value) = fields.remove(at);
                fields.retain(|(k, _)| k != to);
                fields.push((Cow::Borrowed(to), value));
            }
        }
        if fields.iter().any(|(_, v)| v.get().bytes().any(|b| b == b'\n' || b == b'\r')) {
            return None;
        }
        fields.sort_by(|(a, _), (b, _)| a.cmp(b));
        Some(serde_json::value::to_raw_value(&Object(&fields)).expect("fields serialise"))
    }
}

/// Fields written as one JSON object, each value's text copied.
struct Object<'a>(&'a [(Cow<'a, str>, &'a RawValue)]);

impl Serialize for Object<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::Projection;
    use serde_json::Value;

    fn fields<'a>(json: &'a str, wanted: Option<&[String]>) -> serde_json::Result<RawFields<'a>> {
        let mut de = serde_json::Deserializer::from_str(json);
        let fields = RawFieldsSeed(wanted).deserialize(&mut de)?;
        de.end()?;
        Ok(fields)
    }

    #[test]
    fn named_fields_are_sliced_from_the_text_and_others_skipped() {
        let json = r#"{"a": 1.50, "b": {"deep": [1, {"x": null}]}, "c\u0041": "esc\"aped", "a": 2}"#;
        let got = fields(json, Some(&["a".into(), "cA".into()])).unwrap();
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
        assert_eq!(got, [("a", "1.50"), ("cA", r#""esc\"aped""#), ("a", "2")]);
        assert_eq!(fields(json, None).unwrap().len(), 4);
        assert!(fields("[1, 2]", None).is_err());
        assert!(fields(r#"{"a": [1,}"#, None).is_err(), "skipped values are still checked");
    }

    #[test]
    fn copying_fields_gives_what_the_tree_projection_gives() {
        let event =
            r#"{"id": 7, "user": {"email":"a@b.c"}, "bitrate": 3000, "dup": 1, "tier": "gold", "dup": 2, "q\"k": "x"}"#;
        // Keep, drop, rename.
        type Case = (&'static [&'static str], &'static [&'static str], &'static [(&'static str, &'static str)]);
        let cases: [Case; 5] = [
            (&["id", "bitrate", "missing"], &[], &[]),
            (&[], &["user", "nope"], &[]),
            (&["id", "dup", "tier"], &["tier"], &[("id", "ident"), ("dup", "id")]),
            (&["bitrate", "tier", "q\"k"], &[], &[("bitrate", "tier")]),
            (&[], &[], &[]),
        ];
        for (keep, drop, rename) in cases {
            let copy = FieldCopy {
                keep: keep.iter().map(|s| s.to_string()).collect(),
                drop: drop.iter().map(|s| s.to_string()).collect(),
                rename: rename.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            };
            let tree = Projection::new(keep.iter().copied(), drop.iter().copied(), rename.iter().copied())
                .apply(serde_json::from_str(event).unwrap());
            let copied = copy.apply(fields(event, None).unwrap()).unwrap();
            // Byte for byte: the same fields, in the same order, written the same way.
            assert_eq!(copied.get(), tree.to_string(), "{keep:?} {drop:?} {rename:?}");
        }
    }

    #[test]
    fn values_keep_their_text_and_multi_line_values_are_left_to_the_tree_path() {
        let copy = FieldCopy { keep: vec!["n".into(), "big".into()], ..FieldCopy::default() };
        let out = copy.apply(fields(r#"{"n": 1.50, "big": 123456789012345678901234567890}"#, None).unwrap()).unwrap();
        assert_eq!(out.get(), r#"{"big":123456789012345678901234567890,"n":1.50}"#);
        let parsed: Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(parsed["n"], 1.5);
        assert!(copy.apply(fields("{\"n\": [1,\n 2]}", None).unwrap()).is_none());
    }
}
