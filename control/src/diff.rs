//! A readable, field-level diff between two specs: "partitions: 3 -> 6" rather than a text diff
//! of pretty-printed JSON, so reviewers see exactly which setting changed.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// One changed leaf. `path` is dotted, with `[i]` for array items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct Change {
    pub path: String,
    /// The value before, absent when the field was added.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(value_type = Option<Object>))]
    pub before: Option<Value>,
    /// The value after, absent when the field was removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(value_type = Option<Object>))]
    pub after: Option<Value>,
}

/// Every leaf that differs between `before` and `after`, in path order. `null` stands for no
/// object at all (before a create, after a delete): every field is added, or removed.
pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    for (v, out) in [(before, &mut a), (after, &mut b)] {
        if !v.is_null() {
            flatten(String::new(), v, out);
        }
    }
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|p| {
            let (x, y) = (a.get(p), b.get(p));
            (x != y).then(|| Change { path: p.clone(), before: x.cloned(), after: y.cloned() })
        })
        .collect()
}

fn flatten(prefix: String, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(p, v, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten(format!("{prefix}[{i}]"), v, out);
            }
        }
        leaf => {
            out.insert(prefix, leaf.clone());
        }
    }
}

/// A value as one short line for display.
pub fn show(v: &Option<Value>) -> String {
    match v {
        None => "—".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_changed_added_and_removed_leaves() {
        let a = json!({"partitions": 3, "description": "x", "schema": {"type": "object"}, "keep": ["a", "b"]});
        let b = json!({"partitions": 6, "description": "x", "key_field": "id", "keep": ["a"]});
        let d = diff(&a, &b);
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["keep[1]", "key_field", "partitions", "schema.type"]);
        assert_eq!(d[2].before, Some(json!(3)));
        assert_eq!(d[2].after, Some(json!(6)));
        assert_eq!(d[1].before, None);
        assert_eq!(d[3].after, None);
    }

    #[test]
    fn null_is_no_object() {
        let spec = json!({"stream": "s", "batch_size": 5});
        let created = diff(&Value::Null, &spec);
        assert_eq!(created.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(), ["batch_size", "stream"]);
        assert!(created.iter().all(|c| c.before.is_none()));
        assert!(diff(&spec, &Value::Null).iter().all(|c| c.after.is_none() && !c.path.is_empty()));
    }

    #[test]
    fn identical_specs_have_no_changes() {
        let a = json!({"a": {"b": [1, {"c": null}]}});
        assert!(diff(&a, &a.clone()).is_empty());
    }

    #[test]
    fn show_quotes_strings_only() {
        assert_eq!(show(&Some(json!("BR"))), "\"BR\"");
        assert_eq!(show(&Some(json!(3))), "3");
        assert_eq!(show(&None), "—");
    }
}
