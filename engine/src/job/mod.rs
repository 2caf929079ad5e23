//! Route jobs. Every route runs as its own job: one reader task per partition, each with its own
//! position, a bounded batch, and its own retries; a job shares nothing with other jobs but the
//! log, so a slow or dead sink stalls only its own route.
//!
//! At-least-once: a partition's position moves only after the sink acknowledged the batch (or the
//! events it refused are durably in the dead-letter queue), and the checkpointer commits the
//! acknowledged positions every `checkpoint_interval`. After a crash the job resumes from the last
//! commit, so duplicates are bounded by one checkpoint interval.

pub mod backfill;
mod checkpoint;
pub mod dead_letters;
pub mod latency;
pub mod preview;
pub mod processor;
mod reader;
pub mod registry;
pub mod rewind;
pub mod runtime;
mod spec;
mod stats;
pub mod supervisor;

pub use crate::log::group::{AssignmentChange, Assignments};
use checkpoint::{checkpoint_loop, commit_moved};
pub use checkpoint::{CheckpointError, CheckpointStore};
pub(crate) use reader::transform_record;
use reader::PartitionReader;
pub use spec::{JobSpec, Transformed, Transforms, DEAD_LETTER_RETENTION, UNORDERED_IN_FLIGHT};
pub use stats::{waiting, JobStats};

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

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("checkpoint store: {0}")]
    Checkpoints(#[from] CheckpointError),
    /// The checkpoint task ended without reporting (it panicked or was aborted).
    #[error("checkpoint task: {0}")]
    CheckpointTask(#[from] tokio::task::JoinError),
    #[error("the sink refused events and the dead-letter queue could not take them: {0}")]
    DeadLetter(LogError),
    /// A processor's query could not be compiled or run.
    #[error("processor: {0}")]
    Processor(String),
}

/// Exponential backoff with full jitter: 100 ms doubling to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let cap = 100u64.saturating_mul(1 << attempt.min(9)).min(30_000);
    Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
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
    let committed = checkpointer.await.unwrap_or_else(|e| Err(JobError::CheckpointTask(e)));
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
