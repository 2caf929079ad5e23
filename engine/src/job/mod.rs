//! Route jobs. Every route runs as its own job: one reader task per partition, each with its own
//! position, a bounded batch, and its own retries; a job shares nothing with other jobs but the
//! log, so a slow or dead sink stalls only its own route.
//!
//! At-least-once: a partition's position moves only after the sink acknowledged the batch (or the
//! events it refused are durably in the dead-letter queue), and the checkpointer commits the
//! acknowledged positions every `checkpoint_interval`. After a crash the job resumes from the last
//! commit, so duplicates are bounded by one checkpoint interval.

pub mod backfill;
pub mod dead_letters;
pub mod latency;
pub mod preview;
pub mod registry;
pub mod rewind;
pub mod runtime;
pub mod supervisor;

use crate::log::{Log, LogError, NewRecord, Retention, StartAt, StoredRecord};
use crate::sinks::{Sink, SinkError, SinkEvent};
use crate::transforms::raw::{RawFields, RawFieldsSeed};
use crate::transforms::{FieldCopy, Filter, Hygiene, Projection};
use keystone_control::{dead_letter_topic, JobCounters, PartitionLag, RecentError, RouteSpec, SinkErrors, StreamSpec};
use rand::Rng;
use serde::de::DeserializeSeed;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Everything a job needs, compiled from the route, its stream and its sink.
pub struct JobSpec {
    pub route_id: String,
    /// `team/route`, for logs and dead letters.
    pub route: String,
    pub topic: String,
    pub partitions: u32,
    pub dead_letter_topic: String,
    pub transforms: Transforms,
    pub batch_size: usize,
    pub max_latency: Duration,
    pub checkpoint_interval: Duration,
    /// Where a partition without a checkpoint starts.
    pub start_at: StartAt,
    /// Per partition, the offset the job reads up to and not beyond (a backfill's end); a
    /// partition not named has no limit.
    pub until: HashMap<u32, u64>,
    /// Batches of one partition delivered at once: 1 keeps the partition's order at the sink;
    /// more (an unordered route) trade order for throughput against a slow sink.
    pub in_flight: usize,
}

/// How long a route's dead letters are kept (its dead-letter topic has one partition).
pub const DEAD_LETTER_RETENTION: Retention =
    Retention { max_age_ms: 7 * 24 * 3_600_000, max_bytes_per_partition: None };

/// Batches in flight per partition of an unordered route.
pub const UNORDERED_IN_FLIGHT: usize = 4;

impl JobSpec {
    /// Compiles a declared route (and the stream it reads, with its current topic) into a job.
    pub fn for_route(
        route_id: &str,
        team: &str,
        route_name: &str,
        route: &RouteSpec,
        (topic, stream): (String, &StreamSpec),
    ) -> Result<JobSpec, String> {
        let settings = route.job_settings().map_err(|e| e.to_string())?;
        let transforms = Transforms::compile(route.filter.as_deref(), &route.projection, team)?;
        Ok(JobSpec {
            route_id: route_id.to_owned(),
            route: format!("{team}/{route_name}"),
            topic,
            partitions: stream.partitions,
            dead_letter_topic: dead_letter_topic(team, route_name),
            transforms,
            batch_size: route.batch_size as usize,
            max_latency: Duration::from_millis(u64::from(route.max_latency_ms)),
            checkpoint_interval: Duration::from_millis(u64::from(settings.checkpoint_interval_ms)),
            start_at: if settings.start_at_latest { StartAt::Latest } else { StartAt::Earliest },
            until: HashMap::new(),
            in_flight: match route.ordering {
                keystone_control::Ordering::Partition => 1,
                keystone_control::Ordering::Unordered => UNORDERED_IN_FLIGHT,
            },
        })
    }
}

/// What a route makes of one payload.
#[derive(Debug, Clone)]
pub enum Transformed {
    /// Passed the filter; this is what the sink receives, as JSON text.
    Deliver(Box<RawValue>),
    FilteredOut,
    /// The filter could not be evaluated (e.g. a field it reads is missing): why.
    FilterError(String),
}

/// A route's compiled transforms, in order: filter, masking and hashing, projection, dropping
/// nulls. Jobs and the preview share them.
pub struct Transforms {
    pub filter: Option<Filter>,
    pub hygiene: Hygiene,
    pub projection: Projection,
    /// The payload's top-level fields the route reads (filter and kept fields), when it keeps
    /// only some: the others need not be parsed. `None`: it reads them all.
    reads: Option<Vec<String>>,
    /// Set when the route only tests and picks top-level fields, with no masking, hashing or
    /// dropping of nulls: then a job copies the fields' text from the record instead of building
    /// a tree of the payload ([`Transforms::transform_fields`]).
    copy: Option<FieldCopy>,
}

impl Transforms {
    /// Compiles a declared filter and projection (once per job, not per event). `team` scopes the
    /// pseudonyms of hashed fields.
    pub fn compile(
        filter: Option<&str>,
        projection: &keystone_control::Projection,
        team: &str,
    ) -> Result<Transforms, String> {
        let filter = match filter {
            Some(f) => Some(Filter::compile(f).map_err(|e| format!("filter: {e}"))?),
            None => None,
        };
        let hygiene = Hygiene::new(
            projection.mask.iter().map(String::as_str),
            projection.hash.iter().map(String::as_str),
            projection.drop_nulls,
            team,
        );
        // Masking, hashing, dropping and renaming act on kept fields only: with a keep list, the
        // filter's fields and the kept ones are all the route reads.
        let reads = match filter.as_ref().map(Filter::fields) {
            _ if projection.keep.is_empty() => None,
            Some(None) => None,
            filtered => {
                let mut reads: Vec<String> = Vec::new();
                for field in filtered.flatten().unwrap_or_default().iter().chain(&projection.keep) {
                    let top = field.split('.').next().unwrap_or_default();
                    if !reads.iter().any(|f| f == top) {
                        reads.push(top.to_owned());
                    }
                }
                Some(reads)
            }
        };
        let projection = Projection::new(
            projection.keep.iter().map(String::as_str),
            projection.drop.iter().map(String::as_str),
            projection.rename.iter().map(|(from, to)| (from.as_str(), to.as_str())),
        );
        let copy = (hygiene.is_noop() && filter.as_ref().is_none_or(|f| f.fields().is_some()))
            .then(|| projection.top_level())
            .flatten();
        Ok(Transforms { filter, hygiene, projection, reads, copy })
    }

