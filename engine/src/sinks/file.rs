//! File sink: NDJSON or Parquet files in Hive-style partition folders (`dt=YYYY-MM-DD/hr=HH`, by
//! ingest time, UTC), written through the `object_store` crate: the data directory's `sinks/`
//! folder by default, any S3-compatible bucket by configuration.
//!
//! A file is committed atomically: object_store's local store writes a staging file, fsyncs it,
//! renames it into place and fsyncs the folder (`with_fsync`), and an S3 PUT is atomic by nature,
//! so a reader never sees half a file and an acknowledged file survives a crash.
//!
//! Files roll by the route's batch size and max latency, or, when the sink sets `roll_bytes` /
//! `roll_seconds`, by size and age: the job then gathers a whole file's events before delivering
//! it, and commits its position only after the file is written (the log is the buffer, as a
//! Flink file sink commits on checkpoint), so a crash redelivers at most one file's events.
//!
//! Redelivery is idempotent for a repeated batch: the file name is derived from the partition and
//! the offsets it holds, so the same batch overwrites the same file.

use super::{ConfigError, Rolling, Sink, SinkError, SinkEvent};
use keystone_control::egress::EgressPolicy;
use keystone_control::{BucketSettings, FileFormat, FileSettings, SinkErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a file sink's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStore {
    /// A folder on this machine.
    Local(PathBuf),
    /// An S3-compatible bucket.
    S3 {
        url: String,
        endpoint: Option<String>,
        region: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        /// Without keys, use the host's own cloud credentials (an admin's choice per sink);
        /// otherwise a bucket without keys is used unsigned.
        ambient_credentials: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    pub store: FileStore,
    /// The key prefix (the declared `path`) under which partition folders go.
    pub prefix: String,
    pub format: FileFormat,
    pub rolling: Option<Rolling>,
}

/// How big a file grows when only `roll_seconds` is set, and how long one waits when only
/// `roll_bytes` is: bounds that keep a job's memory and a file's delay finite.
const DEFAULT_ROLL_BYTES: usize = 64 << 20;
const DEFAULT_ROLL_SECONDS: u64 = 300;

impl FileSinkConfig {
    /// `settings.path` is relative to the team's folder `<data_dir>/sinks/<team>`, or the key
    /// prefix in the bucket of `settings.store_url` (validated at declaration).
    pub fn new(
        settings: &FileSettings,
        secrets: &BTreeMap<String, String>,
        data_dir: &Path,
        team: &str,
    ) -> FileSinkConfig {
        let rolling = match (settings.roll_bytes, settings.roll_seconds) {
            (None, None) => None,
            (bytes, seconds) => Some(Rolling {
                max_bytes: bytes.map_or(DEFAULT_ROLL_BYTES, |b| b as usize),
                max_age: Duration::from_secs(seconds.map_or(DEFAULT_ROLL_SECONDS, u64::from)),
            }),
        };
        let store = FileStore::of(settings.bucket.as_ref(), secrets, &team_folder(&data_dir.join("sinks"), team));
        FileSinkConfig { store, prefix: settings.path.clone(), format: settings.format, rolling }
    }
}

/// The folder on this machine that holds team `team`'s local file sinks: each team's files live
/// apart, so no team can write into, or backfill from, another team's folder by naming its path.
pub fn team_folder(sinks_root: &Path, team: &str) -> PathBuf {
    sinks_root.join(team)
}

impl FileStore {
    /// The store of a file sink: its bucket and the secrets that sign for it, or the local
    /// folder `local_root` (the sink's team's folder, [`team_folder`]).
    pub fn of(bucket: Option<&BucketSettings>, secrets: &BTreeMap<String, String>, local_root: &Path) -> FileStore {
        match bucket {
            None => FileStore::Local(local_root.to_owned()),
            Some(b) => FileStore::S3 {
                url: b.url.clone(),
                endpoint: b.endpoint.clone(),
                region: b.region.clone(),
                access_key_id: secrets.get("access_key_id").cloned(),
                secret_access_key: secrets.get("secret_access_key").cloned(),
                ambient_credentials: b.ambient_credentials,
            },
        }
    }

    /// Opens the object store (no I/O for S3 but resolving and checking its endpoint against
    /// the egress policy: requests are made on use).
    pub fn open(&self, egress: &EgressPolicy) -> Result<Arc<dyn ObjectStore>, ConfigError> {
        Ok(match self {
            FileStore::Local(root) => {
                std::fs::create_dir_all(root)
                    .map_err(|e| ConfigError::new("settings.path", format!("cannot create {}: {e}", root.display())))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| ConfigError::new("settings.path", e.to_string()))?;
                Arc::new(local.with_fsync(true))
            }
            FileStore::S3 { url, endpoint, region, access_key_id, secret_access_key, ambient_credentials } => {
                let mut b = object_store::aws::AmazonS3Builder::new().with_url(url);
                if let Some(ep) = endpoint {
                    let parsed =
                        url::Url::parse(ep).map_err(|e| ConfigError::new("settings.endpoint", e.to_string()))?;
                    let host = parsed.host_str().unwrap_or_default();
                    crate::egress::checked_addrs(egress, host, parsed.port_or_known_default().unwrap_or(443))
                        .map_err(|e| ConfigError::new("settings.endpoint", e.to_string()))?;
                    b = b.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
                }
                let keys = access_key_id.is_some() && secret_access_key.is_some();
                if !keys && !ambient_credentials {
                    b = b.with_skip_signature(true);
                }
                if let Some(r) = region {
                    b = b.with_region(r);
                }
                if let (Some(id), Some(key)) = (access_key_id, secret_access_key) {
                    b = b.with_access_key_id(id).with_secret_access_key(key);
                }
                Arc::new(b.build().map_err(|e| ConfigError::new("settings.store_url", e.to_string()))?)
            }
        })
    }
}

