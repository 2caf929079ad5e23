//! The route projection: which fields of the payload reach the sink. Applied in a fixed order:
//! keep (only these paths, when any are given), then drop, then rename. Paths are dotted
//! (`user.email`); missing paths are ignored.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    keep: Vec<Vec<String>>,
    drop: Vec<Vec<String>>,
    rename: Vec<(Vec<String>, Vec<String>)>,
}

fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

fn take(v: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = v;
    for seg in parents {
        cur = cur.get_mut(seg)?;
    }
    cur.as_object_mut()?.remove(last)
}

/// Sets `path` in `v`, creating intermediate objects (and replacing non-objects on the way).
fn put(v: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = v;
    for seg in parents {
        if !cur.get(seg).is_some_and(Value::is_object) {
            if let Some(obj) = cur.as_object_mut() {
                obj.insert(seg.clone(), Value::Object(Map::new()));
            }
        }
        let Some(next) = cur.get_mut(seg) else { return };
        cur = next;
    }
    if let Some(obj) = cur.as_object_mut() {
        obj.insert(last.clone(), value);
    }
}

impl Projection {
    pub fn new<'a>(
        keep: impl IntoIterator<Item = &'a str>,
        drop: impl IntoIterator<Item = &'a str>,
        rename: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Projection {
        let mut keep: Vec<Vec<String>> = keep.into_iter().map(split).collect();
        // Shortest first: a path inside one kept before it is then kept already, whole.
        keep.sort_by_key(Vec::len);
        Projection {
            keep,
            drop: drop.into_iter().map(split).collect(),
            rename: rename.into_iter().map(|(from, to)| (split(from), split(to))).collect(),
        }
    }

    /// The same projection for fields as sent, when every path it names is a top-level field.
    pub fn top_level(&self) -> Option<super::FieldCopy> {
        let name = |p: &Vec<String>| (p.len() == 1).then(|| p[0].clone());
        Some(super::FieldCopy {
            keep: self.keep.iter().map(name).collect::<Option<_>>()?,
            drop: self.drop.iter().map(name).collect::<Option<_>>()?,
            rename: self.rename.iter().map(|(from, to)| Some((name(from)?, name(to)?))).collect::<Option<_>>()?,
        })
    }

    pub fn apply(&self, mut payload: Value) -> Value {
        let top_level = self.keep.iter().all(|p| p.len() == 1);
        let mut out = if self.keep.is_empty() {
            payload
        } else if top_level {
            // Keeping top-level fields only: the payload's own map, less the others. A route job
            // parses just the fields its filter and projection read, so usually nothing goes.
            let mut map = match payload {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            map.retain(|field, _| self.keep.iter().any(|p| p[0] == *field));
            Value::Object(map)
        } else {
            // Kept values move out of the payload, which is dropped: no copy of each string.
            let mut kept = Value::Object(Map::new());
            for path in &self.keep {
                if let Some(v) = take(&mut payload, path) {
                    put(&mut kept, path, v);
                }
            }
            kept
        };
        for path in &self.drop {
            take(&mut out, path);
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(&mut out, from) {
                put(&mut out, to, v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"id": 1, "user": {"email": "a@b.c", "name": "Ana", "tier": "gold"}, "bitrate": 3000, "debug": {"x": 1}})
    }

    #[test]
    fn empty_projection_passes_everything() {
        assert_eq!(Projection::default().apply(event()), event());
    }

    #[test]
    fn keep_selects_nested_paths() {
        let p = Projection::new(["id", "user.name", "missing.path"], [], []);
        assert_eq!(p.apply(event()), json!({"id": 1, "user": {"name": "Ana"}}));
        let top = Projection::new(["id", "bitrate", "missing"], [], []);
        assert_eq!(top.apply(event()), json!({"id": 1, "bitrate": 3000}));
        assert_eq!(top.apply(json!([1, 2])), json!({}), "a payload that is not an object keeps nothing");
        assert_eq!(p.apply(json!("text")), json!({}));
        // A path inside another kept path changes nothing, in either order.
        let whole_user = json!({"user": {"email": "a@b.c", "name": "Ana", "tier": "gold"}});
        assert_eq!(Projection::new(["user.name", "user"], [], []).apply(event()), whole_user);
        assert_eq!(Projection::new(["user", "user.name", "user"], [], []).apply(event()), whole_user);
    }

    #[test]
    fn drop_removes_nested_paths() {
        let p = Projection::new([], ["user.email", "debug", "nope"], []);
        assert_eq!(p.apply(event()), json!({"id": 1, "user": {"name": "Ana", "tier": "gold"}, "bitrate": 3000}));
    }

    #[test]
    fn rename_moves_values_across_levels_after_keep_and_drop() {
        let p =
            Projection::new(["user", "bitrate"], ["user.email"], [("user.tier", "tier"), ("bitrate", "stats.kbps")]);
        assert_eq!(p.apply(event()), json!({"user": {"name": "Ana"}, "tier": "gold", "stats": {"kbps": 3000}}));
    }
}