    /// The payload's top-level fields the route reads, when not all (see `reads`).
    pub fn reads(&self) -> Option<&[String]> {
        self.reads.as_deref()
    }

    /// True when the route's transforms can work on fields as sent (see `copy`).
    pub fn copies_fields(&self) -> bool {
        self.copy.is_some()
    }

    pub fn transform(&self, mut payload: Value) -> Transformed {
        if let Some(filter) = &self.filter {
            match filter.matches(&payload) {
                Ok(true) => {}
                Ok(false) => return Transformed::FilteredOut,
                Err(e) => return Transformed::FilterError(e.to_string()),
            }
        }
        self.hygiene.before(&mut payload);
        let mut out = self.projection.apply(payload);
        self.hygiene.after(&mut out);
        Transformed::Deliver(serde_json::value::to_raw_value(&out).expect("a JSON value serialises"))
    }

    /// The same as [`Transforms::transform`] on a payload's top-level fields as sent (all of
    /// them, or those of [`Transforms::reads`]), for a route whose transforms allow it. `None`
    /// when they do not, or this event needs the tree path: a field the filter reads has no tree
    /// here (a number beyond f64), or a kept value spans lines.
    pub fn transform_fields<'a>(&'a self, fields: RawFields<'a>) -> Option<Transformed> {
        let copy = self.copy.as_ref()?;
        if let Some(filter) = &self.filter {
            // The filter reads only the fields it names: those become a tree, the rest stay text.
            let mut tested = serde_json::Map::new();
            for name in filter.fields().unwrap_or_default() {
                if let Some((_, raw)) = fields.iter().rev().find(|(k, _)| k == name) {
                    tested.insert(name.clone(), serde_json::from_str(raw.get()).ok()?);
                }
            }
            match filter.matches(&Value::Object(tested)) {
                Ok(true) => {}
                Ok(false) => return Some(Transformed::FilteredOut),
                Err(e) => return Some(Transformed::FilterError(e.to_string())),
            }
        }
        copy.apply(fields).map(Transformed::Deliver)
    }
}

/// Where checkpoints live (the source-of-truth database in production).
pub trait CheckpointStore: Send + Sync + 'static {
    fn load(&self, route_id: &str) -> impl Future<Output = Result<HashMap<u32, u64>, String>> + Send;
    fn commit(&self, route_id: &str, positions: &[(u32, u64)]) -> impl Future<Output = Result<(), String>> + Send;
}

/// Events in the log not acknowledged yet, over the given partition positions.
pub fn waiting(positions: &[PartitionLag]) -> u64 {
    positions.iter().map(|p| p.end.saturating_sub(p.acked)).sum()
}

/// A job's counters, shared with the supervisor, the API and the console. Positions are the
/// acknowledged next offset per partition.
#[derive(Debug, Default)]
pub struct JobStats {
    pub read: AtomicU64,
    pub delivered: AtomicU64,
    pub filtered_out: AtomicU64,
    /// Events the filter could not evaluate (e.g. a missing field): not delivered, counted apart.
    pub filter_errors: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Failed sink requests, by `SinkErrorKind` (its order).
    pub sink_errors: [AtomicU64; keystone_control::SinkErrorKind::COUNT],
    /// Set while the sink keeps failing a batch; cleared when a batch goes through.
    pub failing: AtomicBool,
    /// Set while the job is paused (see `set_paused`).
    paused: AtomicBool,
    resumed: tokio::sync::Notify,
    pub acked: Mutex<Vec<u64>>,
    pub committed: Mutex<Vec<u64>>,
    /// The partitions this instance runs when it shares the job with others (a consumer group
    /// assigns them); `None`: all of them.
    pub owned: Mutex<Option<std::collections::BTreeSet<u32>>>,
    /// When positions were last committed (ms since the epoch; the job's start before that).
    pub committed_at: AtomicI64,
    pub recent_errors: Mutex<Vec<RecentError>>,
    /// Latencies and batch sizes since the last telemetry sample.
    pub latency: Mutex<latency::Latency>,
}

const RECENT_ERRORS: usize = 20;

impl JobStats {
    pub fn record_error(&self, message: String) {
        self.push_error(RecentError { at: crate::now_ms(), message, sample: None });
    }

    /// An error caused by one event, kept with (the start of) the event.
    pub fn record_error_with_sample(&self, message: String, event: &Value) {
        let mut sample = event.to_string();
        if sample.len() > RecentError::SAMPLE_BYTES {
            let mut cut = RecentError::SAMPLE_BYTES;
            while !sample.is_char_boundary(cut) {
                cut -= 1;
            }
            sample.truncate(cut);
            sample.push('…');
        }
        self.push_error(RecentError { at: crate::now_ms(), message, sample: Some(sample) });
    }

    fn push_error(&self, e: RecentError) {
        let mut errors = self.recent_errors.lock().expect("stats lock");
        if errors.len() == RECENT_ERRORS {
            errors.remove(0);
        }
        errors.push(e);
    }

