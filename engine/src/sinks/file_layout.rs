//! Moves local file-sink folders written before files were kept per team (`sinks/<path>`) into
//! their team's folder (`sinks/<team>/<path>`), once, before any job starts.
//!
//! A folder that sinks of two teams both wrote under holds both teams' events mixed: handing it
//! to either team would leak the other's, so it stays where it was moved aside
//! (`sinks-before-team-folders/`) for an admin to sort out, and start-up says so.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

/// Written into the sinks folder once its layout is per team.
const MARKER: &str = ".team-folders";
/// Where the old layout is moved aside while its folders are handed out.
const OLD: &str = "sinks-before-team-folders";

/// What the migration decided for the local file sinks' paths.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LayoutPlan {
    /// `(path, team)`: move `<old>/<path>` to `<sinks>/<team>/<path>`, shortest paths first.
    pub moves: Vec<(String, String)>,
    /// Paths that sinks of more than one team overlap on: left in the old folder.
    pub shared: Vec<String>,
}

/// Decides the moves for local file sinks given as `(team, path)`, without I/O. Two paths
/// overlap when they are equal or one is a folder of the other.
pub fn plan_layout(sinks: &[(String, String)]) -> LayoutPlan {
    let overlaps = |a: &str, b: &str| {
        a == b
            || b.strip_prefix(a).is_some_and(|r| r.starts_with('/'))
            || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'))
    };
    let mut plan = LayoutPlan::default();
    let unique: BTreeSet<(&str, &str)> = sinks.iter().map(|(t, p)| (p.as_str(), t.as_str())).collect();
    for &(path, team) in &unique {
        if unique.iter().any(|&(other, other_team)| other_team != team && overlaps(path, other)) {
            if !plan.shared.iter().any(|p| p == path) {
                plan.shared.push(path.to_owned());
            }
        } else {
            plan.moves.push((path.to_owned(), team.to_owned()));
        }
    }
    // A folder first, so its sub-folders (the same team's) go with it.
    plan.moves.sort_by_key(|(p, _)| p.matches('/').count());
    plan
}

/// Applies the per-team layout under `data_dir` for the local file sinks `(team, path)`;
/// returns what an admin must look at (nothing once the layout is per team). Safe to repeat
/// after a crash part-way: moves already made are not made again.
pub fn migrate_to_team_folders(data_dir: &Path, sinks: &[(String, String)]) -> io::Result<Vec<String>> {
    let root = data_dir.join("sinks");
    let old = data_dir.join(OLD);
    if root.join(MARKER).exists() {
        return Ok(Vec::new());
    }
    let had_files = root.exists() && std::fs::read_dir(&root)?.next().is_some();
    if had_files && !old.exists() {
        std::fs::rename(&root, &old)?;
    }
    std::fs::create_dir_all(&root)?;
    let mut notes = Vec::new();
    if old.exists() {
        let plan = plan_layout(sinks);
        for (path, team) in &plan.moves {
            let from = old.join(path);
            if !from.exists() {
                continue;
            }
            let to = root.join(team).join(path);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&from, &to)?;
        }
        for path in &plan.shared {
            if old.join(path).exists() {
                notes.push(format!(
                    "file sinks of several teams wrote under {path:?}: its files were left in {} for an admin to sort out",
                    old.join(path).display()
                ));
            }
        }
        if is_empty_tree(&old)? {
            std::fs::remove_dir_all(&old)?;
        } else if plan.shared.is_empty() {
            notes.push(format!("files no sink declares were left in {}", old.display()));
        }
    }
    std::fs::write(root.join(MARKER), b"sinks/<team>/<path>\n")?;
    Ok(notes)
}

/// True when a folder holds no file (empty folders only).
fn is_empty_tree(dir: &Path) -> io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() || !is_empty_tree(&entry.path())? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(t, p)| (t.to_string(), p.to_string())).collect()
    }

    #[test]
    fn overlapping_paths_of_two_teams_stay_put() {
        let plan = plan_layout(&sinks(&[("a", "shared/p"), ("b", "shared"), ("a", "mine/x"), ("a", "mine")]));
        assert_eq!(plan.shared, vec!["shared".to_string(), "shared/p".to_string()]);
        assert_eq!(plan.moves, vec![("mine".into(), "a".into()), ("mine/x".into(), "a".into())]);
        // A path that merely starts with another's name does not overlap it.
        let plan = plan_layout(&sinks(&[("a", "plays"), ("b", "plays-2")]));
        assert!(plan.shared.is_empty());
    }

    #[test]
    fn folders_move_into_their_teams_and_shared_ones_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str| {
            let p = dir.path().join("sinks").join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, rel).unwrap();
        };
        put("mine/x/dt=1/f.ndjson");
        put("mine/g.ndjson");
        put("shared/h.ndjson");
        let declared = sinks(&[("a", "mine"), ("a", "mine/x"), ("a", "shared"), ("b", "shared")]);
        let notes = migrate_to_team_folders(dir.path(), &declared).unwrap();
        let root = dir.path().join("sinks");
        assert_eq!(std::fs::read_to_string(root.join("a/mine/x/dt=1/f.ndjson")).unwrap(), "mine/x/dt=1/f.ndjson");
        assert_eq!(std::fs::read_to_string(root.join("a/mine/g.ndjson")).unwrap(), "mine/g.ndjson");
        assert!(!root.join("a/shared").exists() && !root.join("b/shared").exists());
        assert!(dir.path().join(OLD).join("shared/h.ndjson").exists());
        assert_eq!(notes.len(), 1, "{notes:?}");
        // Once done, never again (a sink folder named like an old path stays where it is).
        assert!(migrate_to_team_folders(dir.path(), &declared).unwrap().is_empty());
        assert!(root.join("a/mine/g.ndjson").exists());
    }

    #[test]
    fn a_fresh_data_directory_gets_the_new_layout_at_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(migrate_to_team_folders(dir.path(), &[]).unwrap().is_empty());
        assert!(dir.path().join("sinks").join(MARKER).exists());
        assert!(!dir.path().join(OLD).exists());
    }
}
