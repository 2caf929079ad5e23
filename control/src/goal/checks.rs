//! Checks shared by declarations and operations: reasons, route transforms against a stream's
//! schema.

use super::*;

pub const REASON_MAX: usize = 500;

pub(crate) fn check_reason(reason: &str) -> Result<(), ValidationErrors> {
    if reason.chars().count() > REASON_MAX {
        return Err(ValidationErrors::single("reason", format!("must be at most {REASON_MAX} characters")));
    }
    Ok(())
}

/// Compiles a CEL filter once to report syntax errors with their position, and checks it only
/// reads the `event` variable the job provides.
/// Checks a route's filter (it compiles) and, when the stream declares a schema, that the filter
/// and the projection name only fields the schema has: such a field is a typo, not data.
pub fn check_transforms(
    e: &mut ValidationErrors,
    schema: Option<&Value>,
    filter: Option<&str>,
    projection: &crate::model::Projection,
) {
    if let Some(f) = filter {
        if let Err(msg) = check_filter(f) {
            e.add("filter", msg);
        }
    }
    let Some(schema) = schema else { return };
    for (field, path) in projection.paths() {
        if !schema_has_path(schema, path) {
            e.add(field, format!("the stream's schema has no field {path:?}"));
        }
    }
    for path in filter.map(filter_fields).unwrap_or_default() {
        if !schema_has_path(schema, &path) {
            e.add("filter", format!("the stream's schema has no field {path:?} (read as event.{path})"));
        }
    }
}

/// True when a JSON Schema declares `path` (dotted): every segment is in `properties`, or the
/// object at that level explicitly allows other properties. A level without `properties` says
/// nothing about its fields, so anything below it is allowed.
pub fn schema_has_path(schema: &Value, path: &str) -> bool {
    let mut node = schema;
    for seg in path.split('.') {
        let Some(props) = node.get("properties").and_then(Value::as_object) else { return true };
        match props.get(seg) {
            Some(next) => node = next,
            None => return node.get("additionalProperties").is_some_and(|a| a != &Value::Bool(false)),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_paths_follow_properties() {
        let schema = serde_json::json!({"type": "object", "additionalProperties": false, "properties": {
            "user": {"type": "object", "properties": {"email": {"type": "string"}}},
            "meta": {"type": "object"}}});
        assert!(schema_has_path(&schema, "user.email"));
        assert!(schema_has_path(&schema, "meta.anything"), "no properties declared below meta");
        assert!(!schema_has_path(&schema, "usr"));
        assert!(!schema_has_path(&schema, "user.mail"), "undeclared, and extra properties not opted into");
        let open = serde_json::json!({"properties": {"a": {}}, "additionalProperties": true});
        assert!(schema_has_path(&open, "b"));
        assert!(schema_has_path(&serde_json::json!({"type": "object"}), "x.y"));
    }

    #[test]
    fn json_type_errors_name_the_path() {
        let e = Declaration::from_json(Kind::Stream, serde_json::json!({"partitions": "three", "retention_hours": 1}))
            .unwrap_err();
        assert_eq!(e.0[0].field, "spec.partitions");
        let e = Declaration::from_json(
            Kind::Route,
            serde_json::json!({"stream": "a", "sink": "b", "projection": {"keep": [1]}}),
        )
        .unwrap_err();
        assert_eq!(e.0[0].field, "spec.projection.keep[0]");
    }
}
