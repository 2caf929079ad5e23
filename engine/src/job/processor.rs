//! Processor jobs: a processor's query (`keystone_sql::run::Pipeline`) over its input stream's
//! partitions, its results delivered to its sink. Supervised like route jobs (the same
//! supervisor, phases, restarts and stall detection, through [`JobBody`]).
//!
//! Exactly-once state: a checkpoint is one record holding the input positions and the operator
//! state taken at them, saved only after every result emitted up to those positions was accepted
//! by the sink. A restart restores both and reads on from the positions, so its state equals an
//! uninterrupted run's; results emitted again after the checkpoint carry the same ids, which
//! idempotent sinks keep once.

use super::supervisor::JobBody;
use super::{backoff, Assignments, CheckpointError, JobError, JobStats, DEAD_LETTER_RETENTION};
use crate::log::{Log, NewRecord, StartAt, StoredRecord};
use crate::sinks::{Sink, SinkError, SinkEvent};
use keystone_sql::run::{InputEvent, Pipeline, ResultRow, Settings};
use keystone_sql::Query;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Everything a processor job needs, compiled from the processor, its input stream and its sink.
pub struct ProcessorJob {
    pub processor_id: String,
    /// `team/name`, for logs and dead letters.
    pub name: String,
    pub version: i64,
    pub topic: String,
    pub partitions: u32,
    pub dead_letter_topic: String,
    pub query: Query,
    /// The team's streams and their schemas, as the query was planned against.
    pub streams: BTreeMap<String, Option<Value>>,
    pub lateness_ms: i64,
    pub idle_timeout_ms: i64,
    /// The input's event-time column (the watermark follows it).
    pub event_time: String,
    /// How long a group of a GROUP BY without a window outlives its last event (event time).
    pub state_ttl_ms: Option<i64>,
    /// Most events read from one partition at a time.
    pub batch_size: usize,
    pub checkpoint_interval: Duration,
}

/// Where a processor's checkpoints live (the database, in production).
pub trait ProcessorCheckpoints: Send + Sync + 'static {
    /// The last checkpoint: input positions and operator state.
    fn load(
        &self,
        processor_id: &str,
    ) -> impl Future<Output = Result<Option<(Vec<(u32, u64)>, Vec<u8>)>, CheckpointError>> + Send;
    fn save(
        &self,
        processor_id: &str,
        positions: &[(u32, u64)],
        state: &[u8],
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;
}

/// A processor job for the supervisor.
pub struct ProcessorBody<L, S, C> {
    pub job: Arc<ProcessorJob>,
    pub log: Arc<L>,
    pub checkpoints: Arc<C>,
    pub sink: PhantomData<fn() -> S>,
}

impl<L: Log, S: Sink, C: ProcessorCheckpoints> JobBody for ProcessorBody<L, S, C> {
    type Sink = S;

    fn run(
        &self,
        sink: Arc<S>,
        stats: Arc<JobStats>,
        cancel: CancellationToken,
        _assignments: Option<Assignments>,
    ) -> impl Future<Output = Result<(), JobError>> + Send + 'static {
        run(self.job.clone(), self.log.clone(), sink, self.checkpoints.clone(), stats, cancel)
    }

    fn lag(&self, stats: &JobStats) -> u64 {
        let ends = self.log.end_offsets(&self.job.topic);
        let acked = stats.acked.lock().expect("stats lock");
        (0..self.job.partitions as usize)
            .map(|p| ends.get(p).copied().unwrap_or(0).saturating_sub(acked.get(p).copied().unwrap_or(0)))
            .sum()
    }
}

