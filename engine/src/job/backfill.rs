//! The log's part of a backfill: where a source ends when the backfill starts, and the import of
//! a file sink's NDJSON and Parquet files into a scratch topic the job then reads like a stream. (What may
//! be backfilled, and the record of it, are the control plane's: `Goal::plan_backfill`.)

use crate::envelope::Envelope;
use crate::log::{Log, LogError, NewRecord, Retention, StartAt};
use crate::sinks::SinkEvent;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where each partition of `topic` ends now: (partition, next offset).
pub async fn end_offsets<L: Log>(log: &L, topic: &str, partitions: u32) -> Result<Vec<(u32, u64)>, LogError> {
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        out.push((p, log.resolve(topic, p, StartAt::Latest).await?));
    }
    Ok(out)
}

/// How long files imported for a backfill are kept (the scratch topic is not a stream).
const IMPORTED_KEPT_MS: i64 = 7 * 24 * 3_600_000;

/// Where a planned backfill's source ends: a stream's end now, or, for `files`, the end of the
/// scratch `topic` they are imported into first.
pub async fn source_end<L: Log>(
    log: &L,
    topic: &str,
    partitions: u32,
    files: Option<&SinkFiles>,
    label: &str,
) -> Result<Vec<(u32, u64)>, ImportError> {
    match files {
        None => Ok(end_offsets(log, topic, partitions).await?),
        Some(files) => {
            let keep = Retention { max_age_ms: IMPORTED_KEPT_MS, max_bytes_per_partition: None };
            import_files(log, files, topic, label, keep).await
        }
    }
}

/// The files of a file sink under a folder (`prefix`) of its store.
pub struct SinkFiles {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: String,
}

impl SinkFiles {
    /// The files under `path` in the store of team `team`'s file sink with `bucket` and
    /// `secrets` (`sinks_root`: the local sinks folder, which holds a folder per team).
    pub fn of_sink(
        path: &str,
        team: &str,
        bucket: Option<&keystone_control::BucketSettings>,
        secrets: &BTreeMap<String, String>,
        sinks_root: &std::path::Path,
        egress: &keystone_control::egress::EgressPolicy,
    ) -> Result<SinkFiles, crate::sinks::ConfigError> {
        let local = crate::sinks::file::team_folder(sinks_root, team);
        let store = crate::sinks::file::FileStore::of(bucket, secrets, &local).open(egress)?;
        Ok(SinkFiles { store, prefix: path.to_owned() })
    }
}

/// Why files could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("no NDJSON or Parquet files under {0}")]
    Empty(String),
    #[error("{file}, line {line}: {reason}")]
    BadLine { file: String, line: usize, reason: String },
    #[error("{file}: {reason}")]
    BadFile { file: String, reason: String },
    /// The store could not be read (a bucket unreachable, credentials refused).
    #[error("reading the files failed: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl ImportError {
    /// The files themselves are at fault (none, or not a file sink's), not the machine.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ImportError::Empty(_) | ImportError::BadLine { .. } | ImportError::BadFile { .. })
    }
}

/// Every `.ndjson` and `.parquet` object below `prefix`, in path order: a file sink names its
/// files by partition and offsets inside time folders, so path order is delivery order. (A
/// local store's staging files end in `#<n>` and are skipped.)
async fn listed_files(files: &SinkFiles) -> Result<Vec<ObjectPath>, ImportError> {
    let prefix = ObjectPath::from(files.prefix.as_str());
    let listed: Vec<_> = files.store.list(Some(&prefix)).try_collect().await?;
    let mut out: Vec<ObjectPath> = listed
        .into_iter()
        .map(|meta| meta.location)
        .filter(|p| matches!(p.extension(), Some("ndjson" | "parquet")))
        .collect();
    out.sort();
    Ok(out)
}

/// Imports the events of a file sink's files into `topic` (one partition), each with its
/// original id, key and ingest time, so idempotent sinks recognise repeats. Every line is
/// checked before anything is appended: a bad file imports nothing. Returns the topic's end.
pub async fn import_files<L: Log>(
    log: &L,
    files: &SinkFiles,
    topic: &str,
    source: &str,
    retention: Retention,
) -> Result<Vec<(u32, u64)>, ImportError> {
    let mut records = Vec::new();
    for file in listed_files(files).await? {
        let body = files.store.get(&file).await?.bytes().await?;
        let events: Vec<SinkEvent> = if file.extension() == Some("parquet") {
            crate::sinks::parquet::decode(body)
                .map_err(|reason| ImportError::BadFile { file: file.to_string(), reason })?
        } else {
            let text = std::str::from_utf8(&body)
                .map_err(|e| ImportError::BadFile { file: file.to_string(), reason: format!("not UTF-8 text: {e}") })?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, line)| {
                    serde_json::from_str(line).map_err(|err| ImportError::BadLine {
                        file: file.to_string(),
                        line: i + 1,
                        reason: format!("not an event a file sink wrote: {err}"),
                    })
                })
                .collect::<Result<_, _>>()?
        };
        for e in events {
            let payload = e.event_value().map_err(|err| ImportError::BadFile {
                file: file.to_string(),
                reason: format!("event {} cannot be read back: {err}", e.id),
            })?;
            let envelope = Envelope {
                id: e.id,
                stream: source.to_owned(),
                ingested_at: e.ingested_at,
                key: e.key.clone(),
                headers: Default::default(),
                payload,
            };
            records.push(NewRecord {
                partition: 0,
                timestamp_ms: e.ingested_at,
                key: e.key.map(String::into_bytes),
                value: envelope.to_bytes(),
            });
        }
    }
    if records.is_empty() {
        return Err(ImportError::Empty(files.prefix.clone()));
    }
    log.ensure_topic(topic, 1, retention).await?;
    let mut chunk = Vec::with_capacity(1000);
    for r in records {
        chunk.push(r);
        if chunk.len() == 1000 {
            log.append(topic, std::mem::take(&mut chunk)).await?;
        }
    }
    if !chunk.is_empty() {
        log.append(topic, chunk).await?;
    }
    Ok(end_offsets(log, topic, 1).await?)
}
