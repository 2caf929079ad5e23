//! Data hygiene: mask or pseudonymise named fields, drop null fields. Masking and hashing run
//! on the payload as ingested (their paths name the stream's fields); dropping nulls runs last.

use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hygiene {
    mask: Vec<Vec<String>>,
    hash: Vec<Vec<String>>,
    drop_nulls: bool,
    /// Mixed into every hash so pseudonyms are stable within a team but differ across teams.
    scope: String,
}

/// What a masked field reads.
pub const MASK: &str = "****";

fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

fn get_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, seg| v.get_mut(seg))
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

impl Hygiene {
    pub fn new<'a>(
        mask: impl IntoIterator<Item = &'a str>,
        hash: impl IntoIterator<Item = &'a str>,
        drop_nulls: bool,
        scope: &str,
    ) -> Hygiene {
        Hygiene {
            mask: mask.into_iter().map(split).collect(),
            hash: hash.into_iter().map(split).collect(),
            drop_nulls,
            scope: scope.to_owned(),
        }
    }

    /// True when it changes nothing.
    pub fn is_noop(&self) -> bool {
        self.mask.is_empty() && self.hash.is_empty() && !self.drop_nulls
    }

    /// The hex SHA-256 of the scope and the value's JSON text (a string hashes as its text).
    pub fn pseudonym(&self, v: &Value) -> String {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut h = Sha256::new();
        h.update(self.scope.as_bytes());
        h.update([0u8]);
        h.update(text.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Masks and hashes (before the projection). Missing and null fields stay as they are.
    pub fn before(&self, payload: &mut Value) {
        for path in &self.mask {
            if let Some(v) = get_mut(payload, path).filter(|v| !v.is_null()) {
                *v = Value::String(MASK.into());
            }
        }
        for path in &self.hash {
            if let Some(v) = get_mut(payload, path).filter(|v| !v.is_null()) {
                *v = Value::String(self.pseudonym(v));
            }
        }
    }

    /// Drops nulls (after the projection).
    pub fn after(&self, payload: &mut Value) {
        if self.drop_nulls {
            drop_nulls(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_hashes_and_drops_nulls() {
        let h = Hygiene::new(["user.email", "card"], ["user.id", "missing"], true, "alpha");
        let mut v = json!({"user": {"email": "ana@x.io", "id": 42, "nick": null}, "card": "4111", "note": null, "list": [{"a": null, "b": 1}]});
        h.before(&mut v);
        h.after(&mut v);
        let id = v["user"]["id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 64);
        assert_eq!(v, json!({"user": {"email": "****", "id": id}, "card": "****", "list": [{"b": 1}]}));
        // Stable within a scope, different across scopes, and the number hashes as its text.
        assert_eq!(h.pseudonym(&json!(42)), id);
        assert_eq!(h.pseudonym(&json!("42")), id);
        assert_ne!(Hygiene::new([], [], false, "beta").pseudonym(&json!(42)), id);
    }

    #[test]
    fn nothing_configured_changes_nothing() {
        let h = Hygiene::default();
        let mut v = json!({"a": null, "b": {"c": null}});
        h.before(&mut v);
        h.after(&mut v);
        assert_eq!(v, json!({"a": null, "b": {"c": null}}));
    }
}