/// What a processor reads of an envelope.
#[derive(Deserialize)]
struct Read<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    ingested_at: i64,
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// The events of one partition's records as the pipeline takes them, the record each came from,
/// and the records that are not Keystone envelopes (with why).
fn inputs_of<'a>(
    partition: u32,
    records: &'a [StoredRecord],
    reads: &'a [Result<Read<'a>, serde_json::Error>],
) -> (Vec<InputEvent<'a>>, Vec<&'a StoredRecord>, Vec<(&'a StoredRecord, String)>) {
    let mut inputs = Vec::with_capacity(records.len());
    let mut owners = Vec::with_capacity(records.len());
    let mut dead = Vec::new();
    for (r, read) in records.iter().zip(reads) {
        match read {
            Ok(e) => {
                inputs.push(InputEvent {
                    id: &e.id,
                    key: e.key.as_deref(),
                    ingested_at: e.ingested_at,
                    partition,
                    offset: r.offset,
                    payload: e.payload.get().as_bytes(),
                });
                owners.push(r);
            }
            Err(e) => dead.push((r, format!("the record is not a Keystone envelope: {e}"))),
        }
    }
    (inputs, owners, dead)
}

/// What a preview made of a stream's newest events (see [`preview`]).
#[derive(Debug, Default)]
pub struct PreviewRun {
    pub events: usize,
    /// One per result id (an updated key's latest row), in the order first emitted.
    pub results: Vec<ResultRow>,
    pub late: usize,
    /// Partition, offset and reason of each event the query could not use.
    pub errors: Vec<(u32, u64, String)>,
}

/// Runs `query` over the newest `limit` events of `topic` (across its partitions, each read
/// oldest first, the partitions in turns as a job reads them), then closes every window: what
/// a sink would hold, without delivering anything.
pub async fn preview<L: Log>(
    log: &L,
    topic: &str,
    partitions: u32,
    query: &Query,
    streams: &BTreeMap<String, Option<Value>>,
    settings: Settings,
    limit: usize,
) -> Result<Result<PreviewRun, keystone_sql::SqlError>, crate::log::LogError> {
    let mut records = super::preview::newest(log, topic, partitions, limit).await?;
    // The newest `limit` over all partitions, then in log order within each.
    records.sort_by_key(|(_, r)| std::cmp::Reverse(r.timestamp_ms));
    records.truncate(limit);
    records.sort_by_key(|(p, r)| (*p, r.offset));
    let mut pipeline = match Pipeline::new(query, streams, settings) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let mut by_partition: Vec<Vec<StoredRecord>> = vec![Vec::new(); partitions as usize];
    for (p, r) in records {
        by_partition[p as usize].push(r);
    }
    let run = move || -> Result<PreviewRun, keystone_sql::SqlError> {
        let mut out = PreviewRun::default();
        let mut emitted: Vec<ResultRow> = Vec::new();
        let now = crate::now_ms();
        // Turns of at most 100 events per partition, as a job's reads interleave.
        let turns = by_partition.iter().map(|rs| rs.len().div_ceil(100)).max().unwrap_or(0);
        for turn in 0..turns {
            for (p, records) in by_partition.iter().enumerate() {
                let chunk = records.iter().skip(turn * 100).take(100).cloned().collect::<Vec<_>>();
                if chunk.is_empty() {
                    continue;
                }
                let reads: Vec<Result<Read<'_>, serde_json::Error>> =
                    chunk.iter().map(|r| serde_json::from_slice::<Read<'_>>(&r.value)).collect();
                let (inputs, owners, dead) = inputs_of(p as u32, &chunk, &reads);
                out.events += chunk.len();
                out.errors.extend(dead.into_iter().map(|(r, why)| (p as u32, r.offset, why)));
                let processed = pipeline.process(p as u32, &inputs, now)?;
                out.late += processed.late.len();
                out.errors.extend(processed.invalid.into_iter().map(|(i, why)| (p as u32, owners[i].offset, why)));
                emitted.extend(processed.results);
            }
        }
        emitted.extend(pipeline.drain()?);
        // An updated key's rows share an id: its latest row stands where it first appeared.
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for row in emitted {
            match at.get(&row.id) {
                Some(&i) => out.results[i] = row,
                None => {
                    at.insert(row.id.clone(), out.results.len());
                    out.results.push(row);
                }
            }
        }
        Ok(out)
    };
    // The caller's query runs on a blocking thread, never on the runtime serving ingest.
    tokio::task::spawn_blocking(run).await.map_err(|e| crate::log::LogError::Io(std::io::Error::other(e)))
}

fn processor_error(e: impl std::fmt::Display) -> JobError {
    JobError::Processor(e.to_string())
}

/// Runs the processor until `cancel` fires (then delivers what it emitted, checkpoints and
/// returns `Ok`) or until something it cannot retry fails.
pub async fn run<L: Log, S: Sink, C: ProcessorCheckpoints>(
    job: Arc<ProcessorJob>,
    log: Arc<L>,
    sink: Arc<S>,
    checkpoints: Arc<C>,
    stats: Arc<JobStats>,
    cancel: CancellationToken,
) -> Result<(), JobError> {
    let settings = Settings {
        partitions: job.partitions,
        lateness_ms: job.lateness_ms,
        idle_timeout_ms: job.idle_timeout_ms,
        event_time: job.event_time.clone(),
        state_ttl_ms: job.state_ttl_ms,
        result_prefix: format!("{}@{}", job.processor_id, job.version),
    };
    let mut pipeline = Pipeline::new(&job.query, &job.streams, settings).map_err(processor_error)?;
    log.ensure_topic(&job.dead_letter_topic, 1, DEAD_LETTER_RETENTION).await?;
    let mut next: Vec<u64> = Vec::with_capacity(job.partitions as usize);
    let saved = checkpoints.load(&job.processor_id).await?;
    let (positions, state) = saved.unwrap_or_default();
    for p in 0..job.partitions {
        let at = match positions.iter().find(|(q, _)| *q == p) {
            Some(&(_, at)) => at,
            None => log.resolve(&job.topic, p, StartAt::Earliest).await?,
        };
        next.push(at);
        stats.set_acked(p, at);
        stats.set_committed(p, at);
    }
    if let Err(e) = pipeline.restore(&state, crate::now_ms()) {
        // A new version whose state does not fit the old one's starts its windows empty from
        // the old positions; said where the job's errors are shown.
        stats.record_error(format!("the previous version's state does not fit this query and was dropped: {e}"));
    }
    let mut job_run = Run { job: &job, log: &log, sink: &sink, stats: &stats, cancel: &cancel };
    let mut last_checkpoint = Instant::now();
    loop {
        if cancel.is_cancelled() {
            return job_run.checkpoint(&mut pipeline, &next, checkpoints.as_ref()).await;
        }
        stats.wait_while_paused(&cancel).await;
        let mut read_any = false;
        for p in 0..job.partitions {
            let records = log.read(&job.topic, p, next[p as usize], job.batch_size).await?;
            let Some(last) = records.last().map(|r| r.offset) else { continue };
            read_any = true;
            stats.read.fetch_add(records.len() as u64, Ordering::Relaxed);
            job_run.process(&mut pipeline, p, &records).await?;
            next[p as usize] = last + 1;
            stats.set_acked(p, last + 1);
        }
        let results = pipeline.tick(crate::now_ms()).map_err(processor_error)?;
        job_run.deliver(results).await?;
        if last_checkpoint.elapsed() >= job.checkpoint_interval {
            job_run.checkpoint(&mut pipeline, &next, checkpoints.as_ref()).await?;
            last_checkpoint = Instant::now();
        }
        if !read_any {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }
}

struct Run<'a, L, S> {
    job: &'a ProcessorJob,
    log: &'a Arc<L>,
    sink: &'a Arc<S>,
    stats: &'a JobStats,
    cancel: &'a CancellationToken,
}

impl<L: Log, S: Sink> Run<'_, L, S> {
    /// Runs one partition's records through the pipeline and delivers what it emits.
    async fn process(
        &mut self,
        pipeline: &mut Pipeline,
        partition: u32,
        records: &[StoredRecord],
    ) -> Result<(), JobError> {
        let reads: Vec<Result<Read<'_>, serde_json::Error>> =
            records.iter().map(|r| serde_json::from_slice::<Read<'_>>(&r.value)).collect();
        let (inputs, owners, mut dead) = inputs_of(partition, records, &reads);
        let out = pipeline.process(partition, &inputs, crate::now_ms()).map_err(processor_error)?;
        dead.extend(out.late.iter().map(|&i| (owners[i], "late".to_owned())));
        dead.extend(out.invalid.iter().map(|(i, why)| (owners[*i], why.clone())));
        if !dead.is_empty() {
            self.dead_letter(partition, dead).await?;
        }
        self.deliver(out.results).await
    }

    /// Delivers results, retrying transient failures with backoff until accepted (or the job
    /// is cancelled: then nothing after the last checkpoint counts as delivered).
    async fn deliver(&mut self, results: Vec<ResultRow>) -> Result<(), JobError> {
        for chunk in results.chunks(self.job.batch_size.max(1)) {
            let mut batch: Vec<SinkEvent> = Vec::with_capacity(chunk.len());
            let mut unwritable = Vec::new();
            for r in chunk {
                // A value JSON cannot hold (a float NaN) makes a result no sink can take.
                match RawValue::from_string(r.json.clone()) {
                    Ok(event) => batch.push(SinkEvent {
                        id: r.id.clone(),
                        ingested_at: r.time_ms,
                        key: r.key.clone(),
                        partition: 0,
                        offset: 0,
                        event,
                    }),
                    Err(e) => unwritable.push((r, e.to_string())),
                }
            }
            if !unwritable.is_empty() {
                self.dead_letter_unwritable(unwritable).await?;
            }
            if batch.is_empty() {
                continue;
            }
            let mut attempt = 0u32;
            let refused = loop {
                match self.sink.deliver(&batch).await {
                    Ok(()) => break 0,
                    Err(SinkError::Rejected(refused)) => {
                        let n = refused.len();
                        self.dead_letter_results(&batch, refused).await?;
                        break n;
                    }
                    Err(e) => {
                        self.stats.sink_errors[e.kind() as usize].fetch_add(1, Ordering::Relaxed);
                        self.stats.failing.store(true, Ordering::Relaxed);
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        self.stats.record_error(e.to_string());
                        tokio::select! {
                            _ = tokio::time::sleep(backoff(attempt)) => {}
                            _ = self.cancel.cancelled() => return Err(JobError::Processor("cancelled while the sink failed".into())),
                        }
                        attempt += 1;
                    }
                }
            };
            self.stats.failing.store(false, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.delivered.fetch_add((batch.len() - refused) as u64, Ordering::Relaxed);
            let bytes: u64 = batch.iter().map(|e| e.event.get().len() as u64).sum();
            self.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Saves positions and state together; every result emitted before was delivered.
    async fn checkpoint<C: ProcessorCheckpoints>(
        &mut self,
        pipeline: &mut Pipeline,
        next: &[u64],
        store: &C,
    ) -> Result<(), JobError> {
        let state = pipeline.snapshot().map_err(processor_error)?;
        let positions: Vec<(u32, u64)> = next.iter().enumerate().map(|(p, n)| (p as u32, *n)).collect();
        store.save(&self.job.processor_id, &positions, &state).await?;
        for &(p, n) in &positions {
            self.stats.set_committed(p, n);
        }
        self.stats.committed_at.store(crate::now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// Late events and events that do not fit the table, with the envelope as read.
    async fn dead_letter(&self, partition: u32, dead: Vec<(&StoredRecord, String)>) -> Result<(), JobError> {
        let letters = dead
            .into_iter()
            .map(|(r, reason)| {
                let original: Value = serde_json::from_slice(&r.value)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.value).into_owned()));
                let letter =
                    json!({"reason": reason, "partition": partition, "offset": r.offset, "envelope": original});
                (r.key.clone(), letter)
            })
            .collect();
        self.append_letters(letters).await
    }

    /// Results no sink can take (not JSON: a float NaN), as text.
    async fn dead_letter_unwritable(&self, results: Vec<(&ResultRow, String)>) -> Result<(), JobError> {
        let letters = results
            .into_iter()
            .map(|(r, why)| {
                let result = json!({"id": r.id, "key": r.key, "text": r.json});
                (None, json!({"reason": format!("the result is not JSON: {why}"), "result": result}))
            })
            .collect();
        self.append_letters(letters).await
    }

    /// Results the sink refused for good, with its reason.
    async fn dead_letter_results(&self, batch: &[SinkEvent], refused: Vec<(usize, String)>) -> Result<(), JobError> {
        let letters = refused
            .into_iter()
            .filter_map(|(i, reason)| {
                let e = batch.get(i)?;
                Some((None, json!({"reason": reason, "result": {"id": e.id, "key": e.key, "event": e.event}})))
            })
            .collect();
        self.append_letters(letters).await
    }

    /// Appends letters (each named after the processor and stamped) to its dead-letter queue,
    /// durably, before the positions behind them can be checkpointed.
    async fn append_letters(&self, letters: Vec<(Option<Vec<u8>>, Value)>) -> Result<(), JobError> {
        let now = crate::now_ms();
        let count = letters.len() as u64;
        let records = letters
            .into_iter()
            .map(|(key, mut letter)| {
                letter["processor"] = json!(self.job.name);
                letter["failed_at"] = json!(now);
                NewRecord { partition: 0, timestamp_ms: now, key, value: letter.to_string().into_bytes() }
            })
            .collect();
        self.log.append(&self.job.dead_letter_topic, records).await.map_err(JobError::DeadLetter)?;
        self.stats.dead_lettered.fetch_add(count, Ordering::Relaxed);
        Ok(())
    }
}