    /// Pauses or resumes the job in place: a paused job finishes the batch in hand (delivered
    /// and acknowledged), then its readers read nothing until it is resumed.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Returns once the job is not paused (at once if it is not), or when `cancel` fires.
    async fn wait_while_paused(&self, cancel: &CancellationToken) {
        loop {
            // Registered before the flag is read, so a resume in between is not missed.
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            tokio::select! {
                _ = resumed => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.recent_errors.lock().expect("stats lock").last().map(|e| e.message.clone())
    }

    fn set_acked(&self, partition: u32, next: u64) {
        set_at(&self.acked, partition, next);
    }

    fn set_committed(&self, partition: u32, next: u64) {
        set_at(&self.committed, partition, next);
    }

    /// Each partition's acknowledged position beside the log's end offset.
    /// Only the partitions this instance runs, when it shares the job (the others' lag is
    /// theirs).
    pub fn positions<L: Log>(&self, spec: &JobSpec, log: &L) -> Vec<PartitionLag> {
        let ends = log.end_offsets(&spec.topic);
        let held = self.held(spec);
        let acked = self.acked.lock().expect("stats lock");
        held.into_iter()
            .map(|p| PartitionLag {
                partition: p,
                acked: acked.get(p as usize).copied().unwrap_or(0),
                end: ends.get(p as usize).copied().unwrap_or(0),
            })
            .collect()
    }

    /// The partitions this instance runs: every partition of the stream, unless it shares the
    /// job through a consumer group.
    pub fn held(&self, spec: &JobSpec) -> Vec<u32> {
        match self.owned.lock().expect("stats lock").as_ref() {
            None => (0..spec.partitions).collect(),
            Some(owned) => owned.iter().copied().collect(),
        }
    }

    /// Events in the log not acknowledged yet.
    pub fn lag<L: Log>(&self, spec: &JobSpec, log: &L) -> u64 {
        waiting(&self.positions(spec, log))
    }

    /// The counters as they are now (cumulative since this job instance started).
    pub fn counters(&self) -> JobCounters {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        JobCounters {
            read: n(&self.read),
            delivered: n(&self.delivered),
            filtered_out: n(&self.filtered_out),
            filter_errors: n(&self.filter_errors),
            dead_lettered: n(&self.dead_lettered),
            batches: n(&self.batches),
            retries: n(&self.retries),
            bytes_out: n(&self.bytes_out),
            sink_errors: SinkErrors(std::array::from_fn(|i| n(&self.sink_errors[i]))),
        }
    }

    /// Age of the oldest event the sink has not acknowledged yet (0 when caught up): reads the
    /// first unacknowledged record of each lagging partition for its ingest time.
    /// `positions` as `positions` returned them.
    pub async fn lag_seconds<L: Log>(&self, spec: &JobSpec, log: &L, positions: &[PartitionLag], now_ms: i64) -> f64 {
        let mut oldest: Option<i64> = None;
        for p in positions.iter().filter(|p| p.end > p.acked) {
            // A record already expired (or unreadable) is not waiting any more.
            if let Ok(records) = log.read(&spec.topic, p.partition, p.acked, 1).await {
                if let Some(r) = records.first() {
                    oldest = Some(oldest.map_or(r.timestamp_ms, |o| o.min(r.timestamp_ms)));
                }
            }
        }
        oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0)
    }

    /// How long acknowledged positions have waited for a commit: 0 when everything acknowledged
    /// is committed, else the time since the last commit. This bounds what a crash would repeat.
    pub fn checkpoint_age_s(&self, now_ms: i64) -> f64 {
        let pending = *self.acked.lock().expect("stats lock") != *self.committed.lock().expect("stats lock");
        if pending {
            (now_ms - self.committed_at.load(Ordering::Relaxed)).max(0) as f64 / 1000.0
        } else {
            0.0
        }
    }

    /// Sum of acknowledged positions: grows whenever the job delivers.
    pub fn progress(&self) -> u64 {
        self.acked.lock().expect("stats lock").iter().sum()
    }

    /// Acknowledged positions and events read: a job gathering a large rolled file acknowledges
    /// nothing for minutes, and is not stalled while it reads.
    pub fn activity(&self) -> (u64, u64) {
        (self.progress(), self.read.load(Ordering::Relaxed))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("checkpoint store: {0}")]
    Checkpoints(String),
    #[error("the sink refused events and the dead-letter queue could not take them: {0}")]
    DeadLetter(LogError),
}

/// Sets one partition's entry of a position vector, growing it as needed.
fn set_at(positions: &Mutex<Vec<u64>>, partition: u32, next: u64) {
    let mut positions = positions.lock().expect("stats lock");
    if positions.len() <= partition as usize {
        positions.resize(partition as usize + 1, 0);
    }
    positions[partition as usize] = next;
}

/// Exponential backoff with full jitter: 100 ms doubling to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let cap = 100u64.saturating_mul(1 << attempt.min(9)).min(30_000);
    Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
}

/// A change of the partitions one instance of a job runs, when several share a route's job
/// through a consumer group (see `log::kafka::GroupMember`).
pub enum AssignmentChange {
    Assigned(Vec<u32>),
    /// Stop these partitions and commit their acknowledged positions, then say `done`: only then
    /// may another member take them, and it resumes exactly where this one stopped.
    Revoked {
        partitions: Vec<u32>,
        done: std::sync::mpsc::SyncSender<()>,
    },
}

/// What one instance of a job shared through a consumer group gets from the group.
pub struct Assignments {
    pub changes: tokio::sync::mpsc::Receiver<AssignmentChange>,
    /// Positions the job committed (in the source of truth), to commit as the group's offsets
    /// too: Kafka's own tools then see how far the route got. Keystone resumes from its own.
    pub committed: std::sync::mpsc::Sender<Vec<(u32, u64)>>,
}