pub struct FileSink {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    format: FileFormat,
    rolling: Option<Rolling>,
}

impl FileSink {
    pub fn new(config: FileSinkConfig, egress: &EgressPolicy) -> Result<FileSink, ConfigError> {
        Ok(FileSink::with_store(config.store.open(egress)?, config.prefix, config.format, config.rolling))
    }

    /// A file sink writing to a given store (tests use an in-memory one).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: String,
        format: FileFormat,
        rolling: Option<Rolling>,
    ) -> FileSink {
        FileSink { store, prefix, format, rolling }
    }
}

/// `dt=YYYY-MM-DD/hr=HH` of a time in ms since the epoch (UTC).
pub fn partition_folder(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("dt={:04}-{:02}-{:02}/hr={:02}", t.year(), u8::from(t.month()), t.day(), t.hour())
}

/// The file of a run of events of one partition: named by partition and offsets, so a
/// redelivered batch replaces its own file, and by its first event's id, so a batch from another
/// source (a backfill) with the same offsets never replaces one.
fn file_name(events: &[(usize, &SinkEvent)], format: FileFormat) -> String {
    let (first, last) = (events.first().map(|e| e.1), events.last().map(|e| e.1));
    let first_id: String = first
        .map_or("", |e| e.id.as_str())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    format!(
        "part-{:04}-{:020}-{:020}-{first_id}.{}",
        first.map_or(0, |e| e.partition),
        first.map_or(0, |e| e.offset),
        last.map_or(0, |e| e.offset),
        format.extension()
    )
}

fn io_error(e: impl std::fmt::Display) -> SinkError {
    SinkError::transient(SinkErrorKind::Io, format!("writing the file failed: {e}"))
}

