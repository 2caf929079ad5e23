//! A stream as a table: its JSON Schema's properties become typed columns (nested objects become
//! structs, so `device.os` reaches into them), beside the envelope's columns every event has.

use datafusion_common::arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use serde_json::Value;
use std::sync::Arc;

/// The envelope's columns, present in every stream's table whatever its schema.
pub const ENVELOPE_COLUMNS: [&str; 5] = ["_id", "_key", "_ingested_at", "_partition", "_offset"];

/// Timestamps are milliseconds since the epoch in UTC: the log's own resolution.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn envelope_fields() -> Vec<Field> {
    vec![
        Field::new("_id", DataType::Utf8, false),
        Field::new("_key", DataType::Utf8, true),
        Field::new("_ingested_at", timestamp_type(), false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
    ]
}

/// The table a stream with this JSON Schema reads as. Properties whose type cannot be a column
/// (no `type`, or an object without `properties`) are left out: a query naming one is refused
/// with "no field named", like a field the schema does not have.
pub fn stream_table(schema: Option<&Value>) -> Schema {
    let mut fields = envelope_fields();
    if let Some(props) = schema.and_then(|s| s.get("properties")).and_then(Value::as_object) {
        let required = required_of(schema.unwrap_or(&Value::Null));
        for (name, prop) in props {
            if ENVELOPE_COLUMNS.contains(&name.as_str()) {
                continue;
            }
            if let Some(f) = field_of(name, prop, required.contains(&name.as_str())) {
                fields.push(f);
            }
        }
    }
    Schema::new(fields)
}

fn required_of(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map_or_else(Vec::new, |r| r.iter().filter_map(Value::as_str).collect())
}

/// The JSON types a property allows, without `null`, and whether `null` is one of them.
fn types_of(prop: &Value) -> (Vec<&str>, bool) {
    let all: Vec<&str> = match prop.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let nullable = all.contains(&"null");
    (all.into_iter().filter(|t| *t != "null").collect(), nullable)
}

fn field_of(name: &str, prop: &Value, required: bool) -> Option<Field> {
    let (types, null_allowed) = types_of(prop);
    let data_type = match types.as_slice() {
        ["string"] if prop.get("format").and_then(Value::as_str) == Some("date-time") => timestamp_type(),
        ["string"] => DataType::Utf8,
        ["integer"] => DataType::Int64,
        ["number"] | ["integer", "number"] | ["number", "integer"] => DataType::Float64,
        ["boolean"] => DataType::Boolean,
        ["object"] => {
            let props = prop.get("properties")?.as_object()?;
            let required = required_of(prop);
            let fields: Fields =
                props.iter().filter_map(|(n, p)| field_of(n, p, required.contains(&n.as_str()))).collect();
            if fields.is_empty() {
                return None;
            }
            DataType::Struct(fields)
        }
        ["array"] => {
            let item = field_of("item", prop.get("items")?, false)?;
            DataType::List(Arc::new(item))
        }
        _ => return None,
    };
    Some(Field::new(name, data_type, !required || null_allowed))
}

/// How a column's type reads to a user (`string`, `bigint`, `timestamp`, `struct<os: string>`).
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "bigint unsigned".into(),
        DataType::Float16 | DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Interval(_) | DataType::Duration(_) => "interval".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p}, {s})"),
        DataType::Struct(fields) => {
            let inner: Vec<String> =
                fields.iter().map(|f| format!("{}: {}", f.name(), type_name(f.data_type()))).collect();
            format!("struct<{}>", inner.join(", "))
        }
        DataType::List(f) | DataType::LargeList(f) => format!("array<{}>", type_name(f.data_type())),
        DataType::Null => "null".into(),
        other => other.to_string().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_json_schema_becomes_typed_columns_beside_the_envelope() {
        let schema = json!({
            "type": "object",
            "required": ["user", "ts"],
            "properties": {
                "user": {"type": "string"},
                "ts": {"type": "string", "format": "date-time"},
                "bitrate": {"type": ["integer", "null"]},
                "price": {"type": "number"},
                "ok": {"type": "boolean"},
                "device": {"type": "object", "properties": {"os": {"type": "string"}}},
                "tags": {"type": "array", "items": {"type": "string"}},
                "free": {"type": "object"},
                "_id": {"type": "string"}
            }
        });
        let table = stream_table(Some(&schema));
        let cols: Vec<(String, String, bool)> =
            table.fields().iter().map(|f| (f.name().clone(), type_name(f.data_type()), f.is_nullable())).collect();
        let col = |n: &str| cols.iter().find(|c| c.0 == n).cloned();
        assert_eq!(col("user"), Some(("user".into(), "string".into(), false)));
        assert_eq!(col("ts").unwrap().1, "timestamp");
        assert_eq!(col("bitrate"), Some(("bitrate".into(), "bigint".into(), true)));
        assert_eq!(col("price").unwrap().1, "double");
        assert_eq!(col("device").unwrap().1, "struct<os: string>");
        assert_eq!(col("tags").unwrap().1, "array<string>");
        // An object without properties has no columns to offer; `_id` stays the envelope's.
        assert_eq!(col("free"), None);
        assert_eq!(cols.iter().filter(|c| c.0 == "_id").count(), 1);
        assert_eq!(&cols[..5].iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), &ENVELOPE_COLUMNS);
    }

    #[test]
    fn a_stream_without_a_schema_has_only_the_envelope() {
        assert_eq!(stream_table(None).fields().len(), ENVELOPE_COLUMNS.len());
    }
}