/// Runs a job on every partition of its stream until `cancel` fires (then finishes the batch in
/// hand, commits, and returns `Ok`) or until something it cannot retry fails.
pub async fn run<L: Log, S: Sink, C: CheckpointStore>(
    spec: Arc<JobSpec>,
    log: Arc<L>,
    sink: Arc<S>,
    checkpoints: Arc<C>,
    stats: Arc<JobStats>,
    cancel: CancellationToken,
) -> Result<(), JobError> {
    run_assigned(spec, log, sink, checkpoints, stats, cancel, None).await
}

/// Runs a job on the partitions its `assignments` give it, as one member of a group sharing the
/// route's job: a revoked partition is drained and committed before it is handed over. With no
/// `assignments`, it runs every partition.
pub async fn run_assigned<L: Log, S: Sink, C: CheckpointStore>(
    spec: Arc<JobSpec>,
    log: Arc<L>,
    sink: Arc<S>,
    checkpoints: Arc<C>,
    stats: Arc<JobStats>,
    cancel: CancellationToken,
    assignments: Option<Assignments>,
) -> Result<(), JobError> {
    let (mut changes, mirror) = assignments.map(|a| (a.changes, a.committed)).unzip();
    log.ensure_topic(&spec.dead_letter_topic, 1, DEAD_LETTER_RETENTION).await?;
    stats.committed_at.store(crate::now_ms(), Ordering::Relaxed);
    *stats.owned.lock().expect("stats lock") = changes.as_ref().map(|_| Default::default());
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let mut members = Partitions {
        spec: spec.clone(),
        log,
        sink,
        checkpoints: checkpoints.clone(),
        stats: stats.clone(),
        cancel: cancel.clone(),
        commit: Arc::new(tokio::sync::Mutex::new(())),
        mirror: mirror.clone(),
        running: HashMap::new(),
        ended: ended_tx,
    };
    let stop_checkpointer = CancellationToken::new();
    let checkpointer = tokio::spawn(checkpoint_loop(
        spec.clone(),
        checkpoints,
        stats,
        members.commit.clone(),
        mirror,
        stop_checkpointer.clone(),
    ));
    let mut result = match changes {
        None => members.open(&(0..spec.partitions).collect::<Vec<_>>()).await,
        Some(_) => Ok(()),
    };
    while result.is_ok() {
        let change = async {
            match changes.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some((p, outcome)) = ended.recv() => {
                // A reader ends on its own only when it fails: one partition failing fails the
                // job (the supervisor restarts it whole).
                if members.running.remove(&p).is_some() {
                    result = outcome;
                }
            }
            change = change => match change {
                Some(AssignmentChange::Assigned(partitions)) => result = members.open(&partitions).await,
                Some(AssignmentChange::Revoked { partitions, done }) => {
                    result = members.close(&partitions).await;
                    let _ = done.send(());
                }
                // The group membership ended (the process is leaving).
                None => break,
            },
        }
    }
    // Whatever ended the job, what is still running is drained and committed.
    cancel.cancel();
    let running: Vec<u32> = members.running.keys().copied().collect();
    let closed = members.close(&running).await;
    stop_checkpointer.cancel();
    let committed = checkpointer.await.unwrap_or_else(|e| Err(JobError::Checkpoints(e.to_string())));
    result.and(closed).and(committed)
}

/// The partitions one job instance runs: a reader task each, stopped one by one.
struct Partitions<L, S, C> {
    spec: Arc<JobSpec>,
    log: Arc<L>,
    sink: Arc<S>,
    checkpoints: Arc<C>,
    stats: Arc<JobStats>,
    cancel: CancellationToken,
    /// Held while positions are committed, so a periodic commit never lands after (and below)
    /// the commit that hands a partition over.
    commit: Arc<tokio::sync::Mutex<()>>,
    /// See [`Assignments::committed`].
    mirror: Option<std::sync::mpsc::Sender<Vec<(u32, u64)>>>,
    running: HashMap<u32, RunningPartition>,
    ended: tokio::sync::mpsc::UnboundedSender<(u32, Result<(), JobError>)>,
}

struct RunningPartition {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningPartition {
    /// A job aborted (a crash, a stop past its grace) takes its readers with it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<L: Log, S: Sink, C: CheckpointStore> Partitions<L, S, C> {
    /// Starts readers of `partitions` at their committed positions (read now: a previous
    /// owner committed on handing them over).
    async fn open(&mut self, partitions: &[u32]) -> Result<(), JobError> {
        let saved = self.checkpoints.load(&self.spec.route_id).await.map_err(JobError::Checkpoints)?;
        let mut opened = Vec::new();
        for &p in partitions.iter().filter(|p| **p < self.spec.partitions) {
            if self.running.contains_key(&p) {
                continue;
            }
            let end = *self.log.watch_end(&self.spec.topic, p)?.borrow();
            let start = match saved.get(&p) {
                // A checkpoint past the end means the log was rebuilt from nothing: start over.
                Some(&next) if next <= end => next,
                _ => self.log.resolve(&self.spec.topic, p, self.spec.start_at).await?,
            };
            self.stats.set_acked(p, start);
            self.stats.set_committed(p, start);
            opened.push((p, start));
            if let Some(owned) = self.stats.owned.lock().expect("stats lock").as_mut() {
                owned.insert(p);
            }
            let cancel = self.cancel.child_token();
            let reader = PartitionReader {
                spec: self.spec.clone(),
                log: self.log.clone(),
                sink: self.sink.clone(),
                stats: self.stats.clone(),
                cancel: cancel.clone(),
                partition: p,
            };
            let ended = self.ended.clone();
            let task = tokio::spawn(async move {
                let outcome = reader.run(start).await;
                let _ = ended.send((p, outcome));
            });
            self.running.insert(p, RunningPartition { cancel, task });
        }
        // Where the route resumes is the group's offset too, even before anything moves (an
        // idle partition taken over would otherwise keep a stale one).
        if let (Some(mirror), false) = (&self.mirror, opened.is_empty()) {
            let _ = mirror.send(opened);
        }
        Ok(())
    }