impl Sink for FileSink {
    async fn deliver(&self, batch: &[SinkEvent]) -> Result<(), SinkError> {
        // One file per (hour, partition) run of the batch, remembering batch indexes; the hour's
        // folder name is made once per file, not per event.
        const HOUR_MS: i64 = 3_600_000;
        let mut files: BTreeMap<(i64, u32), Vec<(usize, &SinkEvent)>> = BTreeMap::new();
        for (i, e) in batch.iter().enumerate() {
            files.entry((e.ingested_at.div_euclid(HOUR_MS), e.partition)).or_default().push((i, e));
        }
        let mut refused = Vec::new();
        for ((hour, _), events) in files {
            let folder = partition_folder(hour * HOUR_MS);
            let (body, kept) = match self.format {
                FileFormat::Ndjson => {
                    let mut body = Vec::with_capacity(events.len() * 256);
                    for (n, (_, e)) in events.iter().enumerate() {
                        if n > 0 && n.is_multiple_of(crate::YIELD_EVERY) {
                            tokio::task::yield_now().await;
                        }
                        serde_json::to_writer(&mut body, e).map_err(io_error)?;
                        body.push(b'\n');
                    }
                    (body, events)
                }
                FileFormat::Parquet => {
                    let rows: Vec<Value> = events.iter().map(|(_, e)| super::parquet::row(e)).collect();
                    // Encoding is CPU work: off the runtime's threads.
                    let encoded =
                        tokio::task::spawn_blocking(move || super::parquet::encode(rows)).await.map_err(io_error)?;
                    refused.extend(encoded.refused.iter().map(|(i, why)| (events[*i].0, why.clone())));
                    let Some(body) = encoded.body else { continue };
                    let kept = events
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !encoded.refused.iter().any(|(r, _)| r == i))
                        .map(|(_, e)| *e)
                        .collect();
                    (body, kept)
                }
            };
            let path = ObjectPath::from(format!("{}/{folder}/{}", self.prefix, file_name(&kept, self.format)));
            self.store.put(&path, PutPayload::from(body)).await.map_err(io_error)?;
        }
        SinkError::refusing(refused)
    }

    fn rolling(&self) -> Option<Rolling> {
        self.rolling
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keystone_control::{SinkKind, SinkSettings};

    #[test]
    fn folders_follow_the_hive_layout_in_utc() {
        // 2026-11-26T05:07:09Z
        assert_eq!(partition_folder(1_795_669_629_000), "dt=2026-11-26/hr=05");
        assert_eq!(partition_folder(0), "dt=1970-01-01/hr=00");
    }

    fn config(settings: &[(&str, &str)]) -> Result<FileSinkConfig, ConfigError> {
        let s = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let SinkSettings::File(typed) = SinkSettings::parse(SinkKind::File, &s)? else { unreachable!() };
        Ok(FileSinkConfig::new(&typed, &BTreeMap::new(), Path::new("/data"), "ads"))
    }

    #[test]
    fn paths_stay_inside_the_teams_sinks_folder() {
        let ok = config(&[("path", "team/plays")]).unwrap();
        assert_eq!((ok.store, ok.prefix.as_str()), (FileStore::Local(PathBuf::from("/data/sinks/ads")), "team/plays"));
        assert!(config(&[("path", "../etc")]).is_err());
        assert!(config(&[("path", "/etc")]).is_err());
        assert_eq!(config(&[]).unwrap_err().field, "settings.path");
    }

    #[test]
    fn rolling_by_size_or_age_fills_in_the_other_bound() {
        assert_eq!(config(&[("path", "p")]).unwrap().rolling, None);
        let by_size = config(&[("path", "p"), ("roll_bytes", "4096")]).unwrap().rolling.unwrap();
        assert_eq!((by_size.max_bytes, by_size.max_age), (4096, Duration::from_secs(DEFAULT_ROLL_SECONDS)));
        let by_age = config(&[("path", "p"), ("roll_seconds", "30")]).unwrap().rolling.unwrap();
        assert_eq!((by_age.max_bytes, by_age.max_age), (DEFAULT_ROLL_BYTES, Duration::from_secs(30)));
        assert_eq!(config(&[("path", "p"), ("roll_bytes", "many")]).unwrap_err().field, "settings.roll_bytes");
        assert_eq!(config(&[("path", "p"), ("format", "csv")]).unwrap_err().field, "settings.format");
    }

    #[test]
    fn an_s3_store_is_configured_without_contacting_it() {
        let c = config(&[("path", "lake/plays"), ("store_url", "s3://bucket"), ("endpoint", "http://127.0.0.1:9")])
            .unwrap();
        assert!(matches!(&c.store, FileStore::S3 { url, .. } if url == "s3://bucket"));
        let local = EgressPolicy::new(&["127.0.0.1".into()], &[], false).unwrap();
        assert!(c.store.open(&local).is_ok());
        assert_eq!(c.store.open(&EgressPolicy::default()).unwrap_err().field, "settings.endpoint", "loopback refused");
        let bad = config(&[("path", "p"), ("store_url", "ftp://x")]).unwrap_err();
        assert_eq!(bad.field, "settings.store_url");
    }
}
