//! A captured table's stream schema: the JSON Schema of its change events (see `change`), derived
//! from the table's columns as the source database describes them (pure, no I/O).
//!
//! The capture derives it before it appends the first change of a table, and again whenever
//! PostgreSQL describes the table anew (it does after ADD/DROP COLUMN and type changes, before
//! the first change of the new shape): a different schema becomes a new revision of the stream
//! before any event of the new shape is in it, so consumers never meet a silent mismatch.

use serde_json::{json, Map, Value};

/// One column as the source describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `pg_type.oid`.
    pub type_oid: u32,
}

/// PostgreSQL's name for the built-in types a schema names; others by oid.
fn type_name(oid: u32) -> String {
    let name = match oid {
        16 => "boolean",
        17 => "bytea",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        other => return format!("type oid {other}"),
    };
    name.to_owned()
}

/// A column's JSON Schema, as `change::typed_value` writes its values (always nullable: the
/// replication protocol does not say which columns may be null).
fn column_schema(c: &Column) -> Value {
    let types: Value = match c.type_oid {
        16 => json!(["boolean", "null"]),
        20 | 21 | 23 | 26 => json!(["integer", "null"]),
        // NaN and the infinities are written as text.
        700 | 701 => json!(["number", "string", "null"]),
        // Any JSON.
        114 | 3802 => return json!({"x-postgres-type": type_name(c.type_oid)}),
        _ => json!(["string", "null"]),
    };
    let mut s = json!({"type": types, "x-postgres-type": type_name(c.type_oid)});
    if matches!(c.type_oid, 1114 | 1184) {
        // As processors read it (a timestamp column); `infinity` stays as PostgreSQL writes it.
        s["format"] = json!("date-time");
    }
    s
}

/// The JSON Schema of `table`'s change events. `key` names the primary key's columns.
pub fn change_schema(table: &str, columns: &[Column], key: &[String]) -> Value {
    let row: Map<String, Value> = columns.iter().map(|c| (c.name.clone(), column_schema(c))).collect();
    let key_row: Map<String, Value> =
        columns.iter().filter(|c| key.contains(&c.name)).map(|c| (c.name.clone(), column_schema(c))).collect();
    // An update's unchanged TOASTed value is left out, so no column is required in a row image;
    // a column the table does not have is never in one.
    let image = json!({"type": ["object", "null"], "properties": row, "additionalProperties": false});
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": format!("Changes of {table}"),
        "description": format!("Derived by Keystone from the columns of {table}; a new revision when they change."),
        "x-keystone-derived-from": table,
        "type": "object",
        "required": ["op", "table", "key", "lsn", "seq"],
        "properties": {
            "op": {"enum": ["c", "u", "d", "r", "t"], "description": "insert, update, delete, snapshot read, truncate"},
            "table": {"const": table},
            "key": {"type": "object", "properties": key_row, "required": key, "additionalProperties": false},
            "before": image.clone(),
            "after": image,
            "lsn": {"type": "integer", "minimum": 0},
            "seq": {"type": "integer", "minimum": 0},
            "txid": {"type": ["integer", "null"]},
            "ts_ms": {"type": "integer"},
        },
    })
}

/// The columns a derived schema describes, by name, with their PostgreSQL type.
fn columns_of(schema: &Value) -> Vec<(String, String)> {
    let props = schema.pointer("/properties/after/properties").and_then(Value::as_object);
    props
        .into_iter()
        .flatten()
        .map(|(name, s)| (name.clone(), s.get("x-postgres-type").and_then(Value::as_str).unwrap_or("?").to_owned()))
        .collect()
}

/// What changed between two derived schemas, for the stream revision's reason, e.g.
/// `columns added: note (text); dropped: legacy; retyped: qty integer -> bigint`.
pub fn describe_change(before: Option<&Value>, after: &Value) -> String {
    let old = before.map(columns_of).unwrap_or_default();
    let new = columns_of(after);
    if before.is_none_or(|b| b.pointer("/properties/after").is_none()) {
        let list = new.iter().map(|(n, t)| format!("{n} ({t})")).collect::<Vec<_>>().join(", ");
        return format!("schema derived from the table's columns: {list}");
    }
    let type_in = |cols: &[(String, String)], name: &str| cols.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone());
    let mut parts = Vec::new();
    let added: Vec<String> =
        new.iter().filter(|(n, _)| type_in(&old, n).is_none()).map(|(n, t)| format!("{n} ({t})")).collect();
    let dropped: Vec<String> = old.iter().filter(|(n, _)| type_in(&new, n).is_none()).map(|(n, _)| n.clone()).collect();
    let retyped: Vec<String> = new
        .iter()
        .filter_map(|(n, t)| type_in(&old, n).filter(|o| o != t).map(|o| format!("{n} {o} -> {t}")))
        .collect();
    for (label, list) in [("added", added), ("dropped", dropped), ("retyped", retyped)] {
        if !list.is_empty() {
            parts.push(format!("{label}: {}", list.join(", ")));
        }
    }
    if parts.is_empty() {
        "schema derived from the table's columns (key or layout changed)".to_owned()
    } else {
        format!("columns {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, type_oid: u32) -> Column {
        Column { name: name.into(), type_oid }
    }

    #[test]
    fn events_of_the_table_validate_and_other_shapes_do_not() {
        let s = change_schema("public.orders", &[col("id", 23), col("total", 1700), col("doc", 3802)], &["id".into()]);
        let v = jsonschema::validator_for(&s).unwrap();
        let change = json!({"op": "u", "table": "public.orders", "key": {"id": 7},
            "before": null, "after": {"id": 7, "total": "1.50", "doc": {"a": [1]}},
            "lsn": 10, "seq": 1, "txid": 3, "ts_ms": 1});
        assert!(v.is_valid(&change));
        // An update that left out an unchanged TOASTed value.
        let mut partial = change.clone();
        partial["after"] = json!({"id": 7});
        assert!(v.is_valid(&partial));
        let mut unknown = change.clone();
        unknown["after"]["note"] = json!("x");
        assert!(!v.is_valid(&unknown), "a column the table does not have");
        let mut wrong = change.clone();
        wrong["after"]["id"] = json!("seven");
        assert!(!v.is_valid(&wrong));
        let mut other = change;
        other["table"] = json!("public.items");
        assert!(!v.is_valid(&other));
    }

    #[test]
    fn a_change_of_columns_is_described() {
        let before = change_schema("t", &[col("id", 23), col("qty", 23), col("legacy", 25)], &["id".into()]);
        let after = change_schema("t", &[col("id", 23), col("qty", 20), col("note", 25)], &["id".into()]);
        assert_eq!(
            describe_change(Some(&before), &after),
            "columns added: note (text); dropped: legacy; retyped: qty integer -> bigint"
        );
        assert_eq!(
            describe_change(None, &before),
            "schema derived from the table's columns: id (integer), legacy (text), qty (integer)"
        );
        assert_eq!(
            describe_change(Some(&json!({"type": "object"})), &before).split(':').next(),
            Some("schema derived from the table's columns")
        );
    }
}