    /// Stops the readers of `partitions` (each finishes the batch in hand) and commits how far
    /// they got.
    async fn close(&mut self, partitions: &[u32]) -> Result<(), JobError> {
        let stopping: Vec<(u32, RunningPartition)> =
            partitions.iter().filter_map(|p| self.running.remove(p).map(|r| (*p, r))).collect();
        for (_, r) in &stopping {
            r.cancel.cancel();
        }
        for (_, mut r) in stopping {
            let _ = (&mut r.task).await;
        }
        let _held = self.commit.lock().await;
        if let Some(owned) = self.stats.owned.lock().expect("stats lock").as_mut() {
            for p in partitions {
                owned.remove(p);
            }
        }
        commit_moved(
            self.checkpoints.as_ref(),
            &self.spec.route_id,
            &self.stats,
            Some(partitions),
            self.mirror.as_ref(),
        )
        .await
        .map_err(JobError::Checkpoints)
    }
}

/// Commits the acknowledged positions that moved since their last commit: of `partitions`, or of
/// every partition with `None`; then passes them to `mirror` (the group's offsets). The caller
/// holds the job's commit lock.
async fn commit_moved<C: CheckpointStore>(
    store: &C,
    route_id: &str,
    stats: &JobStats,
    partitions: Option<&[u32]>,
    mirror: Option<&std::sync::mpsc::Sender<Vec<(u32, u64)>>>,
) -> Result<(), String> {
    let moved: Vec<(u32, u64)> = {
        let acked = stats.acked.lock().expect("stats lock");
        let committed = stats.committed.lock().expect("stats lock");
        acked
            .iter()
            .enumerate()
            .map(|(p, a)| (p as u32, *a))
            .filter(|(p, a)| committed.get(*p as usize) != Some(a) && partitions.is_none_or(|ps| ps.contains(p)))
            .collect()
    };
    if moved.is_empty() {
        return Ok(());
    }
    store.commit(route_id, &moved).await?;
    for &(p, a) in &moved {
        stats.set_committed(p, a);
    }
    stats.committed_at.store(crate::now_ms(), Ordering::Relaxed);
    if let Some(mirror) = mirror {
        // The member may have left already (the process is stopping): nothing to mirror to.
        let _ = mirror.send(moved);
    }
    Ok(())
}

/// Commits acknowledged positions that moved, every interval and once more when stopped.
async fn checkpoint_loop<C: CheckpointStore>(
    spec: Arc<JobSpec>,
    store: Arc<C>,
    stats: Arc<JobStats>,
    commit: Arc<tokio::sync::Mutex<()>>,
    mirror: Option<std::sync::mpsc::Sender<Vec<(u32, u64)>>>,
    stop: CancellationToken,
) -> Result<(), JobError> {
    let mut tick = tokio::time::interval(spec.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let _held = commit.lock().await;
        match commit_moved(store.as_ref(), &spec.route_id, &stats, None, mirror.as_ref()).await {
            Ok(()) => {}
            // Not fatal: the positions stay acknowledged and the next tick tries again.
            Err(e) if !stopping => stats.record_error(format!("checkpoint commit failed: {e}")),
            Err(e) => return Err(JobError::Checkpoints(e)),
        }
        if stopping {
            return Ok(());
        }
    }
}

struct PartitionReader<L, S> {
    spec: Arc<JobSpec>,
    log: Arc<L>,
    sink: Arc<S>,
    stats: Arc<JobStats>,
    cancel: CancellationToken,
    partition: u32,
}

/// What became of one record before delivery.
enum Routed {
    Deliver(SinkEvent),
    Skip,
    DeadLetter(String),
}

impl<L: Log, S: Sink> Clone for PartitionReader<L, S> {
    fn clone(&self) -> Self {
        PartitionReader {
            spec: self.spec.clone(),
            log: self.log.clone(),
            sink: self.sink.clone(),
            stats: self.stats.clone(),
            cancel: self.cancel.clone(),
            partition: self.partition,
        }
    }
}

/// A record through a route's transforms: the outcome, and the envelope it came in (its payload
/// as far as it was read). Jobs and the preview both call this, so the preview shows the bytes a
/// sink would receive.
fn transform_record<'r>(
    transforms: &Transforms,
    record: &'r [u8],
) -> serde_json::Result<(Transformed, Routable<'r, ()>)> {
    // Fields as sent when the route allows it; otherwise, or when this event needs it, a tree.
    if transforms.copies_fields() {
        if let Ok(Routable { id, ingested_at, key, payload }) =
            Routable::parse(record, RawFieldsSeed(transforms.reads()))
        {
            if let Some(outcome) = transforms.transform_fields(payload) {
                return Ok((outcome, Routable { id, ingested_at, key, payload: () }));
            }
        }
    }
    let parsed = match Routable::parse(record, Tree(transforms.reads())) {
        // A payload that is not an object is parsed whole: the transforms say what they make of it.
        Err(_) if transforms.reads().is_some() => Routable::parse(record, Tree(None)),
        parsed => parsed,
    };
    let Routable { id, ingested_at, key, payload } = parsed?;
    Ok((transforms.transform(payload), Routable { id, ingested_at, key, payload: () }))
}

/// What a job reads of a record's envelope, in one pass over it: the payload as far as the
/// route reads it (`P`: a tree, or fields as sent), the stream and headers skipped, not copied,
/// and the id and key borrowed from the record until an event is delivered.
struct Routable<'r, P> {
    id: Cow<'r, str>,
    ingested_at: i64,
    key: Option<Cow<'r, str>>,
    payload: P,
}

