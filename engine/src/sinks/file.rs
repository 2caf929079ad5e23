//! File sink: NDJSON files under the data directory, in Hive-style partition folders
//! (`dt=YYYY-MM-DD/hr=HH`, by ingest time, UTC). Each delivered batch becomes one file, so files
//! roll by the route's batch size and max latency. A file is committed atomically: written to a
//! hidden temporary name, fsynced, renamed, and the folder fsynced, so a reader never sees half a
//! file and an acknowledged file survives a crash.
//!
//! Redelivery is idempotent for a repeated batch: the file name is derived from the partition and
//! the offsets it holds, so the same batch overwrites the same file.

use super::{required, ConfigError, Sink, SinkError, SinkEvent};
use keystone_control::SinkErrorKind;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The folder that receives the partition folders.
    pub dir: PathBuf,
}

impl FileSinkConfig {
    /// `settings.path` is relative to `<data_dir>/sinks` (validated at declaration).
    pub fn from_spec(settings: &BTreeMap<String, String>, data_dir: &Path) -> Result<FileSinkConfig, ConfigError> {
        let path = required(settings, "settings", "path")?;
        if !keystone_control::is_relative_path(path) {
            return Err(ConfigError::new("settings.path", "must be a relative path without '..'"));
        }
        Ok(FileSinkConfig { dir: data_dir.join("sinks").join(path) })
    }
}

pub struct FileSink {
    config: FileSinkConfig,
}

impl FileSink {
    pub fn new(config: FileSinkConfig) -> FileSink {
        FileSink { config }
    }
}

/// `dt=YYYY-MM-DD/hr=HH` of a time in ms since the epoch (UTC).
pub fn partition_folder(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("dt={:04}-{:02}-{:02}/hr={:02}", t.year(), u8::from(t.month()), t.day(), t.hour())
}

fn write_atomically(dir: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

impl Sink for FileSink {
    async fn deliver(&self, batch: &[SinkEvent]) -> Result<(), SinkError> {
        // One file per (hour folder, partition) run of the batch.
        let mut files: BTreeMap<(String, u32), Vec<&SinkEvent>> = BTreeMap::new();
        for e in batch {
            files.entry((partition_folder(e.ingested_at), e.partition)).or_default().push(e);
        }
        let mut writes = Vec::with_capacity(files.len());
        for ((folder, partition), events) in files {
            let first = events.first().map_or(0, |e| e.offset);
            let last = events.last().map_or(0, |e| e.offset);
            // Named by partition and offsets, so a redelivered batch replaces its own file, and
            // by its first event's id, so a batch from another source (a backfill) with the
            // same offsets never replaces one.
            let first_id: String = events
                .first()
                .map_or("", |e| e.id.as_str())
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect();
            let mut body = Vec::with_capacity(events.len() * 256);
            for e in events {
                serde_json::to_writer(&mut body, e)
                    .map_err(|e| SinkError::transient(SinkErrorKind::Io, e.to_string()))?;
                body.push(b'\n');
            }
            let name = format!("part-{partition:04}-{first:020}-{last:020}-{first_id}.ndjson");
            writes.push((self.config.dir.join(folder), name, body));
        }
        tokio::task::spawn_blocking(move || {
            for (dir, name, body) in writes {
                write_atomically(&dir, &name, &body)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| SinkError::transient(SinkErrorKind::Io, format!("file writer stopped: {e}")))?
        .map_err(|e| SinkError::transient(SinkErrorKind::Io, format!("writing the file failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_follow_the_hive_layout_in_utc() {
        // 2026-11-26T05:07:09Z
        assert_eq!(partition_folder(1_795_669_629_000), "dt=2026-11-26/hr=05");
        assert_eq!(partition_folder(0), "dt=1970-01-01/hr=00");
    }

    #[test]
    fn paths_stay_inside_the_sinks_folder() {
        let s = |p: &str| BTreeMap::from([("path".to_owned(), p.to_owned())]);
        let ok = FileSinkConfig::from_spec(&s("team/plays"), Path::new("/data")).unwrap();
        assert_eq!(ok.dir, Path::new("/data/sinks/team/plays"));
        assert!(FileSinkConfig::from_spec(&s("../etc"), Path::new("/data")).is_err());
        assert!(FileSinkConfig::from_spec(&s("/etc"), Path::new("/data")).is_err());
        assert_eq!(FileSinkConfig::from_spec(&BTreeMap::new(), Path::new("/d")).unwrap_err().field, "settings.path");
    }
}
