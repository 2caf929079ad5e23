//! The log's part of a backfill: where a source ends when the backfill starts, and the import of
//! a file sink's NDJSON and Parquet files into a scratch topic the job then reads like a stream. (What may
//! be backfilled, and the record of it, are the control plane's: `Goal::plan_backfill`.)

use crate::ingest::Envelope;
use crate::log::{Log, LogError, NewRecord, Retention, StartAt};
use crate::sinks::SinkEvent;
use std::path::{Path, PathBuf};

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

/// Where a planned backfill's source ends: a stream's end now, or, for files (`files`: their
/// folder), the end of the scratch `topic` they are imported into first.
pub async fn source_end<L: Log>(
    log: &L,
    topic: &str,
    partitions: u32,
    files: Option<&Path>,
    label: &str,
) -> Result<Vec<(u32, u64)>, ImportError> {
    match files {
        None => Ok(end_offsets(log, topic, partitions).await?),
        Some(dir) => {
            let keep = Retention { max_age_ms: IMPORTED_KEPT_MS, max_bytes_per_partition: None };
            import_files(log, dir, topic, label, keep).await
        }
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
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl ImportError {
    /// The files themselves are at fault (none, or not a file sink's), not the machine.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ImportError::Empty(_) | ImportError::BadLine { .. } | ImportError::BadFile { .. })
    }
}

/// Every `.ndjson` and `.parquet` file below `dir`, in path order: a file sink names its files by
/// partition and offsets inside time folders, so path order is delivery order. (Staging files
/// end in `#<n>` and are skipped.)
fn sink_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "ndjson" || x == "parquet") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, &mut out)?;
    }
    out.sort();
    Ok(out)
}

/// Imports the events of a file sink's files under `dir` into `topic` (one partition), each
/// with its original id, key and ingest time, so idempotent sinks recognise repeats. Every line
/// is checked before anything is appended: a bad file imports nothing. Returns the topic's end.
pub async fn import_files<L: Log>(
    log: &L,
    dir: &Path,
    topic: &str,
    source: &str,
    retention: Retention,
) -> Result<Vec<(u32, u64)>, ImportError> {
    let files = sink_files(dir)?;
    let mut records = Vec::new();
    for file in &files {
        let events: Vec<SinkEvent> = if file.extension().is_some_and(|x| x == "parquet") {
            let body = std::fs::read(file)?;
            crate::sinks::parquet::decode(body.into())
                .map_err(|reason| ImportError::BadFile { file: file.display().to_string(), reason })?
        } else {
            let text = std::fs::read_to_string(file)?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, line)| {
                    serde_json::from_str(line).map_err(|err| ImportError::BadLine {
                        file: file.display().to_string(),
                        line: i + 1,
                        reason: format!("not an event a file sink wrote: {err}"),
                    })
                })
                .collect::<Result<_, _>>()?
        };
        for e in events {
            let envelope = Envelope {
                id: e.id,
                stream: source.to_owned(),
                ingested_at: e.ingested_at,
                key: e.key.clone(),
                headers: Default::default(),
                payload: e.event,
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
        return Err(ImportError::Empty(dir.display().to_string()));
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