impl<'r, P> Routable<'r, P> {
    /// Reads the envelope, the payload with `payload`.
    fn parse<S: DeserializeSeed<'r, Value = P>>(record: &'r [u8], payload: S) -> serde_json::Result<Self> {
        let mut de = serde_json::Deserializer::from_slice(record);
        let envelope = EnvelopeSeed(payload).deserialize(&mut de)?;
        de.end()?;
        Ok(envelope)
    }
}

/// The payload as a tree: only the named top-level fields, when given.
struct Tree<'f>(Option<&'f [String]>);

impl<'de> DeserializeSeed<'de> for Tree<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Some(fields) => crate::transforms::Fields(fields).deserialize(d),
            None => serde::Deserialize::deserialize(d),
        }
    }
}

struct EnvelopeSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for EnvelopeSeed<S> {
    type Value = Routable<'de, S::Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> serde::de::Visitor<'de> for EnvelopeSeed<S> {
    type Value = Routable<'de, S::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Keystone envelope")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use crate::transforms::Key;
        use serde::de::Error;
        let (mut id, mut ingested_at, mut key, mut payload) = (None, None, None, None);
        let mut seed = Some(self.0);
        while let Some(Key(field)) = map.next_key()? {
            match field.as_ref() {
                "id" => id = Some(map.next_value::<Key>()?.0),
                "ingested_at" => ingested_at = Some(map.next_value::<i64>()?),
                "key" => key = map.next_value::<Option<Key>>()?.map(|k| k.0),
                "payload" => match seed.take() {
                    Some(seed) => payload = Some(map.next_value_seed(seed)?),
                    None => return Err(A::Error::duplicate_field("payload")),
                },
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Routable {
            id: id.ok_or_else(|| A::Error::missing_field("id"))?,
            ingested_at: ingested_at.ok_or_else(|| A::Error::missing_field("ingested_at"))?,
            key,
            payload: payload.ok_or_else(|| A::Error::missing_field("payload"))?,
        })
    }
}

/// What a delivery came back with: the events the sink refused for good (by index, with why),
/// or `None` if it was cancelled while retrying.
type Refusals = Option<Vec<(usize, String)>>;

/// A gathered batch on its way to the sink: what it came from, and where its partition's
/// position may move once it is settled.
struct InFlight {
    /// The delivery; `None` for a batch of dead letters only. Its result: the events the sink
    /// refused for good, or `None` if cancelled while retrying.
    delivery: Option<tokio::task::JoinHandle<Refusals>>,
    sources: Vec<StoredRecord>,
    dead: Vec<(StoredRecord, String)>,
    /// The offset after the last record the batch covers.
    end: u64,
}

impl<L: Log, S: Sink> PartitionReader<L, S> {
    /// Gathers batches and hands them to the sink. An ordered route has one batch in flight at a
    /// time; an unordered one up to `spec.in_flight`, delivered in parallel. Either way batches
    /// are settled (dead letters written, position acknowledged) in log order, so the position
    /// never passes an event the sink has not acknowledged.
    async fn run(self, start: u64) -> Result<(), JobError> {
        let spec = &self.spec;
        let mut end = self.log.watch_end(&spec.topic, self.partition)?;
        // A sink that rolls files by size and age bounds its batches itself.
        let (max_events, max_bytes, max_latency) = match self.sink.rolling() {
            Some(r) => (usize::MAX, r.max_bytes, r.max_age),
            None => (spec.batch_size, usize::MAX, spec.max_latency),
        };
        let depth = spec.in_flight.max(1);
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let settled = Arc::new(tokio::sync::Notify::new());
        // Where the next batch starts (ahead of the acknowledged position while batches fly).
        let mut next = start;
        loop {
            // Settle what already came back, then wait for room.
            if !self.settle_front(&mut in_flight, depth - 1).await? {
                return Ok(());
            }
            self.stats.wait_while_paused(&self.cancel).await;
            // Gather one batch: up to max_events deliverable events (or max_bytes of them), or
            // whatever arrived by the time the first of them has waited max_latency.
            let mut batch: Vec<SinkEvent> = Vec::new();
            let mut bytes = 0usize;
            let mut sources: Vec<StoredRecord> = Vec::new();
            let mut dead: Vec<(StoredRecord, String)> = Vec::new();
            let mut scanned = next;
            let mut deadline: Option<Instant> = None;
            loop {
                if (self.cancel.is_cancelled() || self.stats.is_paused()) && batch.is_empty() {
                    break;
                }
                // Read in chunks a normal batch could hold, however large a rolled file grows.
                let room = (max_events - batch.len()).min(keystone_control::BATCH_SIZE_MAX as usize);
                let want = match spec.until.get(&self.partition) {
                    Some(until) => room.min(until.saturating_sub(scanned) as usize),
                    None => room,
                };
                let read = if want == 0 {
                    Ok(Vec::new())
                } else {
                    self.log.read(&spec.topic, self.partition, scanned, want).await
                };
                let records = match read {
                    Ok(r) => r,
                    Err(LogError::OffsetOutOfRange { earliest, .. }) => {
                        self.stats.record_error(format!(
                            "partition {}: events {scanned}..{earliest} expired before delivery (retention)",
                            self.partition
                        ));
                        scanned = earliest;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if records.is_empty() {
                    if batch.is_empty() && dead.is_empty() && scanned > next && in_flight.is_empty() {
                        // Only filtered-out events so far: their position is acknowledged too,
                        // now, since no later batch may come to carry it.
                        next = scanned;
                        self.stats.set_acked(self.partition, next);
                    }
                    // Nothing new: wait for an append, the batch deadline, cancellation, or a
                    // batch in flight coming back (settled at once, so positions keep moving).
                    tokio::select! {
                        changed = end.changed() => changed.map_err(|_| LogError::Closed)?,
                        // Stop gathering; a partial batch is still delivered before stopping.
                        _ = self.cancel.cancelled() => if !batch.is_empty() { break },
                        _ = sleep_until(deadline) => break,
                        _ = settled.notified(), if !in_flight.is_empty() => {
                            if !self.settle_front(&mut in_flight, usize::MAX).await? {
                                return Ok(());
                            }
                        }
                    }
                    continue;
                }
                for (n, r) in records.into_iter().enumerate() {
                    if bytes >= max_bytes {
                        // The file is full: the rest is read again for the next one.
                        break;
                    }
                    if n > 0 && n.is_multiple_of(crate::YIELD_EVERY) {
                        // A read brings up to thousands of records: routing them without a break
                        // held a runtime thread for milliseconds while ingest requests waited.
                        tokio::task::yield_now().await;
                    }
                    scanned = r.offset + 1;
                    self.stats.read.fetch_add(1, Ordering::Relaxed);
                    match self.route(&r) {
                        Routed::Deliver(e) => {
                            bytes += r.value.len();
                            batch.push(e);
                            sources.push(r);
                        }
                        Routed::Skip => {}
                        Routed::DeadLetter(why) => dead.push((r, why)),
                    }
                }
                if batch.len() >= max_events || bytes >= max_bytes {
                    break;
                }
                if !batch.is_empty() && deadline.is_none() {
                    deadline = Some(Instant::now() + max_latency);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
            if batch.is_empty() && dead.is_empty() && scanned == next && self.cancel.is_cancelled() {
                // Stopping: what is in flight is settled first, in order.
                self.settle_front(&mut in_flight, 0).await?;
                return Ok(());
            }
            let delivery = (!batch.is_empty()).then(|| {
                let me = self.clone();
                let settled = settled.clone();
                tokio::spawn(async move {
                    let refused = me.deliver(&batch).await;
                    settled.notify_one();
                    refused
                })
            });
            in_flight.push_back(InFlight { delivery, sources, dead, end: scanned });
            next = scanned;
        }
    }

    /// Settles batches from the front, in log order: every one already back, and more (waiting
    /// for them) until at most `keep` remain in flight. `false` when a delivery was cancelled
    /// while retrying: nothing after it may be acknowledged.
    async fn settle_front(&self, in_flight: &mut VecDeque<InFlight>, keep: usize) -> Result<bool, JobError> {
        while let Some(f) = in_flight.front() {
            let back = f.delivery.as_ref().is_none_or(|d| d.is_finished());
            if !back && in_flight.len() <= keep {
                break;
            }
            let f = in_flight.pop_front().expect("a batch in flight");
            if !self.settle(f).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Settles the oldest batch in flight: its refused events and dead letters go to the
    /// dead-letter queue, then the partition's position moves past it. `false` when the delivery
    /// was cancelled while retrying (nothing acknowledged, nothing committed).
    async fn settle(&self, f: InFlight) -> Result<bool, JobError> {
        let mut dead = f.dead;
        if let Some(delivery) = f.delivery {
            let outcome = delivery.await.map_err(|e| {
                JobError::Log(LogError::Io(std::io::Error::other(format!("delivery task panicked: {e}"))))
            })?;
            match outcome {
                Some(refused) => dead.extend(refused.into_iter().map(|(i, why)| (f.sources[i].clone(), why))),
                None => return Ok(false),
            }
        }
        if !dead.is_empty() {
            dead.sort_by_key(|(r, _)| r.offset);
            self.dead_letter(dead).await?;
        }
        self.stats.set_acked(self.partition, f.end);
        Ok(true)
    }

    /// Filter and projection of one record.
    fn route(&self, r: &StoredRecord) -> Routed {
        let (outcome, Routable { id, ingested_at, key, .. }) = match transform_record(&self.spec.transforms, &r.value) {
            Ok(routed) => routed,
            Err(e) => return Routed::DeadLetter(format!("the record is not a Keystone envelope: {e}")),
        };
        match outcome {
            Transformed::Deliver(event) => Routed::Deliver(SinkEvent {
                id: id.into_owned(),
                ingested_at,
                key: key.map(Cow::into_owned),
                partition: self.partition,
                offset: r.offset,
                event,
            }),
            Transformed::FilteredOut => {
                self.stats.filtered_out.fetch_add(1, Ordering::Relaxed);
                Routed::Skip
            }
            Transformed::FilterError(e) => {
                self.stats.filter_errors.fetch_add(1, Ordering::Relaxed);
                let why = format!("filter could not evaluate event {id}: {e}");
                // The sample shows the whole event, not just the fields the route parsed.
                let whole = Routable::parse(&r.value, Tree(None)).map_or(Value::Null, |e| e.payload);
                self.stats.record_error_with_sample(why, &whole);
                Routed::Skip
            }
        }
    }

    /// Delivers a batch, retrying transient failures with backoff until it goes through.
    /// Returns the events the sink refused for good, or `None` if cancelled while retrying.
    async fn deliver(&self, batch: &[SinkEvent]) -> Refusals {
        let mut attempt = 0u32;
        loop {
            let started = std::time::Instant::now();
            let outcome = self.sink.deliver(batch).await;
            let took = started.elapsed();
            if let Err(e) = &outcome {
                self.stats.sink_errors[e.kind() as usize].fetch_add(1, Ordering::Relaxed);
            }
            let refused = match outcome {
                Ok(()) => Vec::new(),
                Err(SinkError::Rejected(refused)) => refused,
                Err(SinkError::Transient { message: why, .. }) => {
                    self.stats.failing.store(true, Ordering::Relaxed);
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    self.stats.record_error(format!("partition {}: {why}", self.partition));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(attempt)) => {}
                        _ = self.cancel.cancelled() => return None,
                    }
                    attempt += 1;
                    continue;
                }
            };
            self.stats.failing.store(false, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.delivered.fetch_add((batch.len() - refused.len()) as u64, Ordering::Relaxed);
            let bytes: u64 = batch.iter().map(|e| e.event.get().len() as u64).sum();
            self.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
            let now = crate::now_ms();
            let mut latency = self.stats.latency.lock().expect("stats lock");
            latency.record_request(took, batch.len());
            // Refused events are not delivered: their latency is the dead-letter queue's business.
            let refused_at: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
            for (_, e) in batch.iter().enumerate().filter(|(i, _)| !refused_at.contains(i)) {
                latency.record_end_to_end(now - e.ingested_at);
            }
            drop(latency);
            return Some(refused);
        }
    }

    /// Appends refused events, with the reason, to the route's dead-letter queue; durably, before
    /// their offsets can be acknowledged.
    async fn dead_letter(&self, dead: Vec<(StoredRecord, String)>) -> Result<(), JobError> {
        let now = crate::now_ms();
        let count = dead.len() as u64;
        let records = dead
            .into_iter()
            .map(|(r, reason)| {
                let original: Value = serde_json::from_slice(&r.value)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.value).into_owned()));
                let letter = json!({
                    "route": self.spec.route,
                    "reason": reason,
                    "partition": self.partition,
                    "offset": r.offset,
                    "failed_at": now,
                    "envelope": original,
                });
                NewRecord { partition: 0, timestamp_ms: now, key: r.key, value: letter.to_string().into_bytes() }
            })
            .collect();
        self.log.append(&self.spec.dead_letter_topic, records).await.map_err(JobError::DeadLetter)?;
        self.stats.dead_lettered.fetch_add(count, Ordering::Relaxed);
        self.stats
            .record_error(format!("partition {}: {count} event(s) sent to the dead-letter queue", self.partition));
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transforms(filter: Option<&str>, keep: &[&str], rename: &[(&str, &str)], mask: &[&str]) -> Transforms {
        let projection = keystone_control::Projection {
            keep: keep.iter().map(|k| k.to_string()).collect(),
            rename: rename.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            mask: mask.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        };
        Transforms::compile(filter, &projection, "alpha").unwrap()
    }

    #[test]
    fn a_route_keeping_some_fields_parses_only_what_it_reads_and_delivers_the_same() {
        let event = r#"{"country":"BR","bitrate":4800,"user":{"id":7,"email":"a@b.c"},"session":"x","skipped":[1,{"deep":null}]}"#;
        // The last column: whether, without masking, the route can work on fields as sent.
        let cases = [
            (
                Some("event.bitrate > 3000"),
                &["country", "user.email"][..],
                &[("country", "where")][..],
                Some(vec!["bitrate", "country", "user"]),
                false,
            ),
            (None, &["user.id"][..], &[][..], Some(vec!["user"]), false),
            (Some("event.bitrate > 3000"), &[][..], &[][..], None, true),
            (Some("size(event) > 2"), &["country"][..], &[][..], None, false),
            (
                Some("event.bitrate > 3000"),
                &["session", "country"][..],
                &[("country", "where")][..],
                Some(vec!["bitrate", "session", "country"]),
                true,
            ),
        ];
        for (filter, keep, rename, reads, copies) in cases {
            let t = transforms(filter, keep, rename, &["user.email"]);
            assert!(!t.copies_fields(), "masking needs the tree");
            assert_eq!(
                t.reads,
                reads.map(|r| r.into_iter().map(String::from).collect::<Vec<_>>()),
                "{filter:?} {keep:?}"
            );
            let record = format!(
                r#"{{"id":"e1","stream":"alpha/plays","ingested_at":5,"key":null,"headers":{{"h":"x"}},"payload":{event}}}"#
            );
            let envelope = Routable::parse(record.as_bytes(), Tree(t.reads())).unwrap();
            assert_eq!((envelope.id.as_ref(), envelope.ingested_at, envelope.key), ("e1", 5, None));
            let delivered = |t: Transformed| match t {
                Transformed::Deliver(v) => v.get().to_owned(),
                _ => panic!("delivered"),
            };
            let partial = delivered(t.transform(envelope.payload));
            let full = delivered(t.transform(serde_json::from_str(event).unwrap()));
            assert_eq!(partial, full, "{filter:?} {keep:?}");
            // Without masking, fields as sent give the same event (nested objects keep the key
            // order they were sent in, so compared as trees).
            let plain = transforms(filter, keep, rename, &[]);
            assert_eq!(plain.copies_fields(), copies, "{filter:?} {keep:?}");
            if plain.copies_fields() {
                let fields = Routable::parse(record.as_bytes(), RawFieldsSeed(plain.reads())).unwrap().payload;
                let copied = delivered(plain.transform_fields(fields).unwrap());
                let tree = delivered(plain.transform(serde_json::from_str(event).unwrap()));
                assert_eq!(
                    serde_json::from_str::<Value>(&copied).unwrap(),
                    serde_json::from_str::<Value>(&tree).unwrap()
                );
            }
        }
    }

    #[test]
    fn checkpoint_age_counts_only_while_acknowledged_positions_wait() {
        let stats = JobStats::default();
        stats.set_acked(0, 10);
        *stats.committed.lock().unwrap() = vec![10];
        stats.committed_at.store(1_000, Ordering::Relaxed);
        assert_eq!(stats.checkpoint_age_s(9_000), 0.0, "everything acknowledged is committed");
        stats.set_acked(0, 25);
        assert_eq!(stats.checkpoint_age_s(9_000), 8.0);
    }
}
